"""Atomic, verified writes: every file and folder a run leaves is written under a temporary name, synced, and
renamed into place, so that a reader (a resume, `ftstudio export`, `transformers`) sees the old content or the
complete new one, never half of it. A folder is complete when, and only when, its final name exists.

    atomic_write_text(path, text)            one file
    with atomic_dir(final) as tmp: ...       a folder: write into ``tmp``; renamed to ``final`` on success,
                                             removed on failure (the previous ``final`` is kept until then)
    discard(path)                            delete a folder so no half-deleted one is ever visible

Temporary names start with a dot (``.tmp-<name>-<pid>``, ``.trash-<name>-<pid>``) so listings skip them;
:func:`clean_leftovers` removes those of dead processes. Pure Python (no torch, no Qt).
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FTStudioError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(FTStudioError):
    """A write failed because the disk (or the user's quota) is full: the user's to fix, never a bug."""

    def __init__(self, message: str, *, path: str = "", needed: int | None = None):
        super().__init__(message)
        self.path, self.needed = path, needed


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, and for the writers that report a full disk only in their message
    (safetensors' SafetensorError, torch.save's zip writer)."""
    if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent); None when unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def disk_full_message(path: str | Path, needed: int | None = None) -> str:
    """``<path>: the disk is full (needs about X, Y free)``: the first half of the one line a user reads."""
    free = free_bytes(path)
    need = f"needs about {gb(needed)}, " if needed else ""
    have = f"{gb(free)} free" if free is not None else "free space unknown"
    return f"{path}: the disk is full ({need}{have})"


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush one file written by someone else's writer (GGUFWriter) before it is renamed into place."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(path: str | Path) -> None:
    """Flush every file under ``path`` to the disk, then the folders themselves."""
    path = Path(path)
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [p for p in path.rglob("*") if p.is_dir()] + [path]:
        fsync_dir(d)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def discard(path: str | Path) -> None:
    """Remove a folder so that no half-deleted one is ever visible under its name: rename, then delete."""
    path = Path(path)
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``final``; on a clean exit sync it and rename it to ``final`` (an
    existing ``final`` is discarded only then, when ``replace``), on any exception remove it and re-raise."""
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            if not replace:
                raise FileExistsError(errno.EEXIST, "already exists", str(final))
            discard(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(folder: str | Path, prefixes: tuple[str, ...] = (".tmp-", ".trash-")) -> None:
    """Remove temporary and trash entries that a killed process left in ``folder`` (those of a live process,
    whose pid ends the name, are kept)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if not p.name.startswith(prefixes):
            continue
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

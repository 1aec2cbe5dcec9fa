"""One process per run folder: ``train``, ``train --resume`` and the GUI's run all take ``RUN/.lock`` before they
write anything there, and a second process is refused in one line naming the first one's pid.

The lock is ``fcntl.flock`` on the file, which the kernel releases when the holder exits however it exits
(SIGKILL included), so a lock is never stale in the kernel's eyes; the pid written inside is what the refusal
names, and a file left by a dead process is simply taken over (and said so). The folder's identity (device and
inode) is recorded too, so the run can tell when its folder was deleted or replaced under it.

Pure Python; where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return ""
    return text[0] if text and text[0].isdigit() else ""


class RunLock:
    """``RunLock(run_dir).acquire()`` or a ConfigError; ``release()`` (also on process exit, by the kernel)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.identity: tuple[int, int] | None = None
        self.previous_pid: str = ""    # the pid a dead process left in the file (taken over)

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError("train.output", f"cannot lock the run folder {self.run_dir}: {e.strerror or e}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid = _holder(self.path)
                who = f"process {pid}" if pid else "another process"
                raise ConfigError("run", f"{self.run_dir} is in use by {who} (another ftstudio train or the app "
                                         "on this run); wait for it to end or stop it, then try again") from None
        self.previous_pid = _holder(self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        os.fsync(fd)
        self._fd = fd
        st = os.stat(self.run_dir)
        self.identity = (st.st_dev, st.st_ino)
        return self

    def folder_intact(self) -> bool:
        """True while the run folder is the one this lock was taken in (not deleted, moved or replaced)."""
        if self.identity is None:
            return True
        try:
            st = os.stat(self.run_dir)
            lock = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity and self._fd is not None and \
            (lock.st_dev, lock.st_ino) == _fd_identity(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)   # an empty file: released cleanly (a pid left inside means its holder died)
        except OSError:
            pass
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _fd_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino

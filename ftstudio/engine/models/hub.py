"""The Hugging Face cache and hub: find cached snapshots, and reach the hub only when it answers quickly.

Environment variables are read at call time (not at import, as huggingface_hub's constants are), so a test or
the GUI can point HF_HUB_CACHE elsewhere or go offline without restarting. The network is touched only for a
hub id that is not in the cache, and then only after a short connectivity probe, so an unplugged machine gives
an error in seconds instead of a hang.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ftstudio.core.errors import ModelError

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_repo_id(source: str) -> bool:
    """True for strings shaped like 'org/name' or 'name' (hub repo ids), by huggingface_hub's own rules."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.count("/") > 1 or source.startswith((".", "~")):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of a cached model repo that holds config.json, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()), revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def cached_repos() -> list[tuple[str, Path]]:
    """(repo_id, snapshot folder) for every model repo in the cache: the 'main' ref, else the newest revision."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        main = [r for r in repo.revisions if "main" in r.refs]
        rev = main[0] if main else max(repo.revisions, key=lambda r: r.last_modified)
        out.append((repo.repo_id, Path(rev.snapshot_path)))
    return out


def _host() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub's host accepts a TCP connection within `timeout`; else why not.

    Runs in a daemon thread because DNS lookups ignore socket timeouts and can block for minutes.
    """
    host, port = _host()
    result: list[str | None] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=connect, daemon=True, name="ftstudio-hub-probe")
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no answer from {host} within {timeout:.0f} s"


def require_hub(repo_id: str) -> None:
    """Raise a ModelError at once when the hub cannot be used for `repo_id` (offline, or unreachable)."""
    where = f"'{repo_id}' is not a local file or folder and is not in the Hugging Face cache ({hub_cache_dir()})"
    if hub_offline():
        raise ModelError(f"{where}, and the hub is switched off (HF_HUB_OFFLINE=1). Download it on a connected "
                         f"machine (`hf download {repo_id}`) and copy the cache, or point at a local folder.")
    problem = probe_hub()
    if problem:
        host, _ = _host()
        raise ModelError(f"{where}, and the hub ({host}) cannot be reached: {problem}. Check the network or "
                         "proxy, or point at a local folder or .gguf file.")


def hub_describe(repo_id: str, revision: str | None) -> tuple[dict, int | None, str | None]:
    """(config dict, exact parameter count or None, dtype or None) of a hub model, without its weights."""
    import json

    from huggingface_hub import HfApi, hf_hub_download

    require_hub(repo_id)
    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=PROBE_TIMEOUT_S * 2)
    except Exception as e:  # RepositoryNotFound, GatedRepo, EntryNotFound, HTTP errors: all the user's to fix
        raise ModelError(f"hub model '{repo_id}': cannot fetch config.json ({type(e).__name__}: {e}). Check "
                         "the id (org/name), your access to it (gated models need `hf auth login`), or the revision.") from None
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelError(f"hub model '{repo_id}': config.json is not valid JSON ({e}).") from None
    params = dtype = None
    try:
        meta = HfApi().get_safetensors_metadata(repo_id, revision=revision)
        if meta.parameter_count:
            params = sum(meta.parameter_count.values())
            dtype = max(meta.parameter_count, key=meta.parameter_count.get)
    except Exception:  # no safetensors on the hub: the count falls back to an estimate
        pass
    return cfg, params, dtype

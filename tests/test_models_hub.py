"""The Hugging Face cache (a fake one, in the real layout) and the hub: offline means a quick, clear error."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from ftstudio.core.config import ModelConfig
from ftstudio.core.errors import ModelError
from ftstudio.engine.models import describe_model, list_cached_models, load_model


def add_to_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> Path:
    """Put `folder` into `cache` as huggingface_hub does: blobs by hash, snapshot symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_llama, tiny_bert):
    cache = tmp_path / "hub"
    add_to_cache(cache, "tiny-org/tiny-llama", tiny_llama)
    add_to_cache(cache, "tiny-org/tiny-bert", tiny_bert, commit="b" * 40)
    only_config = tmp_path / "cfg-only"
    only_config.mkdir()
    shutil.copy(tiny_llama / "config.json", only_config)
    add_to_cache(cache, "tiny-org/config-only", only_config, commit="c" * 40)  # a half download: not offered
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection and DNS lookup fails, as on an unplugged machine."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_list_cached_models(hf_cache):
    found = {m.source: m for m in list_cached_models()}
    assert set(found) == {"tiny-org/tiny-llama", "tiny-org/tiny-bert"}
    llama = found["tiny-org/tiny-llama"]
    assert llama.kind == "cache" and llama.path.endswith("snapshots/" + "a" * 40)
    assert llama.model_type == "llama" and llama.params_exact and not llama.is_encoder
    assert found["tiny-org/tiny-bert"].is_encoder


def test_no_cache_is_an_empty_list(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "does-not-exist"))
    assert list_cached_models() == []


def test_cached_id_loads_offline_with_sockets_blocked(hf_cache, no_network, monkeypatch, tiny_llama):
    import torch
    from safetensors.torch import load_file
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even "online", a cached model needs no network
    info = describe_model("tiny-org/tiny-llama")
    assert info.kind == "cache" and Path(info.path).parent.parent.name == "models--tiny-org--tiny-llama"
    lm = load_model(ModelConfig(source="tiny-org/tiny-llama"), task="causal-lm")
    saved = load_file(tiny_llama / "model.safetensors")
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in saved.items())
    assert all(p.requires_grad for p in lm.model.parameters())


def test_hub_id_offline_is_a_quick_clear_error(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as e:
        describe_model("some-org/not-downloaded")
    assert time.monotonic() - t < 2 and "not in the Hugging Face cache" in str(e.value)
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):  # a half-downloaded repo is not a cached model
        load_model(ModelConfig(source="tiny-org/config-only"), task="causal-lm")


def test_hub_unreachable_is_a_quick_clear_error(hf_cache, no_network, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    t = time.monotonic()
    with pytest.raises(ModelError, match="cannot be reached") as e:
        load_model(ModelConfig(source="some-org/not-downloaded"), task="causal-lm")
    assert time.monotonic() - t < 5 and "network blocked by the test" in str(e.value)


def test_probe_gives_up_on_a_hanging_lookup(monkeypatch):
    """DNS lookups ignore socket timeouts; the probe must still answer within its own timeout."""
    from ftstudio.engine.models import hub as models_hub
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    t = time.monotonic()
    assert "no answer" in models_hub.probe_hub(timeout=0.5)
    assert time.monotonic() - t < 2


@pytest.mark.parametrize("source,is_id", [("org/name", True), ("gpt2", True), ("a/b/c", False),
                                          ("./x", False), ("bad id!", False)])
def test_repo_id_shape(source, is_id):
    from ftstudio.engine.models.hub import is_repo_id
    assert is_repo_id(source) is is_id

"""Model sources → (model, tokenizer, task).

A source is one of: "demo" (the bundled all-MiniLM-L6-v2), a local Hugging Face folder, a model in the Hugging
Face cache (by its "org/name" id, loaded offline from the snapshot), a .gguf file (de-quantized by transformers),
or a hub id (downloaded; offline or unreachable gives a ModelError within seconds).

`describe_model` and `list_cached_models` import no torch (the GUI calls them while the user browses);
`load_model` does, lazily (models/load.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftstudio.core.errors import ModelError
from ftstudio.engine.models import hub, inspect
from ftstudio.engine.models.tensors import shape_from_config
from ftstudio.engine.resources import demo_model_path  # noqa: F401 (re-exported by the models room)

TASKS = ("causal-lm", "classification")
# Data formats whose rows train a next-token model (data.py's FORMATS minus classification and auto).
CAUSAL_FORMATS = ("text", "prompt-completion", "alpaca", "chat", "sharegpt")


@dataclass
class ModelInfo:
    """What a model is, read without loading its weights."""

    source: str
    kind: str  # "demo" | "folder" | "cache" | "gguf" | "hub"
    path: str | None  # the folder (or the .gguf file); None for a hub model not in the cache
    architecture: str
    model_type: str
    params: int | None
    dtype: str
    context_length: int | None
    vocab_size: int | None
    hidden_size: int | None
    num_layers: int | None
    is_encoder: bool
    config: dict = field(default_factory=dict)  # the raw config.json (HF-style for GGUF), for memory.estimate
    params_exact: bool = False  # True when counted from the weights' headers, False when estimated from config
    revision: str | None = None

    @property
    def params_text(self) -> str:
        """The parameter count as people say it ("135.0M", "7.6B"), "?" when unknown."""
        n = self.params
        if not n:
            return "?"
        for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= div:
                return f"{n / div:.1f}{unit}"
        return str(n)

    @property
    def load_path(self) -> str:
        """What from_pretrained gets: the folder (the .gguf's folder for GGUF) or the hub id."""
        if self.kind == "gguf":
            return str(Path(self.path).parent)
        return self.path if self.path else self.source


def estimate_params(cfg: dict) -> int | None:
    """A config-only parameter count (when no weights are at hand), from the same tensor list the memory plan
    uses, so the model panel and the plan never disagree."""
    try:
        return shape_from_config(cfg).params
    except (ModelError, KeyError, TypeError, ValueError):
        return None


def _info(source: str, kind: str, path: Path | None, cfg: dict, params: int | None, dtype: str | None,
          exact: bool, revision: str | None = None) -> ModelInfo:
    facts = inspect.config_facts(cfg)
    if params is None:
        params, exact = estimate_params(cfg), False
    return ModelInfo(source=source, kind=kind, path=str(path) if path else None,
                     architecture=facts["architecture"], model_type=facts["model_type"], params=params,
                     dtype=str(dtype or facts["config_dtype"] or "float32"),
                     context_length=facts["context_length"], vocab_size=facts["vocab_size"],
                     hidden_size=facts["hidden_size"], num_layers=facts["num_layers"],
                     is_encoder=facts["is_encoder"], config=cfg, params_exact=exact, revision=revision)


def _describe_folder(source: str, kind: str, folder: Path) -> ModelInfo:
    cfg = inspect.read_config(folder)
    stats = inspect.safetensors_stats(folder)
    params, dtype = stats if stats else (None, None)
    return _info(source, kind, folder, cfg, params, dtype, exact=stats is not None)


def _describe_gguf(source: str, file: Path) -> ModelInfo:
    from ftstudio.engine.models import gguf

    meta = gguf.gguf_metadata(file)
    cfg = meta["config"]
    gguf.check_supported(file, meta["gguf_architecture"], cfg["model_type"])
    info = _info(source, "gguf", file, cfg, meta["params"], meta["dtype"], exact=True)
    info.architecture = f"{cfg['model_type']} (GGUF, {meta['dtype']}; loads de-quantized)"
    return info


def _describe_path(source: str, p: Path) -> ModelInfo:
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelError(f"{p}: a model file must be a .gguf file; for Hugging Face weights point at the "
                             "folder that holds config.json.")
        return _describe_gguf(source, p)
    if not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _describe_gguf(source, ggufs[0])
        if len(ggufs) > 1:
            raise ModelError(f"{p}: holds several .gguf files ({', '.join(g.name for g in ggufs)}); "
                             "point at the one to fine-tune.")
    return _describe_folder(source, "folder", p)


def describe_model(source: str, *, trust_remote_code: bool = False, revision: str | None = None) -> ModelInfo:
    """What `source` is, read from config.json / safetensors headers / GGUF metadata; no weights, no torch.

    `trust_remote_code` is accepted for symmetry with load_model: describing never runs a model's code.
    """
    source = str(source).strip()
    if not source:
        raise ModelError("no model given: use 'demo', a folder, a .gguf file or a hub id (org/name)")
    if source == "demo":
        return _describe_folder(source, "demo", demo_model_path())
    p = Path(source).expanduser()
    if p.exists():
        return _describe_path(source, p)
    if source.lower().endswith(".gguf") or not hub.is_repo_id(source):
        raise ModelError(f"{source}: no such file or folder (and it is not a hub id of the form org/name).")
    snapshot = hub.cached_snapshot(source, revision)
    if snapshot is not None and inspect.has_weights(snapshot):
        return _describe_folder(source, "cache", snapshot)
    cfg, params, dtype = hub.hub_describe(source, revision)
    dtype = inspect._SAFETENSORS_DTYPES.get(dtype, dtype) if dtype else None
    return _info(source, "hub", None, cfg, params, dtype, exact=params is not None, revision=revision)


def list_cached_models() -> list[ModelInfo]:
    """Every model in the Hugging Face cache that can be fine-tuned here (config.json + weights, or a GGUF)."""
    out = []
    for repo_id, snapshot in hub.cached_repos():
        try:
            if (snapshot / "config.json").exists():
                if inspect.has_weights(snapshot):
                    out.append(_describe_folder(repo_id, "cache", snapshot))
            else:
                for g in sorted(snapshot.glob("*.gguf")):
                    out.append(_describe_gguf(str(g), g))
        except ModelError:
            continue  # a broken or unsupported cache entry is not offered; describing it directly says why
    return out


def check_task(task: str, info: ModelInfo, data_format: str | None = None) -> None:
    """Raise a ModelError when `task` cannot be trained on this model with data of `data_format`."""
    if task not in TASKS:
        raise ModelError(f"task '{task}' is not known: use one of {', '.join(TASKS)} or 'auto'")
    if task == "causal-lm" and info.is_encoder:
        raise ModelError(f"{info.source} is an encoder-only model ({info.architecture}, model_type "
                         f"'{info.model_type}'): it has no next-token head, so it cannot be trained as causal-lm. "
                         "Use task 'classification' with a labelled dataset, or pick a decoder model (GPT-, "
                         "Llama-, Qwen-like).")
    if task == "classification" and data_format in CAUSAL_FORMATS:
        raise ModelError(f"task 'classification' needs a dataset with a text and a label column, but the data "
                         f"is in the '{data_format}' format. Use task 'causal-lm' or a labelled dataset.")
    if task == "causal-lm" and data_format == "classification":
        raise ModelError("task 'causal-lm' was asked for, but the data is in the classification format "
                         "(text + label). Use task 'classification' (or 'auto').")


def resolve_task(requested: str | None, info: ModelInfo, data_format: str | None) -> str:
    """"causal-lm" or "classification": an explicit request wins; else the data decides, else the model."""
    if requested in (None, "", "auto"):
        if info.is_encoder and data_format in CAUSAL_FORMATS:
            raise ModelError(f"{info.source} is an encoder-only model ({info.architecture}): it can only be "
                             f"trained as a classifier, but the data is in the '{data_format}' format, which "
                             "trains next-token prediction. Pick a decoder model (GPT-, Llama-, Qwen-like) or a "
                             "labelled (text + label) dataset.")
        if data_format == "classification" or info.is_encoder:
            task = "classification"
        else:
            task = "causal-lm"
    else:
        task = requested
    check_task(task, info, data_format)
    return task


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel, on the CPU or the device load_model was given
    tokenizer: object
    task: str
    info: ModelInfo
    new_params: list[str] = field(default_factory=list)  # names freshly initialised (e.g. a classifier head)
    load_note: str = ""  # which loader placed the weights, and why (the run's log shows it)
    notes: list[str] = field(default_factory=list)  # what changes the model beyond the checkpoint (said as warnings)

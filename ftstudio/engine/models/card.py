"""The model card written into every exported model folder (``final/README.md``), with huggingface_hub's
``ModelCard``/``ModelCardData``: what the Hub shows (base model, license, datasets, tags, pipeline) and what a
reader needs to trust and use the model (the training configuration, final and best metrics, forgetting figures,
planned and measured memory, and how to run it in transformers, llama.cpp and Ollama).

Everything comes from the run folder itself (``config.yaml`` and ``metrics.jsonl``), so every path that writes a
``final/`` (one GPU, FSDP, ``ftstudio export``) writes the same card.
"""
from __future__ import annotations

import re
from pathlib import Path

DEMO_BASE = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_LICENSE = "apache-2.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE = re.compile(r"models--([^/]+?)--([^/]+)")


def base_model_id(source: str) -> str | None:
    """The Hub id of the base model, where one is known: the demo's, a hub id, or an HF cache folder's."""
    if source == "demo":
        return DEMO_BASE
    m = _CACHE.search(str(source).replace("\\", "/"))
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if _HUB_ID.match(source) and not Path(source).exists():
        return source
    return None


def base_license(source: str, folder: str | Path | None) -> str | None:
    """The base model's license, from its own card (README.md metadata in its folder), else None."""
    if source == "demo":
        return DEMO_LICENSE
    if folder is None:
        return None
    readme = Path(folder) / "README.md" if Path(folder).is_dir() else None
    if readme is None or not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(readme).data.to_dict()
    except Exception:  # noqa: BLE001 - a base card we cannot parse only means "license unknown"
        return None
    lic = data.get("license")
    return str(lic) if isinstance(lic, str) else None


def _last(events: list[dict], kind: str) -> dict | None:
    found = [e for e in events if e.get("event") == kind]
    return found[-1] if found else None


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _gb(n) -> str:
    return "–" if n is None else f"{n / 1e9:.2f} GB"


def _metrics_section(events: list[dict]) -> list[str]:
    evals = [e for e in events if e.get("event") == "eval"]
    steps = [e for e in events if e.get("event") == "step"]
    out = ["## Results", ""]
    if not evals and not steps:
        return out + ["No metrics were recorded.", ""]
    out += ["| | step | eval loss | perplexity | accuracy | macro F1 |", "|---|---|---|---|---|---|"]
    if evals:
        final = evals[-1]
        best = [e for e in evals if e.get("best")]
        rows = [("final", final)] + ([("best", best[-1])] if best else [])
        if len(evals) > 1 and evals[0].get("step") == 0:    # dpo / simpo evaluate the held-out pairs at step 0
            rows.insert(0, ("before training", evals[0]))
        for name, e in rows:
            out.append(f"| {name} | {e.get('step')} | {_fmt(e.get('loss'))} | {_fmt(e.get('perplexity'))} | "
                       f"{_fmt(e.get('accuracy'))} | {_fmt(e.get('macro_f1'))} |")
    if steps:
        tail = steps[-10:]
        mean = sum(s["loss"] for s in tail) / len(tail)
        out += ["", f"Train loss: {_fmt(mean)} (mean of the last {len(tail)} logged steps, ending at step "
                    f"{steps[-1].get('step')})."]
    out.append("")
    return out


def _forgetting_section(events: list[dict]) -> list[str]:
    ret = [e for e in events if e.get("event") == "retention"]
    drift = _last(events, "drift")
    if not ret and not drift:
        return ["## Forgetting", "", "Not measured in this run (`regularize.retention_eval`, "
                "`regularize.drift_every`).", ""]
    out = ["## Forgetting", ""]
    if ret:
        out.append(f"Loss on general text (retention): {_fmt(ret[0]['loss'])} at step {ret[0]['step']} → "
                   f"{_fmt(ret[-1]['loss'])} at step {ret[-1]['step']} (lower is better; a rise is forgetting).")
    if drift:
        out.append(f"Relative weight change ‖θ−θ0‖/‖θ0‖ at step {drift['step']}: {_fmt(drift.get('total'))}.")
    return out + [""]


def _memory_section(events: list[dict]) -> list[str]:
    snaps = [e for e in events if e.get("event") == "memory"]
    plans = [e for e in events if e.get("event") == "log" and "plan" in str(e.get("message", "")).lower()
             and "GB" in str(e.get("message", ""))]
    out = ["## Memory", ""]
    if plans:
        out.append(f"Planned: {plans[0]['message']}")
    if snaps:
        peak = max((s.get("allocated_peak") or 0) for s in snaps) or None
        s = snaps[-1]
        out.append(f"Measured on {s.get('device')}: weights {_gb(s.get('weights'))}, gradients "
                   f"{_gb(s.get('gradients'))}, optimizer {_gb(s.get('optimizer'))}, allocator peak {_gb(peak)}.")
    if len(out) == 2:
        out.append("Not recorded.")
    return out + [""]


def _usage_section(repo_hint: str, task: str) -> list[str]:
    if task == "classification":
        return ["## How to use", "", "```python", "from transformers import pipeline",
                f'clf = pipeline("text-classification", model="{repo_hint}")', 'print(clf("Your text here"))',
                "```", ""]
    return ["## How to use", "", "transformers:", "", "```python", "from transformers import pipeline",
            f'chat = pipeline("text-generation", model="{repo_hint}")',
            'print(chat([{"role": "user", "content": "Hello"}], max_new_tokens=128))', "```", "",
            "llama.cpp: `ftstudio export RUN --gguf model.gguf` writes `model.gguf` and an Ollama `model.Modelfile` "
            "beside it; run `llama-cli -m model.gguf --jinja` (`--jinja` uses this model's own chat template; "
            "without it llama.cpp applies a built-in template that may differ). Ollama: "
            "`ollama create NAME -f model.Modelfile`.", ""]


def write_model_card(final: str | Path, run_dir: str | Path | None = None, check: str | None = None,
                     location: str | Path | None = None) -> Path | None:
    """Write ``final/README.md`` from the run's ``config.yaml`` and ``metrics.jsonl`` (``run_dir``: default
    ``final``'s parent; ``check``: the export gate's summary; ``location``: where the folder will be once
    renamed into place, for the usage lines). Returns the path, or None when no run folder is found (a bare
    export)."""
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    from ftstudio.core.runs import read_metrics

    final = Path(final)
    run_dir = Path(run_dir) if run_dir is not None else final.parent
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    events = read_metrics(run_dir)
    started = _last(events, "run_started") or {}
    source = str(cfg.get("model", {}).get("source", ""))
    task = started.get("task") or cfg.get("model", {}).get("task", "causal-lm")
    dataset = str(cfg.get("data", {}).get("dataset", ""))
    dataset_name = "legal_clauses.jsonl (FT Studio's demo set)" if dataset == "demo" else dataset
    base = base_model_id(source)
    folder = source if Path(source).exists() else None
    hub_datasets = [dataset] if _HUB_ID.match(dataset) and not Path(dataset).exists() else None
    pipeline_tag = "text-classification" if task == "classification" else "text-generation"
    data = ModelCardData(
        base_model=base, license=base_license(source, folder), datasets=hub_datasets, library_name="transformers",
        pipeline_tag=pipeline_tag, tags=["ftstudio", "full-fine-tuning", task] + (
            [method] if (method := cfg.get("train", {}).get("method", "sft")) != "sft" else []))   # dpo / simpo (TRL's tags)
    name = run_dir.name
    lines = [f"# {name}", "",
             f"A full fine-tune (every weight trained, no adapters) of **{base or source}** made with FT Studio.",
             "", "## Training data", "",
             f"- Dataset: `{dataset_name}`, format `{cfg.get('data', {}).get('format', 'auto')}`",
             f"- Rows: {started.get('train_rows', '–')} for training, {started.get('val_rows', '–')} held out",
             f"- Labels: {', '.join(started['labels'])}" if started.get("labels") else "",
             "", "## Training", "",
             f"- Device: {started.get('device', '–')}, precision {started.get('precision', '–')}, "
             f"{started.get('params', 0):,} parameters, {started.get('total_steps', '–')} planned steps",
             "- Configuration (the run's `config.yaml`; `ftstudio train config.yaml` reproduces it):", "",
             "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    lines += _metrics_section(events) + _forgetting_section(events) + _memory_section(events)
    if check:
        lines += ["## Export check", "", check[0].upper() + check[1:] + ".", ""]
    lines += _usage_section(str(location or final), task)
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
                                   body="\n".join(line for line in lines if line is not None))
    path = final / "README.md"
    tmp = final / ".README.md.tmp"
    tmp.write_text(str(card), encoding="utf-8")
    tmp.replace(path)
    return path


def card_facts(final: str | Path) -> dict:
    """The card's metadata as a dict (for tests and trackers)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(Path(final) / "README.md").data.to_dict()

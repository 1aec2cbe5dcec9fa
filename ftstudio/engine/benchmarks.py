"""Benchmarks through lm-evaluation-harness (the optional ``eval`` extra): a model, or a run's base model and its
fine-tuned ``final/``, scored on the harness's own tasks under one set of settings that is recorded beside the
scores (harness version, each task's version and a hash of its config and local data, few-shot count, chat
template on or off and which template, batch size, limit, seeds, device and dtype). Scores swing with these
settings, so a before/after comparison is honest only when both sides share them, and a later reader can see
which they were.

No benchmark code of our own: the harness's Python API (``simple_evaluate`` with an ``HFLM`` wrapping the model
FT Studio already loaded, so a GGUF base or the bundled demo loads as in training). Tasks are the harness's
names, or tasks of one's own as harness task YAMLs over local files (``dataset_path: json`` + ``data_files``)
in a folder given with ``include_path``; the bundled example ``ftstudio_general_mc`` (resources/benchmarks/) is
always found. A relative ``data_files`` path is resolved against its YAML's folder (the harness alone would
read it from the current directory).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ftstudio.core.errors import ConfigError, FTStudioError
from ftstudio.engine.benchmark_lm import BenchmarkStopped, harness_lm  # noqa: F401 (BenchmarkStopped: re-exported)
from ftstudio.engine.data import resources_dir

INSTALL_HINT = "pip install 'ftstudio[eval]'"


@dataclass
class BenchSettings:
    """What the harness is asked to do; every field is recorded with the scores."""
    tasks: list[str]
    include_path: list[str] = field(default_factory=list)
    num_fewshot: int | None = None        # None: each task's own default
    apply_chat_template: bool = False
    batch_size: int | str = 8             # or "auto"
    limit: int | float | None = None      # documents per task (an int), or a fraction of each task (< 1)
    seed: int = 1234                      # the harness's python, numpy, torch and few-shot seeds all take it
    device: str = "auto"                  # "auto": cuda when torch sees a GPU, else cpu
    dtype: str = "auto"                   # "auto": bfloat16 on a GPU that has it, else float32

    def check(self) -> None:
        if not self.tasks or not all(isinstance(t, str) and t.strip() for t in self.tasks):
            raise ConfigError("--tasks", "name at least one task (the harness's names, e.g. hellaswag, or "
                                         "ftstudio_general_mc)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError("--num-fewshot", f"{self.num_fewshot} must be 0 or more")
        if self.limit is not None and not (self.limit > 0 and (self.limit < 1 or float(self.limit).is_integer())):
            raise ConfigError("--limit", f"{self.limit} must be a whole number of documents or a fraction below 1")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1)):
            raise ConfigError("--batch-size", f"{self.batch_size!r} must be a whole number >= 1 or 'auto'")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError("--dtype", f"{self.dtype!r}: choose auto, float32, bfloat16 or float16")
        for p in self.include_path:
            if not Path(p).is_dir():
                raise ConfigError("--include-path", f"{p}: not a folder (give the folder that holds task YAMLs)")


def require_lm_eval():
    """The harness module, or one line that says how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise FTStudioError(f"benchmarks need lm-evaluation-harness, which is not installed: {INSTALL_HINT}") from None
    return lm_eval


def bundled_tasks_dir() -> Path:
    return resources_dir() / "benchmarks"


# -- tasks -------------------------------------------------------------------------------------------------
def _local_specs(manager, names: list[str], folders: list[Path]) -> list:
    """The task list for simple_evaluate: a name as is, except a task YAML in one of ``folders`` whose local
    data_files are relative, which goes as its full config with those paths made absolute."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # another harness layout: relative paths then resolve as the harness resolves them
        return list(names)
    specs: list = []
    for name in names:
        entry = manager.task_index.get(name)
        path = getattr(entry, "yaml_path", None)
        if path is None or not any(Path(path).resolve().is_relative_to(f.resolve()) for f in folders):
            specs.append(name)
            continue
        cfg = load_yaml(Path(path), resolve_func=True)
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        fixed = _absolute_files(files, Path(path).parent)
        if not isinstance(cfg, dict) or "task" not in cfg or fixed == files:
            specs.append(name)
            continue
        cfg = dict(cfg, dataset_kwargs=dict(cfg["dataset_kwargs"], data_files=fixed))
        specs.append(cfg)
    return specs


def _absolute_files(files, base: Path):
    if isinstance(files, str):
        return files if "://" in files or Path(files).is_absolute() else str(base / files)
    if isinstance(files, list):
        return [_absolute_files(f, base) for f in files]
    if isinstance(files, dict):
        return {k: _absolute_files(v, base) for k, v in files.items()}
    return files


def resolve_tasks(settings: BenchSettings):
    """(TaskManager, the task list for simple_evaluate, the matched task names, {name: its YAML}). Only the local folders are
    indexed when every name is found there (the harness's own index of thousands of YAMLs takes seconds)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    folders = [bundled_tasks_dir(), *(Path(p) for p in settings.include_path)]
    paths = [str(p) for p in folders if p.is_dir()]
    manager = TaskManager(include_path=paths, include_defaults=False)
    matched = manager.match_tasks(settings.tasks)
    if not _all_found(settings.tasks, matched):
        manager = TaskManager(include_path=paths)
        matched = manager.match_tasks(settings.tasks)
    missing = [t for t in settings.tasks if not _all_found([t], matched)]
    if missing:
        import difflib

        close = difflib.get_close_matches(missing[0], manager.all_tasks, n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError("--tasks", f"unknown task {missing[0]!r}{hint}: use lm-evaluation-harness's task names "
                                     "(`lm-eval ls tasks`), or the `task:` name of a task YAML in a folder given "
                                     "with --include-path")
    yamls = {n: str(getattr(manager.task_index.get(n), "yaml_path", None) or "") or None for n in matched}
    return manager, _local_specs(manager, matched, folders), matched, yamls


def _all_found(asked: list[str], matched: list[str]) -> bool:
    import fnmatch

    return all(any(fnmatch.fnmatchcase(m, a) for m in matched) for a in asked)


def _sha256_files(files) -> str | None:
    paths = []

    def walk(x):
        if isinstance(x, str) and "://" not in x and Path(x).is_file():
            paths.append(Path(x))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
    walk(files)
    if not paths:
        return None
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.read_bytes())
    return h.hexdigest()


def _task_facts(raw: dict, yamls: dict | None = None) -> dict:
    """Per task: its version, few-shot count, documents, its YAML, and hashes of its config and local data."""
    facts = {}
    for name, cfg in (raw.get("configs") or {}).items():
        text = json.dumps(cfg, sort_keys=True, default=str)
        files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) if isinstance(cfg, dict) else None
        samples = (raw.get("n-samples") or {}).get(name) or {}
        facts[name] = {"version": (raw.get("versions") or {}).get(name),
                       "num_fewshot": (raw.get("n-shot") or {}).get(name),
                       "documents": samples.get("effective"), "documents_in_task": samples.get("original"),
                       "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "data_sha256": _sha256_files(files), "yaml": (yamls or {}).get(name)}
    return facts


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def scores_of(raw: dict) -> dict[str, dict[str, dict]]:
    """{task: {metric: {"value", "stderr"}}} from the harness's results (a filter other than "none" is kept in
    the metric's name, as the harness prints it)."""
    out: dict = {}
    for task, entry in (raw.get("results") or {}).items():
        metrics = {}
        for key, value in entry.items():
            if "," not in key:
                continue
            metric, filt = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            name = metric if filt == "none" else f"{metric},{filt}"
            metrics[name] = {"value": _number(value), "stderr": _number(entry.get(f"{metric}_stderr,{filt}"))}
        if metrics:
            out[task] = metrics
    return out


# -- models --------------------------------------------------------------------------------------------------
def _device_dtype(settings: BenchSettings) -> tuple[str, object]:
    import torch

    device = pick_device(settings.device)
    if settings.dtype != "auto":
        return device, getattr(torch, settings.dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


def pick_device(device: str) -> str:
    """"auto": cuda when torch sees a GPU, else cpu; a CUDA device torch cannot see is refused in one line."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device", f"{device}: torch sees no CUDA GPU here; use --device cpu (or leave it out)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError("--device", f"{device!r}: choose auto, cpu, cuda or cuda:N")
    return device


def _template_sha(template) -> str | None:
    return hashlib.sha256(template.encode()).hexdigest()[:16] if isinstance(template, str) and template else None


def evaluate_model(loaded_model, tokenizer, settings: BenchSettings, resolved, *, device: str,
                   label: str = "", should_stop: Callable[[], bool] | None = None) -> dict:
    """``resolved``: what :func:`resolve_tasks` returned (resolved once, used for every model). ``should_stop()``
    is asked before each batch; when it says yes, :class:`BenchmarkStopped` is raised (benchmark_lm.py)."""
    require_lm_eval()
    import logging

    from lm_eval import simple_evaluate

    manager, specs, _names, yamls = resolved
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    # Its warning that a model object (not a name) was passed: that is how FT Studio hands over its loaded model.
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    loaded_model.eval()
    lm = harness_lm(loaded_model, tokenizer, batch_size=settings.batch_size, device=device, should_stop=should_stop)
    try:
        raw = _simple_evaluate(simple_evaluate, lm, settings, manager, specs)
    except OSError as e:  # datasets' ConnectionError, DatasetNotFoundError and missing files are all OSErrors
        raise FTStudioError(f"lm-evaluation-harness could not load a task's data ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}); the harness's own tasks download their data from "
                            "the Hugging Face hub on first use: offline, score tasks over local files "
                            "(--include-path; resources/benchmarks/ftstudio_general_mc.yaml is an example)") from None
    if raw is None:  # a non-zero rank of a distributed harness run; ours is one process
        raise FTStudioError(f"lm-evaluation-harness returned no results for {label or 'the model'}")
    return {"scores": scores_of(raw), "tasks": _task_facts(raw, yamls)}


def _simple_evaluate(simple_evaluate, lm, settings: BenchSettings, manager, specs):
    limit = int(settings.limit) if settings.limit is not None and settings.limit >= 1 else settings.limit
    return simple_evaluate(model=lm, tasks=list(specs), task_manager=manager, num_fewshot=settings.num_fewshot,
                           batch_size=settings.batch_size, limit=limit,
                           apply_chat_template=settings.apply_chat_template, log_samples=False,
                           fewshot_as_multiturn=settings.apply_chat_template,  # as recorded; used with a template
                           random_seed=settings.seed, numpy_random_seed=settings.seed,
                           torch_random_seed=settings.seed, fewshot_random_seed=settings.seed)


def _run_parts(source: str) -> tuple[Path, Path] | None:
    """(run folder, its final/) when ``source`` is a run folder, else None."""
    p = Path(source)
    if (p / "config.yaml").is_file() and p.is_dir():
        final = p / "final"
        if not (final / "config.json").is_file():
            raise ConfigError("RUN", f"{p} has no final/ model (the run has not finished and exported); "
                                     "finish or resume it first")
        return p, final
    return None


def run_benchmarks(source: str, settings: BenchSettings, report: Callable[[str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Score a model (a folder, .gguf, hub id, "demo"), or a run folder's base model and ``final/`` under the
    same settings. Returns the record that :func:`save_record` writes: settings, task facts, each model's
    scores and, for a run, Δ (fine-tuned − base) with its standard error. ``should_stop()`` (a window's Stop)
    is asked before each model and each batch: BenchmarkStopped, and nothing is returned or recorded."""
    import torch

    from ftstudio.core.config import ModelConfig, RunConfig
    from ftstudio.engine.models import describe_model, load_model, quiet_transformers

    lm_eval = require_lm_eval()
    say = report or (lambda _msg: None)
    settings.check()
    device, dtype = _device_dtype(settings)
    parts = _run_parts(source)
    if parts is not None:
        cfg = RunConfig.load_run(parts[0] / "config.yaml")
        arch = (json.loads((parts[1] / "config.json").read_text(encoding="utf-8")).get("architectures") or [""])[0]
        if "SequenceClassification" in arch:
            raise ConfigError("RUN", "this run trained a classifier; lm-evaluation-harness scores language models")
        base = cfg.model
        models = [("base", ModelConfig(source=base.source, task="causal-lm",
                                       trust_remote_code=base.trust_remote_code, revision=base.revision)),
                  ("fine_tuned", ModelConfig(source=str(parts[1]), task="causal-lm"))]
    else:
        models = [("model", ModelConfig(source=source, task="causal-lm"))]
    for _label, mcfg in models:  # a missing model is said before the tasks are indexed (seconds)
        describe_model(mcfg.source, trust_remote_code=mcfg.trust_remote_code, revision=mcfg.revision)
    resolved = resolve_tasks(settings)
    names = resolved[2]
    quiet_transformers()
    record: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": str(source),
                    "run": str(parts[0]) if parts else None, "models": {}, "tasks": {}}
    template_for_all = None
    if parts is not None and settings.apply_chat_template:
        from ftstudio.engine.hf_imports import ready
        ready()      # loaded under one lock: threads (engine/hf_imports.py)
        from transformers import AutoTokenizer
        template_for_all = getattr(AutoTokenizer.from_pretrained(str(parts[1])), "chat_template", None)
    for label, mcfg in models:
        if should_stop is not None and should_stop():
            raise BenchmarkStopped(f"benchmarks stopped before the {label.replace('_', '-')} model: nothing recorded")
        say(f"{label}: loading {mcfg.source} on {device} ({str(dtype).replace('torch.', '')})")
        loaded = load_model(mcfg, task="causal-lm", dtype=dtype, device=device if device != "cpu" else None)
        model, tok = loaded.model.to(device), loaded.tokenizer
        template = getattr(tok, "chat_template", None)
        if settings.apply_chat_template:
            if template_for_all and template != template_for_all:
                # Both sides see the prompts through the template the fine-tune was trained with (saved in final/).
                tok.chat_template = template = template_for_all
            if not template:
                raise ConfigError("--apply-chat-template", f"{mcfg.source} has no chat template; leave out "
                                                           "--apply-chat-template to score it on plain text")
        say(f"{label}: scoring {', '.join(names)}")
        with torch.no_grad():
            result = evaluate_model(model, tok, settings, resolved, device=device, label=label,
                                    should_stop=should_stop)
        record["models"][label] = {"source": mcfg.source, "scores": result["scores"],
                                   "chat_template_sha256": _template_sha(template) if settings.apply_chat_template
                                   else None}
        if record["tasks"] and result["tasks"] != record["tasks"]:
            say("warning: the tasks differed between the two models' evaluations (task config or data changed "
                "during the run); the record keeps both")
            record["tasks_" + label] = result["tasks"]
        record["tasks"] = record["tasks"] or result["tasks"]
        del model, loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    record["settings"] = dict(asdict(settings), tasks_matched=names, device=device,
                              dtype=str(dtype).replace("torch.", ""), lm_eval_version=lm_eval.__version__,
                              torch_version=torch.__version__, transformers_version=_version("transformers"),
                              fewshot_as_multiturn=settings.apply_chat_template, log_samples=False)
    if parts is not None:
        record["delta"] = delta(record["models"]["base"]["scores"], record["models"]["fine_tuned"]["scores"])
    return record


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def delta(base: dict, tuned: dict) -> dict:
    """{task: {metric: {"value": tuned − base, "stderr"}}}; the standard error treats the two scores as
    independent, sqrt(se_base² + se_tuned²), which overstates it when both score the same documents."""
    out: dict = {}
    for task, metrics in tuned.items():
        for metric, t in metrics.items():
            b = (base.get(task) or {}).get(metric)
            if b is None or t["value"] is None or b["value"] is None:
                continue
            se = (math.sqrt(b["stderr"] ** 2 + t["stderr"] ** 2)
                  if b["stderr"] is not None and t["stderr"] is not None else None)
            out.setdefault(task, {})[metric] = {"value": t["value"] - b["value"], "stderr": se}
    return out


def save_record(record: dict, path: str | Path | None = None) -> Path | None:
    """Write the record atomically: to ``path``, or for a run to RUN/benchmarks/<time>.json; None when there is
    nowhere to write (a plain model and no path)."""
    from ftstudio.core.runs import atomic_write_text

    if path is None:
        if not record.get("run"):
            return None
        folder = Path(record["run"]) / "benchmarks"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"{stamp}.json"
        n = 2
        while path.exists():
            path = folder / f"{stamp}-{n}.json"
            n += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def latest_record(run_dir: str | Path) -> dict | None:
    """The run's newest benchmark record (RUN/benchmarks/*.json, `ftstudio eval`'s or eval.benchmarks'), or None."""
    from ftstudio.core.runs import newest_record
    return newest_record(Path(run_dir) / "benchmarks", "*.json")


def score_rows(record: dict) -> list[dict]:
    """One row per task and metric: {"task", "metric", "<model label>": {"value","stderr"}..., "delta"}."""
    rows = []
    labels = list(record["models"])
    first = record["models"][labels[-1]]["scores"]
    for task in sorted(first):
        for metric in first[task]:
            row = {"task": task, "metric": metric}
            for label in labels:
                row[label] = (record["models"][label]["scores"].get(task) or {}).get(metric)
            if "delta" in record:
                row["delta"] = (record["delta"].get(task) or {}).get(metric)
            rows.append(row)
    return rows


class RunBenchmarks:
    """``eval.benchmarks`` inside a run: θ0 scored before the first step, the trained weights after the last, under
    the same settings, into RUN/benchmarks/run.json (written after each pass, so a stopped run keeps the first).
    Built at setup, where a missing harness or an unknown task stops the run before it trains. The weights
    scored at the end are the last step's (final/ holds the best step's instead when checkpoint.export_best)."""

    def __init__(self, cfg, run_dir, tokenizer, device: str, autocast_dtype, report, should_stop=None):
        from ftstudio.core.events import LogLine

        self.tokenizer, self.device, self.autocast_dtype = tokenizer, device, autocast_dtype
        self.should_stop = should_stop  # the run's Stop, asked between the harness's batches
        self.report, self.LogLine = report, LogLine
        e = cfg.eval
        self.settings = BenchSettings(tasks=[t.strip() for t in e.benchmarks.split(",") if t.strip()],
                                      include_path=[e.benchmark_include] if e.benchmark_include else [],
                                      limit=e.benchmark_limit, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                      device=device)
        try:
            self.settings.check()
            self.resolved = resolve_tasks(self.settings)
        except ConfigError as err:  # the flags' names mean nothing in a config file: name its fields
            field_ = "eval.benchmark_include" if err.field == "--include-path" else "eval.benchmarks"
            raise ConfigError(field_, err.message) from None
        self.path = Path(run_dir) / "benchmarks" / "run.json"
        self.export_best = bool(cfg.checkpoint.export_best)

    def score(self, model, label: str, step: int) -> dict | None:
        """The record with this pass added; None when the run's Stop ended the pass (said in a log line)."""
        import torch

        from ftstudio.core.runs import atomic_write_text

        lm_eval = require_lm_eval()
        self.report(self.LogLine(f"Benchmarks ({', '.join(self.resolved[2])}) of the {label.replace('_', '-')} "
                                 f"weights at step {step}"))
        was_training = model.training
        autocast = (torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        try:
            with torch.no_grad(), autocast:
                result = evaluate_model(model, self.tokenizer, self.settings, self.resolved, device=self.device,
                                        label=label, should_stop=self.should_stop)
        except BenchmarkStopped as stopped:
            self.report(self.LogLine(f"Benchmarks of the {label.replace('_', '-')} weights: {stopped}", "warning"))
            return None
        finally:
            model.train(was_training)
        record = {"models": {}}
        if self.path.is_file():
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                pass
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        record["models"][label] = {"step": step, "scores": result["scores"], "source": "training weights"}
        record.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), run=str(self.path.parent.parent),
                      tasks=result["tasks"], export_best=self.export_best,
                      settings=dict(asdict(self.settings), tasks_matched=self.resolved[2], dtype=dtype,
                                    autocast=str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype
                                    else None, lm_eval_version=lm_eval.__version__, log_samples=False))
        if {"base", "fine_tuned"} <= set(record["models"]):
            record["delta"] = delta(record["models"]["base"]["scores"], record["models"]["fine_tuned"]["scores"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(record, indent=2, default=str) + "\n")
        for task, metrics in result["scores"].items():
            for metric, s in metrics.items():
                d = ((record.get("delta") or {}).get(task) or {}).get(metric) if label == "fine_tuned" else None
                said = f"{task} {metric} {s['value']:.4f}" if s["value"] is not None else f"{task} {metric} -"
                if s["stderr"] is not None:
                    said += f" ± {s['stderr']:.4f}"
                if d is not None:
                    said += f" (Δ {d['value']:+.4f} from the base model)"
                self.report(self.LogLine(f"Benchmark: {said}"))
        return record

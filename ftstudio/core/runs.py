"""The run store: a run is a folder (config.yaml, metrics.jsonl, checkpoints/, final/); a small SQLite
index over the folders lets the GUI list and compare runs. Pure Python.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator



def make_run_name(model: str) -> str:
    name = Path(model.rstrip("/")).name or model
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)  # a folder named "….gguf" would look like a model file
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:40].strip("-.") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"


def open_run_dir(cfg, resume_from: str | Path | None = None) -> Path:
    """The run's folder, with its config.yaml written first so that the run can be resumed from its own config:
    ``resume_from`` itself; else ``train.output/train.run_name`` (refused when it already holds a run, so two
    runs' metrics never mix), else a new folder named after the model and the time (never an existing one)."""
    from .errors import ConfigError

    if resume_from is not None:
        return Path(resume_from)
    root = Path(cfg.train.output)
    run_dir = root / (cfg.train.run_name or make_run_name(cfg.model.source))
    try:
        if cfg.train.run_name:
            if (run_dir / "config.yaml").exists():
                raise FileExistsError
            run_dir.mkdir(parents=True, exist_ok=True)
        else:  # a new folder per run, even for runs started within the same second
            base = run_dir.name
            for n in range(1, 1000):
                run_dir = root / (base if n == 1 else f"{base}-{n}")
                try:
                    run_dir.mkdir(parents=True)
                    break
                except FileExistsError:
                    continue
        cfg.save(run_dir / "config.yaml")
    except FileExistsError:
        raise ConfigError("train.run_name", f"{run_dir} already holds a run; pick another name or --resume "
                                            "it") from None
    except OSError as e:
        raise ConfigError("train.output", f"cannot write the run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every event of a run, in order; a torn last line (crash mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@dataclass
class RunSummary:
    path: str
    name: str
    model: str
    dataset: str
    status: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    started: float


def summarize_run(run_dir: str | Path) -> RunSummary | None:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        return None
    events = read_metrics(run_dir)
    model = dataset = ""
    try:
        from .config import safe_load_bounded   # a hostile config.yaml must not hang the runs list
        cfg = safe_load_bounded((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        model = str(cfg.get("model", {}).get("source", ""))
        dataset = str(cfg.get("data", {}).get("dataset", ""))
    except Exception:  # a damaged config must not hide the run from the list
        pass
    status, steps, train_loss, eval_loss = "incomplete", 0, None, None
    for e in events:
        kind = e.get("event")
        if kind == "step":
            steps, train_loss = e.get("step", steps), e.get("loss")
        elif kind == "eval":
            eval_loss = e.get("loss")
        elif kind == "finished":
            status = e.get("status", "finished")
        elif kind == "failed":
            status = "failed"
    return RunSummary(str(run_dir), run_dir.name, model, dataset, status, int(steps or 0), train_loss, eval_loss,
                      (run_dir / "config.yaml").stat().st_mtime)


def iter_run_dirs(root: str | Path) -> Iterator[Path]:
    root = Path(root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if p.is_dir() and (p / "config.yaml").exists():
            yield p


class RunIndex:
    """SQLite index of the runs under a root folder; rebuilt from the folders (they are the truth)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.db_path = self.root / "runs.sqlite"

    def refresh(self) -> list[RunSummary]:
        summaries = [s for s in (summarize_run(p) for p in iter_run_dirs(self.root)) if s is not None]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.db_path) as db:
                db.execute("CREATE TABLE IF NOT EXISTS runs (path TEXT PRIMARY KEY, name TEXT, model TEXT, "
                           "dataset TEXT, status TEXT, steps INTEGER, train_loss REAL, eval_loss REAL, started REAL)")
                db.execute("DELETE FROM runs")
                db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
                               [(s.path, s.name, s.model, s.dataset, s.status, s.steps, s.train_loss, s.eval_loss,
                                 s.started) for s in summaries])
        except (sqlite3.Error, OSError):
            pass  # a read-only runs folder still lists its runs
        return sorted(summaries, key=lambda s: s.started, reverse=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it (core/atomic.py)."""
    from .atomic import atomic_write_text as write
    write(path, text)


def newest_record(folder: str | Path, pattern: str) -> dict | None:
    """The newest readable JSON record among ``folder/pattern`` (by modification time), or None: what a window
    reopening a run shows of its benchmark and interpolation records. A torn or foreign file is passed over."""
    files = sorted(Path(folder).glob(pattern), key=lambda f: f.stat().st_mtime)
    for f in reversed(files):
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None

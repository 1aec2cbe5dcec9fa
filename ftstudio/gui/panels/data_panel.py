"""DatasetPanel: choose the fine-tuning data, see its format, size and every problem (file, row, field), preview a
row as the model will see it (tokens under the loss highlighted, masked ones dimmed) and the token-length
histogram with the seq_len cut.

Checking data tokenises every row, so it runs on a pool thread; edits are debounced so typing a seq_len does
not start a check per keystroke. Stale results (the user changed something meanwhile) are dropped.
"""
from __future__ import annotations

import dataclasses
import html
import json
import threading

import pyqtgraph as pg
from PySide6.QtCore import QTimer, Signal, Slot
from PySide6.QtWidgets import (QCompleter, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QTabWidget, QTextBrowser, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from ftstudio.core.config import DataConfig, ModelConfig
from ftstudio.core.errors import DataError, DataProblem

from ..engine_access import EngineMissing, engine, fmt_count
from . import add_fact_rows, breakable
from ..theme import COLORS
from ..worker import JobRunner

PREVIEW_ROWS = 200
_tok_lock = threading.Lock()
_tok_cache: dict[tuple, object] = {}


def load_tokenizer(info, trust_remote_code: bool = False):
    """The model's tokenizer (cached per model), loaded on a worker thread; None if it cannot be loaded offline."""
    if info is None:
        return None
    key = (info.source, info.load_path, trust_remote_code)
    with _tok_lock:
        if key in _tok_cache:
            return _tok_cache[key]
        models = engine("models")
        if hasattr(models, "load_tokenizer"):  # the trainer's own loader: same pad token, same chat template
            tok = models.load_tokenizer(ModelConfig(source=info.source, trust_remote_code=trust_remote_code,
                                                    revision=getattr(info, "revision", None)))
        else:
            from transformers import AutoTokenizer  # heavy import, off the GUI thread

            kw = {"trust_remote_code": trust_remote_code}
            if info.kind == "gguf" and info.path:
                kw["gguf_file"] = info.path.rsplit("/", 1)[-1]
            tok = AutoTokenizer.from_pretrained(info.load_path, **kw)
        _tok_cache[key] = tok
        return tok


def _record_key(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str)


def duplicate_warnings(path: str, records: list[dict], val_records: list[dict] | None) -> list[DataProblem]:
    """Validation rows that repeat training rows: validation loss then measures recall, not generalisation.
    With a separate validation file, each such row is named; with a split, rows that have an exact copy in the
    file are (the split may put one copy on each side)."""
    if val_records is not None:
        train = {_record_key(r) for r in records}
        rows = [i + 1 for i, r in enumerate(val_records) if _record_key(r) in train]
        if not rows:
            return []
        return [DataProblem(path, rows[0], None, f"{len(rows)} validation row(s) repeat a training row exactly "
                            f"(rows {', '.join(map(str, rows[:8]))}{' …' if len(rows) > 8 else ''}): validation "
                            "loss then measures memorisation", "warning")]
    seen: dict[str, int] = {}
    dups = []
    for i, r in enumerate(records):
        k = _record_key(r)
        if k in seen:
            dups.append((i + 1, seen[k]))
        else:
            seen[k] = i + 1
    if not dups:
        return []
    row, first = dups[0]
    return [DataProblem(path, row, None, f"{len(dups)} row(s) repeat an earlier row exactly (row {row} = row "
                        f"{first}): the random split can put one copy in training and one in validation", "warning")]


def model_warnings(cfg: DataConfig, info, tok, task: str | None) -> list[DataProblem]:
    """What the model and tokenizer say about this data: a seq_len past the model's context, no EOS token."""
    out = []
    ctx = getattr(info, "context_length", None)
    if ctx and cfg.seq_len > ctx:
        out.append(DataProblem(cfg.dataset, None, "Sequence length", f"the sequence length {cfg.seq_len} is longer "
                               f"than the model's context ({ctx} positions): rows past {ctx} tokens get positions "
                               "it never saw (or fail); lower the sequence length (Training tab)", "warning"))
    encoder = bool(getattr(info, "is_encoder", False))  # a classifier's head reads a row; it never generates
    if tok is not None and task != "classification" and not encoder and getattr(tok, "eos_token", None) is None:
        out.append(DataProblem(cfg.dataset, None, None, "the tokenizer has no end-of-sequence token: the model "
                               "cannot learn where a completion ends, so it will not stop generating", "warning"))
    return out


def check_job(cfg: DataConfig, info, task: str | None, trust: bool) -> dict:
    """Runs on a pool thread: the DataReport, plus a few records and the tokenizer for the preview."""
    data = engine("data", "check_data", "load_records", "render_example")
    notes, tokenizer_error = [], None
    try:
        tok = load_tokenizer(info, trust)
    except Exception as exc:  # a model without a usable tokenizer still gets its rows checked
        tok = None
        tokenizer_error = f"the model's tokenizer did not load ({type(exc).__name__}: {exc})"
    report = data.check_data(cfg, tok, task=task)
    records: list[dict] = []
    warnings: list[DataProblem] = []
    try:
        source = str(data.demo_dataset_path()) if cfg.dataset == "demo" and hasattr(data, "demo_dataset_path") \
            else cfg.dataset
        records = data.load_records(source)
        val = data.load_records(cfg.val_dataset) if cfg.val_dataset else None
        warnings += duplicate_warnings(source, records, val)
    except (DataError, OSError, ValueError):
        pass  # the problems are already in the report
    if report.rows:  # about rows to train on: a missing or empty file gets its own error, not these
        warnings += model_warnings(cfg, info, tok, report.task or task)
    if tokenizer_error:  # the whole message in the list; the status line says it in a few words
        warnings.insert(0, DataProblem(getattr(info, "source", "") or cfg.dataset, None, None,
                                       tokenizer_error + ": tokens are not counted and rows not rendered", "warning"))
    return {"report": report, "records": records[:PREVIEW_ROWS], "tokenizer": tok, "notes": notes,
            "warnings": warnings, "tokenizer_error": tokenizer_error}


def render_html(pieces: list[tuple[str, bool]]) -> str:
    """The row as the model sees it; the first trained piece carries the anchor "trained" (scrolled into view)."""
    out = []
    anchored = False
    for text, trained in pieces:
        t = html.escape(text).replace("\n", "↵<br>")
        if trained:
            out.append(("" if anchored else "<a name='trained'></a>")
                       + f"<span style='background:#b9e6b0;color:#0b3d0b'>{t}</span>")
            anchored = True
        else:
            out.append(f"<span style='color:#8a8a8a'>{t}</span>")
    return "<span style='font-family:monospace'>" + "".join(out) + "</span>"


class DatasetPanel(QGroupBox):
    reportReady = Signal(object)  # DataReport
    dataFailed = Signal(str)
    datasetRequested = Signal(str)  # a path the user chose; the main window makes it a config edit

    def __init__(self, jobs_pool=None, parent: QWidget | None = None):
        super().__init__("Dataset", parent)
        self.setObjectName("datasetPanel")
        self.cfg = DataConfig()
        self.model_info = None
        self.task: str | None = None
        self.trust = False
        self.report = None
        self.records: list[dict] = []
        self.tokenizer = None
        self.error: str | None = None
        self.warnings: list[DataProblem] = []  # what the model, tokenizer and split say (no run is stopped)
        self._generation = 0
        self.jobs_in_flight = 0
        self.jobs = JobRunner(jobs_pool, self)
        self.jobs.done.connect(self._job_done)
        self.jobs.failed.connect(self._job_failed)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.check_now)
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path_edit = QLineEdit("demo")
        self.path_edit.setObjectName("datasetPath")
        self.path_edit.setToolTip("'demo', a .jsonl/.json/.csv/.tsv/.parquet/.txt file, a saved folder or a hub id")
        self.path_edit.returnPressed.connect(self._typed)
        row.addWidget(self.path_edit, 1)
        for text, slot in (("File…", self.open_file), ("Folder…", self.open_folder)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            row.addWidget(b)
        lay.addLayout(row)

        self.fields, self.status = add_fact_rows(
            lay, (("format", "Format"), ("rows", "Rows"), ("tokens", "Tokens"), ("labels", "Labels")), "dataStatus")

        self.tabs = QTabWidget()
        self.problems = QTreeWidget()
        self.problems.setObjectName("dataProblems")
        self.problems.setHeaderLabels(["file", "row", "field", "problem"])
        self.problems.setRootIsDecorated(False)
        self.problems.setWordWrap(True)
        self.tabs.addTab(self.problems, "Problems")

        prev = QWidget()
        pl = QVBoxLayout(prev)
        pl.setContentsMargins(0, 0, 0, 0)
        prow = QHBoxLayout()
        prow.addWidget(QLabel("Row:"))
        self.row_spin = QSpinBox()
        self.row_spin.setRange(1, 1)
        self.row_spin.valueChanged.connect(self._render_preview)
        prow.addWidget(self.row_spin)
        legend = QLabel("<span style='background:#b9e6b0;color:#0b3d0b'>&nbsp;trained&nbsp;</span> "
                        "<span style='color:#8a8a8a'>masked (no loss)</span>")
        prow.addWidget(legend)
        prow.addStretch(1)
        pl.addLayout(prow)
        self.preview = QTextBrowser()
        self.preview.setObjectName("dataPreview")
        pl.addWidget(self.preview)
        self.tabs.addTab(prev, "Preview")

        self.hist = pg.PlotWidget(title="Tokens per row")
        self.hist.setObjectName("lengthHistogram")
        self.hist.setLabel("bottom", "tokens")
        self.hist.setLabel("left", "rows")
        self.seq_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#d62728", width=2),
                                        label="seq_len", labelOpts={"position": 0.9})
        self.hist.addItem(self.seq_line)
        self.bars = None
        self.tabs.addTab(self.hist, "Lengths")
        for w in (self.problems, self.preview, self.hist):
            w.setMinimumHeight(160)  # about nine lines of a row: on a short screen the panel scrolls instead
        lay.addWidget(self.tabs, 1)

    # -- inputs --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._debounce.isActive() or self.jobs_in_flight > 0

    def set_recent(self, recent: list[str]) -> None:
        """Recent datasets (QSettings) offered as completions while typing a path."""
        self.path_edit.setCompleter(QCompleter([r for r in recent if r], self))

    def set_data_config(self, cfg: DataConfig) -> None:
        """Called on every valid config edit; re-checks (debounced) only when something that matters changed."""
        changed = dataclasses.asdict(cfg) != dataclasses.asdict(self.cfg)
        self.cfg = cfg
        if self.path_edit.text() != cfg.dataset:
            self.path_edit.setText(cfg.dataset)
        self.seq_line.setValue(cfg.seq_len)
        if changed:
            self.schedule_check()

    def set_model(self, info, task: str | None = None, trust: bool = False) -> None:
        self.model_info, self.task, self.trust = info, task, trust
        self.schedule_check()

    def set_task(self, task: str | None) -> None:
        if task != self.task:
            self.task = task
            self.schedule_check()

    def schedule_check(self) -> None:
        self._debounce.start()

    @Slot()
    def check_now(self) -> None:
        self._debounce.stop()
        self._generation += 1
        self.jobs_in_flight += 1
        self.status.setText(f"Checking {self.cfg.dataset}…")
        self.status.setStyleSheet("")
        cfg, info, task, trust = self.cfg, self.model_info, self.task, self.trust
        self.jobs.submit(self._generation, lambda: check_job(cfg, info, task, trust))

    @Slot()
    def _typed(self) -> None:
        self.datasetRequested.emit(self.path_edit.text().strip())

    @Slot()
    def open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a dataset", "",
                                              "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)")
        if path:
            self.datasetRequested.emit(path)

    @Slot()
    def open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a dataset folder (saved with datasets)")
        if path:
            self.datasetRequested.emit(path)

    # -- results -------------------------------------------------------------------------------
    @Slot(object, object)
    def _job_done(self, gen, result) -> None:
        self.jobs_in_flight -= 1
        if gen != self._generation:
            return
        rep = result["report"]
        self.report, self.records, self.tokenizer = rep, result["records"], result["tokenizer"]
        errors = [p for p in rep.problems if p.severity == "error"]
        self.error = f"{len(errors)} problem(s) in the data" if errors else None
        self.warnings = list(result.get("warnings", []))
        self._show_report(rep)
        notes = list(result["notes"])
        tok_error = result.get("tokenizer_error")
        if errors:
            self.status.setText(f"{len(errors)} error(s): fix them before training (see Problems).")
            self.status.setStyleSheet("color: #d62728;")
            self.tabs.setCurrentWidget(self.problems)
        elif tok_error or self.warnings:  # never "Data OK." beside a tokenizer error or a warning
            parts = (["Rows checked, but the model's tokenizer did not load (see Problems)."] if tok_error else [])
            rest = [w for w in self.warnings if not tok_error or w is not self.warnings[0]]
            parts += [f"{len(rest)} warning(s): {rest[0].reason}"
                      + (" (more under Problems)." if len(rest) > 1 else ".")] if rest else []
            self.status.setText(breakable(" ".join(parts + notes)))
            self.status.setStyleSheet("color: #b8860b;")
            self.tabs.setCurrentWidget(self.problems)
        else:
            self.status.setText("Data OK. " + " ".join(notes))
            self.status.setStyleSheet("")
            if self.tabs.currentWidget() is self.problems:
                self.tabs.setCurrentIndex(1)  # nothing to fix: show the rows as the model sees them
        self.reportReady.emit(rep)

    @Slot(object, object)
    def _job_failed(self, gen, exc) -> None:
        self.jobs_in_flight -= 1
        if gen != self._generation:
            return
        self.report = None
        self.records, self.warnings = [], []
        for w in self.fields.values():  # no facts of the last data (a missing file has no format or task)
            w.setText("–")
        self._draw_histogram([])
        self._render_preview()
        if isinstance(exc, DataError):
            self._show_problems(exc.problems)
            self.error = f"{len(exc.problems)} problem(s) in the data"
        elif isinstance(exc, EngineMissing):
            self.error = f"Data checks not available yet: {exc}"
        else:
            self.error = f"{type(exc).__name__}: {exc}"
            self._show_problems([DataProblem(self.cfg.dataset, None, None, self.error)])
        self.status.setText(self.error)
        self.status.setStyleSheet("color: #d62728;")
        self.dataFailed.emit(self.error)

    def _show_report(self, rep) -> None:
        f = self.fields
        if not rep.rows:  # nothing was read (a missing or empty file): no format, task or counts to state
            for w in f.values():
                w.setText("–")
        else:
            f["format"].setText(f"{rep.format or 'not detected'} → task {rep.task or '?'}")
            f["rows"].setText(f"{rep.rows:,} ({rep.train_rows:,} train / {rep.val_rows:,} validation)")
            trunc = (f", {rep.truncated} cut at the sequence length {self.cfg.seq_len}" if rep.truncated else "")
            if rep.tokens is None:
                f["tokens"].setText("– (needs the model's tokenizer)")
            else:
                f["tokens"].setText(f"{fmt_count(rep.tokens)} ({fmt_count(rep.trainable_tokens)} under the loss)"
                                    f"{trunc}")
            f["labels"].setText(", ".join(rep.labels[:20]) + (" …" if len(rep.labels) > 20 else "")
                                if rep.labels else "–")
        self._show_problems(list(rep.problems) + self.warnings)
        self._draw_histogram(rep.lengths)
        self.row_spin.setRange(1, max(1, len(self.records)))
        self._render_preview()

    def _show_problems(self, problems) -> None:
        self.problems.clear()
        for p in problems:
            item = QTreeWidgetItem([p.path.rsplit("/", 1)[-1], "" if p.row is None else str(p.row), p.field or "",
                                    p.reason])
            item.setToolTip(0, p.path)
            item.setToolTip(3, p.reason)
            if p.severity == "error":
                item.setForeground(3, pg.mkColor("#d62728"))
            elif p.severity == "warning":
                item.setForeground(3, pg.mkColor("#b8860b"))
            self.problems.addTopLevelItem(item)
        self.tabs.setTabText(0, f"Problems ({len(problems)})")
        for i in range(3):
            self.problems.resizeColumnToContents(i)

    def _draw_histogram(self, lengths: list[int]) -> None:
        import numpy as np

        if self.bars is not None:
            self.hist.removeItem(self.bars)
            self.bars = None
        if not lengths:
            return
        counts, edges = np.histogram(np.asarray(lengths), bins=min(40, max(5, len(set(lengths)))))
        self.bars = pg.BarGraphItem(x0=edges[:-1], x1=edges[1:], height=counts, brush=COLORS["train"])
        self.hist.addItem(self.bars)
        self.seq_line.setValue(self.cfg.seq_len)

    @Slot()
    def _render_preview(self, *_args) -> None:
        if not self.records or self.report is None or not self.report.format:
            self.preview.setPlainText("No rows to preview.")
            return
        rec = self.records[min(self.row_spin.value(), len(self.records)) - 1]
        if self.tokenizer is None:
            self.preview.setPlainText(json.dumps(rec, ensure_ascii=False, indent=2))
            return
        try:
            data = engine("data", "render_example")
            roles = getattr(self.report, "columns", None)  # a table's roles the check found (engine/data/table.py)
            cfg = (dataclasses.replace(self.cfg, text_column=roles["text"], label_column=roles["label"]) if roles
                   else self.cfg)
            pieces = data.render_example(rec, self.report.format, self.tokenizer, cfg, task=self.report.task)
        except Exception as exc:  # a row that cannot render says why, in place of the preview
            self.preview.setPlainText(f"This row cannot be rendered: {exc}\n\n"
                                      + json.dumps(rec, ensure_ascii=False, indent=2))
            return
        self.preview.setHtml(render_html(pieces))
        if any(trained for _t, trained in pieces):  # a long prompt must not hide the trained span below the fold
            self.preview.scrollToAnchor("trained")

"""The console sink: a rich progress bar (loss, LR, tokens/s, ETA) on stderr, problems as clean lines.
stdout stays free for --json."""
from __future__ import annotations

import os

from ftstudio.core.events import (CheckpointSaved, EvalMetrics, Event, LogLine, NonFiniteStep, RunFailed,
                                  RunFinished, RunStarted, StepMetrics, per_class_text, train_loss_label)


class ConsoleSink:
    def __init__(self, quiet: bool = False):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.progress = None
        self.task = None

    def _start_progress(self, total: int, done: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=total, completed=done, info="")
        self.progress.start()

    def __call__(self, event: Event) -> None:
        c = self.console
        if isinstance(event, RunStarted):
            c.print(f"Run folder {event.run_dir}: {event.params:,} parameters, {event.train_rows} train / "
                    f"{event.val_rows} validation rows, {event.total_steps} steps on {event.device} "
                    f"({event.precision})")
            self._start_progress(event.total_steps, event.resumed_from_step)
        elif isinstance(event, StepMetrics):
            if self.progress is not None:
                info = (f"loss {event.loss:.4f}  lr {event.lr:.2e}  |g| {event.grad_norm:.2f}  "
                        f"{event.tokens_per_s:,.0f} tok/s")
                if "rewards/accuracies" in event.objective:   # dpo / simpo
                    info += (f"  pref acc {event.objective['rewards/accuracies']:.2f}  "
                             f"margin {event.objective['rewards/margins']:.3f}")
                self.progress.update(self.task, completed=event.step, info=info)
            elif not self.quiet:
                c.print(f"step {event.step}: loss {event.loss:.4f}")
        elif isinstance(event, EvalMetrics):
            parts = [f"loss {event.loss:.4f}"]
            if event.perplexity is not None:
                parts.append(f"perplexity {event.perplexity:.2f}")
            if event.accuracy is not None:
                parts.append(f"accuracy {event.accuracy:.3f}" + (f" (majority-class baseline "
                             f"{event.majority_baseline:.3f})" if event.majority_baseline is not None else "")
                             + (f"  macro-F1 {event.macro_f1:.3f}" if event.macro_f1 is not None else ""))
            if "rewards/margins" in event.objective:   # dpo / simpo
                parts.append(f"reward margin {event.objective['rewards/margins']:.3f}")
            c.print(f"eval @ step {event.step}: " + "  ".join(parts), markup=False)
            if event.per_class:
                c.print("  per class: " + "; ".join(per_class_text(event.per_class)), markup=False, soft_wrap=True)
            if event.collapsed:
                c.print(f"warning: {event.collapsed}", style="yellow", markup=False, soft_wrap=True)
        elif isinstance(event, CheckpointSaved):
            c.print(f"checkpoint saved: {event.path}")
        elif isinstance(event, NonFiniteStep):
            c.print(f"non-finite {event.what} at step {event.step}: {event.action}. {event.advice}", style="yellow",
                    markup=False, soft_wrap=True)
        elif isinstance(event, LogLine):
            # soft_wrap: a problem stays on one line however long its path (grep-able, one line per problem).
            if event.level == "error" and event.message.startswith("Traceback") and \
                    not os.environ.get("FTSTUDIO_DEBUG"):
                # A bug's traceback (the engine logs one for anything unexpected): one line here; the run's
                # metrics.jsonl keeps it, and FTSTUDIO_DEBUG=1 prints it.
                c.print("internal error (a bug in FT Studio; the traceback is in the run's metrics.jsonl when the "
                        "run folder exists, or run again with FTSTUDIO_DEBUG=1 to print it)", style="red",
                        markup=False, soft_wrap=True)
            elif event.level == "error":
                c.print(event.message, style="red", markup=False, soft_wrap=True)
            elif event.level == "warning":
                c.print(event.message, style="yellow", markup=False, soft_wrap=True)
            elif not self.quiet:
                c.print(event.message, style="dim", markup=False)
        elif isinstance(event, RunFinished):
            self.close()
            c.print(f"[bold green]{event.status}[/] after {event.steps} steps ({event.elapsed_s:.0f} s). "
                    f"Final model: {event.final_model or '-'}")
            if event.train_loss is not None:
                c.print(f"train loss {event.train_loss:.4f} ({train_loss_label(event)})", markup=False)
            if (event.eval or {}).get("collapsed"):
                c.print(f"warning: {event.eval['collapsed']}", style="yellow", markup=False, soft_wrap=True)
            if event.stop_reason:
                c.print(event.stop_reason, markup=False, soft_wrap=True)
        elif isinstance(event, RunFailed):
            self.close()
            c.print(f"ftstudio: error: {event.reason}", style="bold red", markup=False, soft_wrap=True)
            if event.advice:
                c.print(f"advice: {event.advice}", markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

"""Sinks: reporters that receive the engine's events (the ``Reporter`` protocol of core/events.py).

``MetricsWriter`` keeps every event of a run in its ``metrics.jsonl`` (what the Runs tab and a resumed run
read back with ``core.runs.read_metrics``). The console (cli/console.py) and the GUI worker are sinks too.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftstudio.core.events import Event


class MetricsWriter:
    """Sink: appends one JSON object per event to ``metrics.jsonl``, flushed at once (a crash loses nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None
        self.broken = False   # a write failed (a full disk): the run ends on that error; later events are not written

    def __call__(self, event: Event) -> None:
        if self.broken or (event.kind == "load_progress" and event.done < event.total):
            return  # loading's progress is the window's bar: the file keeps only its end (how long it took)
        line = json.dumps(event.to_dict(), default=str) + "\n"
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()
        except OSError:
            self.broken = True
            self._close_quietly()
            raise

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:   # every line was flushed as written; a full disk cannot take the (empty) rest
                pass

    _close_quietly = close

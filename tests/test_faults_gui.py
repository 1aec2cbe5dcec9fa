"""The app under a signal (issue 28): SIGTERM, SIGHUP or SIGINT close the window as the user would, without a
question nobody can answer; the run stops after its step with a checkpoint. The handler gui/app.py installs is
called here as the signal would call it (a real signal to the pytest process would reach pytest too)."""
from __future__ import annotations

import signal
from pathlib import Path


from test_gui import lm_window, make_window, no_dangling_threads, wait_ready  # noqa: F401 - fixtures


def test_sigterm_to_the_app_stops_its_run_with_a_checkpoint_and_closes(make_window, qtbot, tiny_llama,  # noqa: F811
                                                                        tmp_path):
    from ftstudio.gui.app import _SignalClose

    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=100_000, eval_every=0)
    wait_ready(qtbot, win)
    win.ask_on_close = True      # a signal must not wait for an answer
    assert win.start_run()
    qtbot.waitUntil(lambda: win.monitor.counts["step"] >= 2, timeout=120_000)
    handler = _SignalClose(win)
    handler(signal.SIGTERM, None)
    assert handler.received == signal.SIGTERM
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=60_000)
    assert not win.runs.running and win.last_result is not None and win.last_result.status == "stopped"
    run_dir = Path(win.last_result.output_dir)
    assert (run_dir / "checkpoints" / f"step-{win.last_result.steps}").is_dir()
    assert (run_dir / ".lock").read_text() == "", "the run folder's lock was released"

"""`ftstudio gui [--config RUN.yaml] [--autostart] [--quit-when-done] [--screenshot PNG]`: the desktop app.

With no options the window opens with the demo model and dataset chosen (or, for a returning user, the last
config), so a new user presses Start and watches a real fine-tune. torch and transformers are imported only
when work starts, so the window appears in well under three seconds.

--screenshot without --autostart saves the window once shown and quits; with --autostart --quit-when-done it
saves the window when the run ends, then quits (exit 0 if the run finished). --screenshot-step N saves it
mid-run at step N instead. After a run its result line is printed, and with FTSTUDIO_STALL_DIAG=1 the
event-loop stall figures (heartbeat).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ftstudio.engine.resources import icon_path

SETUP_TABS = ("model", "training", "hardware")
ICON = icon_path()  # resources/ wherever this install keeps it (wheel, source tree, bundle)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftstudio gui", description="Open the FT Studio desktop app.")
    p.add_argument("--config", metavar="RUN.yaml", help="start from this run config")
    p.add_argument("--autostart", action="store_true", help="start training as soon as the window is shown")
    p.add_argument("--quit-when-done", action="store_true", help="quit when the run ends (exit 0 if it finished)")
    p.add_argument("--screenshot", metavar="PNG", help="save a picture of the window (see --screenshot-step)")
    p.add_argument("--screenshot-step", type=int, metavar="N", help="with --autostart: take the screenshot at step N")
    p.add_argument("--size", default=None, metavar="WxH", help="window size, e.g. 1280x800")
    p.add_argument("--theme", choices=("light", "dark"), help="override the saved theme")
    p.add_argument("--fresh", action="store_true", help="ignore the last config kept in the settings")
    p.add_argument("--setup-tab", choices=SETUP_TABS, help="which setup tab to show on the left (screenshots)")
    p.add_argument("--ready", action="store_true", help="with --screenshot: wait for the model's facts, the data "
                   "check and the plan first (these import torch and transformers)")
    p.add_argument("--target-card", metavar="LABEL", help='plan memory for this card, e.g. "24 GB card"')
    p.add_argument("--compare", metavar="RUN_DIR", help="open this run in the Compare tab")
    p.add_argument("--generate", metavar="PROMPT", help="with --compare: generate from PROMPT with both models "
                   "(--screenshot: taken mid-generation)")
    p.add_argument("--evaluate", action="store_true", help="with --compare: evaluate both classifiers")
    return p


def _icon():
    from PySide6.QtGui import QIcon

    for path in (ICON, ICON.with_suffix(".png")):
        if path.exists():
            return QIcon(str(path))
    return QIcon()


def _writable_output(win) -> None:
    """A double-clicked app may start in a folder the user cannot write (/, the bundle's folder on a shared
    drive): then a relative output folder ("runs", the default) goes under the home folder instead."""
    import os

    cfg = win.config()
    out = Path(cfg.train.output)
    if not out.is_absolute() and not os.access(os.getcwd(), os.W_OK):
        win.training_panel.set_value("output", str(Path.home() / "ftstudio-runs" / out))
        win.say_change(f"The start folder {os.getcwd()} is not writable, so runs go under your home folder", cfg)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    from ftstudio.core.streams import guard_windowed_streams

    guard_windowed_streams()  # the ftstudio-gui entry (pythonw, a desktop launcher) may have no stdout/stderr
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ftstudio.core.config import RunConfig
    from ftstudio.core.errors import ConfigError

    cfg = None
    if args.config:  # before Qt starts: a broken config is one line and exit 2, even where Qt cannot start
        try:
            cfg = RunConfig.load(args.config)
        except ConfigError as e:
            print(f"ftstudio gui: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    from . import stall_probe
    app_class = stall_probe.timed_application_class() if stall_probe.enabled() else QApplication
    app = QApplication.instance() or app_class(sys.argv[:1])
    app.setOrganizationName("FTStudio")
    app.setApplicationName("FT Studio")
    app.setWindowIcon(_icon())

    from .main_window import MainWindow

    unattended = bool(args.autostart or args.screenshot)
    win = MainWindow(config=cfg, restore_last=not (unattended or args.fresh or cfg))
    _writable_output(win)
    if args.theme:
        win.set_theme(args.theme)
    if args.setup_tab:
        win.left.setCurrentIndex(SETUP_TABS.index(args.setup_tab))
    if args.target_card:
        idx = win.hardware_panel.target.findText(args.target_card)
        if idx < 0:
            print(f"ftstudio gui: error: no card {args.target_card!r} in the hardware panel's list", file=sys.stderr)
            return 2
        win.hardware_panel.target.setCurrentIndex(idx)
    if args.size:
        w, h = (int(x) for x in args.size.lower().split("x"))
        win.resize(w, h)
    win.show()
    state = {"rc": 0, "shot": False}

    def shoot() -> None:
        if args.screenshot and not state["shot"]:
            state["shot"] = True
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            panel = win.training_panel
            if args.setup_tab == "training" and panel.layer_bars.isVisibleTo(panel):
                panel.scroll.ensureWidgetVisible(panel.layer_bars, 0, 150)  # the per-layer rates in view
                app.processEvents()
            win.grab().save(args.screenshot)
            win.heartbeat.skip()  # the grab is our stall, not the run's
            print(f"screenshot: {args.screenshot} ({win.width()}x{win.height()})")

    def shown() -> None:
        if not state.get("shown"):
            state["shown"] = True
            print(f"window shown {time.perf_counter() - t0:.2f} s after main() started")
        if (args.ready or args.compare) and win.checks_pending() and time.perf_counter() - t0 < 120:
            QTimer.singleShot(100, shown)  # the picture shows the model's facts, the data check and the plan
            return
        if args.compare:
            compare(win, args, shoot, state)
        elif args.screenshot and not args.autostart:
            shoot()
            win.ask_on_close = False
            win.close()
        elif args.autostart:
            if win.checks_pending() and time.perf_counter() - t0 < 120:
                QTimer.singleShot(100, shown)  # the model description and data check come first
                return
            if not win.start_run():
                print(f"ftstudio gui: could not start: {win.status_label.text()}", file=sys.stderr)
                state["rc"] = 1
                if args.quit_when_done:
                    win.close()

    def on_events(_n: int) -> None:
        if args.screenshot_step and win.monitor.step >= args.screenshot_step:
            shoot()

    def on_finished(result) -> None:
        print(win.status_text)
        if stall_probe.enabled():  # the event-loop figures are a developer's diagnostic (FTSTUDIO_STALL_DIAG=1)
            print(win.heartbeat.summary())
            if win.heartbeat.long_stalls:
                print("stalls over 100 ms (s since start, ms):", win.heartbeat.long_stalls[:20])
        if win.heartbeat.probe is not None:
            print(win.heartbeat.probe.summary())
            slow = getattr(type(app), "slow", [])
            print(f"GUI event deliveries over 25 ms: {len(slow)}; the slowest:")
            for ms, what in sorted(slow, reverse=True)[:15]:
                print(f"  {ms} ms {what}")
        state["rc"] = 0 if getattr(result, "status", None) in ("finished", "stopped") else 1
        if args.quit_when_done:
            shoot()
            win.ask_on_close = False
            win.close()

    win.monitor.eventsProcessed.connect(on_events)
    win.runFinished.connect(on_finished)
    signals = stop_on_signals(app, win)
    QTimer.singleShot(0, shown)
    if not args.screenshot or args.autostart:
        QTimer.singleShot(1500, win.warm_up)
    app.exec()
    return 128 + signals.received if signals.received else state["rc"]


class _SignalClose:
    """SIGTERM, SIGHUP and SIGINT close the window as the user would, without asking: a run stops after its step
    with a checkpoint (MainWindow.closeEvent → shutdown(save=True)); a second signal exits at once."""

    def __init__(self, win):
        self.win, self.received = win, None

    def __call__(self, signum, frame) -> None:
        import os
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        from PySide6.QtCore import QTimer
        self.win.ask_on_close = False
        QTimer.singleShot(0, self.win.close)   # from the event loop, not from inside whatever Python was running


def _let_python_handle_signals() -> None:
    """A no-op: a timer that runs Python now and then, so a signal's Python handler runs while Qt waits."""


def stop_on_signals(app, win) -> _SignalClose:
    import signal

    from PySide6.QtCore import QTimer

    handler = _SignalClose(win)
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)
    tick = QTimer(app)
    tick.timeout.connect(_let_python_handle_signals)
    tick.start(250)
    return handler


def compare(win, args, shoot, state) -> None:
    """--compare RUN_DIR [--generate PROMPT | --evaluate]: the run in the Compare tab, then the comparison;
    with --screenshot the picture is taken mid-generation (a few pieces of the fine-tuned text in), or when the
    evaluation is shown, and the app quits."""
    from PySide6.QtCore import QTimer

    from ftstudio.core.runs import read_metrics

    win._open_run(args.compare, read_metrics(args.compare))
    win.center.setCurrentWidget(win.compare_tab)
    tab = win.compare_tab

    poll = QTimer(win)  # on the GUI thread: the streamed pieces are shown there
    poll.setInterval(10)

    def done(*_a) -> None:
        poll.stop()
        if args.screenshot:
            shoot()
        win.ask_on_close = False
        win.close()

    def piece() -> None:
        if len(tab.streamed["tuned"]) >= 3 and not state["shot"]:
            poll.stop()
            shoot()  # mid-generation: the base model's text is in, the fine-tuned one is being written

    tab.compared.connect(done)
    tab.jobs.failed.connect(done)
    if args.generate:
        if args.screenshot:
            poll.timeout.connect(piece)
            poll.start()
        tab.prompt.setPlainText(args.generate)
        tab.generate()
    elif args.evaluate:
        tab.evaluate()
    else:
        done()


if __name__ == "__main__":
    raise SystemExit(main())

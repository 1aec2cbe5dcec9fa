"""How the main window opens and closes: inside the screen's available area on first show, the memory bar's
pane sized to its content, and closing mid-run without blocking the event loop.

A mixin of MainWindow. Closing during a run asks (unless unattended), then asks the run to finish its step and
write a checkpoint and returns at once: the window shows "finishing the step and saving…" and closes itself
when the run has ended (MainWindow._run_done). Nothing here waits on the training thread.
"""
from __future__ import annotations

from PySide6.QtCore import QTimer, Slot
from PySide6.QtWidgets import QApplication, QMessageBox

from .fit import fit_to_screen


class WindowLifecycleMixin:
    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if not self._fitted:  # once: inside the screen's available area, whatever size was saved or asked for
            self._fitted = True
            fit_to_screen(self)
            self._fit_memory_pane()
            self._fit_setup_panes()

    @Slot(int, int)
    def _memory_dragged(self, *_args) -> None:
        self.memory_user_sized = True

    @Slot()
    def _memory_content_changed(self) -> None:
        """A measured line or advice rows appeared: the pane follows its content (after layout) unless the user
        chose its height."""
        if self._fitted and not self.memory_user_sized:
            QTimer.singleShot(0, self._fit_memory_pane)

    @Slot(int, int)
    def _setup_dragged(self, *_args) -> None:
        self.setup_user_sized = True

    def _fit_setup_panes(self) -> None:
        """The model's facts get the height they need (up to half the tab); the data panel the rest."""
        total = sum(self.setup_splitter.sizes())
        if total <= 0:
            return
        width = self.setup_splitter.widget(0).width()
        need = self.model_panel.heightForWidth(width) if width > 50 else -1
        want = min((need if need > 0 else self.model_panel.sizeHint().height()) + 2, total // 2)
        self.setup_splitter.setSizes([want, total - want])

    def _fit_memory_pane(self, *_args) -> None:
        """The memory bar's pane as tall as its content, up to 40 % of the window (it scrolls beyond)."""
        total = sum(self.body_splitter.sizes())
        if total <= 0:
            return
        want = self.memory_bar.heightForWidth(max(200, self.memory_scroll.viewport().width()))
        want = min(max(want, self.memory_bar.minimumSizeHint().height()) + 2, int(0.4 * total))
        self.body_splitter.setSizes([total - want, want])

    def shutdown(self) -> None:
        """Stop everything this window started and wait for it (close, tests)."""
        self.runs.shutdown(save=True)
        if getattr(self, "tool_dialog", None) is not None:  # Run → Find learning rate / Sweep: stop and wait
            self.tool_dialog.close()
        self.compare_tab.shutdown()
        self.heartbeat.stop()
        self.monitor.timer.stop()
        self.hardware_panel.stop()
        self.model_panel.stop_reading()
        self.data_panel._debounce.stop()
        self.traced_plans.stop()
        self.pool.waitForDone()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        """Closing mid-run never blocks the event loop: the run is asked to finish its step and write a
        checkpoint, the window says so, and it closes itself when the run has ended (``_run_done``)."""
        if self.runs.running:
            event.ignore()
            if self.finishing:
                self._status("Still finishing the step and saving the checkpoint; the window closes when it is "
                             "written.")
                return
            if self.ask_on_close:
                answer = QMessageBox.question(
                    self, "A run is in progress",
                    "Stop the run? The current step finishes and a checkpoint is saved first, so it can be resumed "
                    "from the Runs tab; the window closes when it is written.",
                    QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
                if answer != QMessageBox.StandardButton.Yes:
                    return
            self.finishing = True
            self.runs.request_save()
            self.runs.request_stop()
            if self.runs.paused:
                self.runs.resume()  # a paused run must reach the end of its step to save
            for b in (self.pause_button, self.stop_button, self.save_button):
                b.setEnabled(False)
            self.monitor.set_finishing()
            self._status("Finishing the step and saving a checkpoint; the window closes when it is written.")
            return
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("lastConfig", self.config().to_yaml())
        self.shutdown()
        QApplication.instance().removeEventFilter(self.wheel_guard)
        event.accept()

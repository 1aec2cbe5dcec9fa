"""The window's menus (File, Run, View, Help), config files, the CLI command and the settings kept in QSettings.

A mixin of MainWindow, kept apart so the window's file stays about layout and the run.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QAction, QActionGroup, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLabel, QMessageBox,
                               QSpinBox)

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError

from . import help_text
from .theme import apply_theme


class WindowMenusMixin:
    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self._action(m, "Open model folder…", self.model_panel.open_folder, QKeySequence.StandardKey.Open)
        self._action(m, "Open GGUF model…", self.model_panel.open_gguf)
        self._action(m, "Open dataset…", self.data_panel.open_file, "Ctrl+D")
        m.addSeparator()
        self._action(m, "Load config YAML…", self.load_config_dialog, "Ctrl+L")
        self._action(m, "Save config YAML…", self.save_config_dialog, QKeySequence.StandardKey.Save)
        self._action(m, "Copy CLI command", self.copy_cli_command, "Ctrl+Shift+C")
        self._action(m, "Export launch script…", self.export_launch_dialog)
        self._action(m, "Export GGUF…", self.export_gguf_dialog)
        m.addSeparator()
        self._action(m, "Quit", self.close, QKeySequence.StandardKey.Quit)
        m = self.menuBar().addMenu("&Run")
        self._action(m, "Start", self.start_clicked, "Ctrl+R")
        self._action(m, "Pause / Resume", self.toggle_pause, "Ctrl+P")
        self._action(m, "Stop", self.stop_run, "Ctrl+.")
        self._action(m, "Save checkpoint now", self.save_now, "Ctrl+K")
        self._action(m, "Check data again", self.data_panel.check_now)
        m.addSeparator()
        self._action(m, "Find learning rate…", self.open_lr_find)
        self._action(m, "Sweep…", self.open_sweep)
        m = self.menuBar().addMenu("&View")
        group = QActionGroup(self)  # its triggered(QAction) names the action: sender() is None in a mixin slot
        group.triggered.connect(self._theme_from_action)
        self.theme_actions = {}
        for theme in ("light", "dark"):
            a = QAction(theme.capitalize(), self)
            a.setCheckable(True)
            a.setData(theme)
            group.addAction(a)
            m.addAction(a)
            self.theme_actions[theme] = a
        m = self.menuBar().addMenu("&Help")
        self._action(m, "The ideas behind FT Studio", self.show_ideas, QKeySequence.StandardKey.HelpContents)
        self._action(m, "Forgetting and its remedies", self.show_forgetting)
        self._action(m, "About FT Studio", self.show_about)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        a.triggered.connect(slot)
        menu.addAction(a)
        return a

    @Slot()
    def load_config_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a run config", "", "YAML (*.yaml *.yml)")
        if path:
            self.load_config(path)

    def load_config(self, path: str) -> bool:
        try:
            cfg = RunConfig.load(path)
        except ConfigError as e:
            QMessageBox.warning(self, "Cannot load the config", str(e))
            return False
        self.training_panel.set_config(cfg)
        self.model_panel.set_trust(cfg.model.trust_remote_code)
        return True

    @Slot()
    def save_config_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the run config", "run.yaml", "YAML (*.yaml *.yml)")
        if path:
            self.config().save(path)
            self._status(f"Saved {path}. Run it headless: ftstudio train {path}")

    def cli_command(self) -> str:
        import shlex

        from ftstudio.core.config import config_to_flags
        return shlex.join(["ftstudio", "train", *config_to_flags(self.config())])

    @Slot()
    def copy_cli_command(self) -> None:
        cmd = self.cli_command()
        QGuiApplication.clipboard().setText(cmd)
        self._status(f"Copied: {cmd}")

    # -- Run → Find learning rate / Sweep (dialogs in lr_find_dialog.py, sweep_dialog.py) --------------
    @Slot()
    def open_lr_find(self):
        from .lr_find_dialog import LRFindDialog
        return self._open_tool(LRFindDialog, "useLearningRate", self._use_found_lr)

    @Slot()
    def open_sweep(self):
        from .sweep_dialog import SweepDialog
        dlg = self._open_tool(SweepDialog, "useValues", self._use_sweep_values)
        if dlg is not None:
            dlg.finishedSweep.connect(self._sweep_finished)
        return dlg

    def _open_tool(self, cls, signal: str, slot):
        """One dialog at a time, never beside a training run: both would share the same cores or GPU."""
        if self.runs.running or (getattr(self, "tool_dialog", None) is not None and self.tool_dialog.job.running):
            self._status("A run or another search is in progress: stop it first.", error=True)
            return None
        if self.training_panel.error:
            self._status(f"Fix the config first: {self.training_panel.error}", error=True)
            return None
        from .engine_access import EngineMissing
        try:
            self.tool_dialog = cls(self.config(), self)
        except (EngineMissing, ConfigError) as e:
            QMessageBox.warning(self, "Not available", str(e))
            return None
        getattr(self.tool_dialog, signal).connect(slot)
        self.tool_dialog.show()
        return self.tool_dialog

    @Slot(float)
    def _use_found_lr(self, lr: float) -> None:
        before = self.config()
        self.training_panel.set_value("lr", lr)
        self.say_change("The learning-rate finder's suggestion", before)

    @Slot(object)
    def _use_sweep_values(self, values: dict) -> None:
        before = self.config()
        self.training_panel.set_values(**values)
        self.say_change("From the sweep's best trial", before)

    @Slot(object)
    def _sweep_finished(self, result) -> None:
        self.runs_tab.refresh()  # the trials are run folders: their curves overlay in the Runs tab

    @Slot()
    def export_launch_dialog(self) -> None:
        """Ask nodes / GPUs per node / SLURM, then where to save the config; the script goes beside it."""
        gpus = len(self.config().hardware.gpus) or 8
        dlg = LaunchDialog(self, gpus_per_node=gpus)
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the config the script will run", "run.yaml",
                                              "YAML (*.yaml *.yml)")
        if path:
            try:
                script = self.export_launch_script(path, *dlg.values())
            except (OSError, ValueError) as e:
                QMessageBox.warning(self, "Cannot write the launch script", str(e))
                return
            self._status(f"Saved {path} and {script}: copy both to the cluster and run "
                         + ("`sbatch " if dlg.values()[2] else "`bash ") + f"{script.name}`.")

    def export_launch_script(self, config_path: str, nodes: int, gpus_per_node: int, slurm: bool):
        """Save the current config to ``config_path`` and the torchrun (or SLURM) script that runs it beside it
        (``<stem>.sbatch`` or ``<stem>-launch.sh``); returns the script's path."""
        from pathlib import Path

        from .engine_access import engine
        cfg_path = Path(config_path).resolve()
        self.config().save(cfg_path)
        text = engine("distributed", "launch_script").launch_script(cfg_path, nodes, gpus_per_node, slurm)
        script = cfg_path.with_name(cfg_path.stem + (".sbatch" if slurm else "-launch.sh"))
        script.write_text(text, encoding="utf-8")
        script.chmod(0o755)
        return script

    @Slot()
    def export_gguf_dialog(self) -> None:
        """A run folder (its final/) or a model folder, the tensor type, then the file; written on a pool thread."""
        from pathlib import Path

        from PySide6.QtWidgets import QInputDialog

        source = QFileDialog.getExistingDirectory(self, "Export GGUF: choose a run folder (or a model folder)",
                                                  self.config().train.output)
        if not source:
            return
        kind, ok = QInputDialog.getItem(self, "Export GGUF", "Tensor type (f16 matches final/, q8_0 is half the "
                                        "size):", ["f16", "bf16", "q8_0"], 0, False)
        if not ok:
            return
        out, _ = QFileDialog.getSaveFileName(self, "Save the GGUF file for llama.cpp / Ollama",
                                             str(Path(source) / f"{Path(source).name}-{kind}.gguf"), "GGUF (*.gguf)")
        if out:
            self.export_gguf(source, out, kind)

    def export_gguf(self, source: str, out: str, kind: str = "f16") -> None:
        """Start the export (`ftstudio export SOURCE --gguf OUT --gguf-type KIND`); the status line tells the end."""
        from .engine_access import engine
        from .worker import JobRunner

        if getattr(self, "_gguf_jobs", None) is None:
            self._gguf_jobs = JobRunner(self.pool, self)
            self._gguf_jobs.done.connect(self._gguf_done)
            self._gguf_jobs.failed.connect(self._gguf_failed)
        export = engine("models.gguf_export", "export_gguf").export_gguf
        self._status(f"Exporting {source} as GGUF ({kind})…")
        self._gguf_jobs.submit("gguf", lambda: export(source, out, kind))

    @Slot(object, object)
    def _gguf_done(self, _tag, result) -> None:
        self._status(" ".join([result.summary(), *(f"Note: {w}." for w in result.warnings)]))

    @Slot(object, object)
    def _gguf_failed(self, _tag, exc) -> None:
        self._status(f"GGUF export failed: {exc}", error=True)

    @Slot(QAction)
    def _theme_from_action(self, action: QAction) -> None:
        self.set_theme(str(action.data()))

    def set_theme(self, theme: str) -> None:
        apply_theme(theme, self)
        self.theme = theme
        if theme in getattr(self, "theme_actions", {}):
            self.theme_actions[theme].setChecked(True)
        self.settings.setValue("theme", theme)

    @Slot()
    def show_about(self) -> None:
        QMessageBox.about(self, "About FT Studio", help_text.about_text())

    @Slot()
    def show_ideas(self) -> None:
        self._help_box("The ideas behind FT Studio", help_text.IDEAS).exec()

    @Slot()
    def show_forgetting(self) -> None:
        self._help_box("Forgetting and its remedies", help_text.FORGETTING).exec()

    def _help_box(self, title: str, text: str) -> QMessageBox:
        box = QMessageBox(QMessageBox.Icon.Information, title, text, QMessageBox.StandardButton.Close, self)
        box.setObjectName("helpBox")
        box.setTextFormat(Qt.TextFormat.RichText)
        return box

    def _remember(self, key: str, value: str) -> None:
        stored = self.settings.value(key, []) or []
        items = [v for v in ([stored] if isinstance(stored, str) else stored) if v != value]
        self.settings.setValue(key, [value, *items][:10])
        if key == "recentModels":
            self.model_panel.set_recent([value, *items])
        else:
            self.data_panel.set_recent([value, *items])

    def _last_config(self) -> RunConfig | None:
        text = self.settings.value("lastConfig")
        if not text:
            return None
        try:
            return RunConfig.from_yaml(str(text))
        except ConfigError:
            return None  # an old or damaged setting must not keep the app from opening

    def _restore_settings(self) -> None:
        geom = self.settings.value("geometry")
        if geom is None or not self.restoreGeometry(geom):
            self.resize(1440, 900)  # a first start; the first show fits it into the screen (fit.fit_to_screen)
        recent = self.settings.value("recentModels", []) or []
        self.model_panel.set_recent([recent] if isinstance(recent, str) else list(recent))
        recent = self.settings.value("recentDatasets", []) or []
        self.data_panel.set_recent([recent] if isinstance(recent, str) else list(recent))
        self.set_theme(str(self.settings.value("theme", "light")))


class LaunchDialog(QDialog):
    """Nodes, GPUs per node and whether to wrap the command in a SLURM batch header."""

    def __init__(self, parent=None, gpus_per_node: int = 8):
        super().__init__(parent)
        self.setWindowTitle("Export launch script")
        form = QFormLayout(self)
        intro = QLabel("A torchrun command (FSDP2) that runs this config on a cluster; every node needs the same "
                       "environment and the model, data and output folder on a shared filesystem.")
        intro.setWordWrap(True)
        form.addRow(intro)
        self.nodes = QSpinBox()
        self.nodes.setRange(1, 4096)
        self.gpus = QSpinBox()
        self.gpus.setRange(1, 64)
        self.gpus.setValue(gpus_per_node)
        self.slurm = QCheckBox("Write an sbatch script (SLURM picks the nodes)")
        self.slurm.setChecked(True)
        form.addRow("Nodes:", self.nodes)
        form.addRow("GPUs per node:", self.gpus)
        form.addRow(self.slurm)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def values(self) -> tuple[int, int, bool]:
        return self.nodes.value(), self.gpus.value(), self.slurm.isChecked()

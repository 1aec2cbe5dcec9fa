"""DESIGN's rule: arrows point down. core imports neither torch nor Qt; engine never imports Qt;
memory.py and hardware.py import no torch at module level (the GUI plans with them before training)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ftstudio"
QT = ("PySide6", "pyqtgraph", "shiboken6")
HEAVY = ("torch", "transformers", "datasets")


def _imports(path: Path, module_level_only: bool):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_core_and_engine_never_import_qt():
    for layer in ("core", "engine"):
        for path in (PKG / layer).rglob("*.py"):
            bad = set(_imports(path, module_level_only=False)) & set(QT)
            assert not bad, f"{path} imports {bad}"


def test_core_imports_no_heavy_module_at_module_level():
    for path in list((PKG / "core").rglob("*.py")) + [PKG / "engine" / "memory.py", PKG / "engine" / "hardware.py",
                                                      PKG / "engine" / "schedule.py"]:
        if path.exists():
            bad = set(_imports(path, module_level_only=True)) & set(HEAVY)
            assert not bad, f"{path} imports {bad} at module level"


def test_planning_modules_load_without_torch():
    code = ("import sys, json; import ftstudio.core.config, ftstudio.core.events, ftstudio.core.runs, "
            "ftstudio.engine.schedule, ftstudio.engine.memory, ftstudio.engine.hardware; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'datasets', 'PySide6') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

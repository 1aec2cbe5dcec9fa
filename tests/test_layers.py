"""DESIGN's rules for the rooms of the code, checked on the import graph that Python's ``ast`` reads from every
file of the package (imports inside functions included, since a lazy import is still a dependency):

- no import cycle, direct or around a circle;
- nothing imported upward: core ← engine ← cli / gui (and the entry modules above them); gui and cli never
  import each other; core and engine never import Qt;
- no file over 500 lines;
- the planning modules (config, schedule, memory, hardware, the data and models faces) load without torch.

The checks are functions over a graph, so they are tested on small packages built here as well: a test that
could not fail on a deliberate cycle would prove nothing.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ftstudio"
QT = ("PySide6", "pyqtgraph", "shiboken6")
HEAVY = ("torch", "transformers", "datasets")
MAX_LINES = 500


# -- the graph ----------------------------------------------------------------------------------------------
def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under the package folder ``root``."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement reaches (``from a import b`` may name module ``a.b`` or a name in a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's own modules it imports anywhere in its body. A module's own parent packages are
    left out (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``, which is how packages work)."""
    mods = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for name in _imported_names(node, package):
                target = resolve(name) if name.split(".")[0] == root.name else None
                if target and target != m and not m.startswith(target + "."):
                    edges[m].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def layer(module: str) -> int:
    """0 core, 1 engine, 2 the front ends (cli, gui) and what sits above them (entry, selftest, __main__)."""
    room = module.split(".")[1] if "." in module else ""
    return {"core": 0, "engine": 1}.get(room, 2)


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports against the layers: a lower layer importing a higher one, or gui and cli importing each other."""
    bad = []
    for a, targets in edges.items():
        for b in targets:
            ra, rb = (m.split(".")[1] if "." in m else "" for m in (a, b))
            if layer(b) > layer(a) or {ra, rb} == {"gui", "cli"}:
                bad.append((a, b))
    return sorted(bad)


def long_files(root: Path) -> list[tuple[str, int]]:
    out = []
    for p in sorted(root.rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out.append((str(p.relative_to(root.parent)), n))
    return out


# -- the rules, on ftstudio itself ----------------------------------------------------------------------------
def test_no_import_cycles():
    found = cycles(import_graph(PKG))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_is_imported_upward():
    bad = upward(import_graph(PKG))
    assert not bad, "imports against the layers (core ← engine ← cli/gui): " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_no_file_over_500_lines():
    assert not long_files(PKG), long_files(PKG)


def test_the_walk_sees_the_package():
    """Guards the checks against passing vacuously: the graph has the rooms and the lazy imports of today."""
    edges = import_graph(PKG)
    for room in ("data", "models", "memory", "train", "forgetting", "distributed"):
        assert f"ftstudio.engine.{room}" in edges
    # engine.run picks the trainer or the launcher inside its body: a function-level edge.
    assert {"ftstudio.engine.train", "ftstudio.engine.distributed"} <= edges["ftstudio.engine"]
    assert "ftstudio.engine.train.trainer" in edges["ftstudio.engine.distributed.fsdp"] or \
        "ftstudio.engine.train" in edges["ftstudio.engine.distributed.fsdp"]


def _third_party(path: Path, module_level_only: bool):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in (tree.body if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_core_and_engine_never_import_qt():
    for room in ("core", "engine"):
        for path in (PKG / room).rglob("*.py"):
            bad = set(_third_party(path, module_level_only=False)) & set(QT)
            assert not bad, f"{path} imports {bad}"


def test_core_imports_no_heavy_module_at_module_level():
    # The tracer (memory/tracer/: TorchDispatchMode / TorchFunctionMode subclasses) is a subpackage whose face
    # loads no torch; its modules are imported when a plan is traced (checked at run time below).
    planning = list((PKG / "core").rglob("*.py")) + list((PKG / "engine" / "memory").glob("*.py")) + [
        PKG / "engine" / "memory" / "tracer" / "__init__.py",
        PKG / "engine" / "hardware.py", PKG / "engine" / "train" / "schedule.py"]
    for path in planning:
        bad = set(_third_party(path, module_level_only=True)) & set(HEAVY)
        assert not bad, f"{path} imports {bad} at module level"


def test_planning_modules_load_without_torch():
    code = ("import sys, json; import ftstudio.core.config, ftstudio.core.events, ftstudio.core.runs, "
            "ftstudio.engine.train.schedule, ftstudio.engine.memory, ftstudio.engine.memory.tracer, "
            "ftstudio.engine.memory.traced, ftstudio.engine.hardware, "
            "ftstudio.engine.data, ftstudio.engine.models; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'datasets', 'PySide6') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- the checks themselves, on packages made to break them -------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ftstudio"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "engine/__init__.py": "",
        "engine/trainer.py": "from ftstudio.engine.launch import go\n",
        "engine/launch.py": "def go():\n    from ftstudio.engine import distributed\n",
        "engine/distributed.py": "def main():\n    from .trainer import Trainer\n",
    })
    assert cycles(import_graph(root)) == [["ftstudio.engine.distributed", "ftstudio.engine.launch",
                                           "ftstudio.engine.trainer"]]


def test_todays_five_cycles_would_be_found(tmp_path):
    """The five cycles of issue 14, rebuilt in miniature the way they were written (relative, absolute, lazy)."""
    root = _package(tmp_path, {
        "__init__.py": "", "core/__init__.py": "", "engine/__init__.py": "", "gui/__init__.py": "",
        "cli/__init__.py": "def run_gui():\n    from ftstudio.gui.app import main\n",
        "gui/app.py": "def main():\n    from ftstudio.cli import guard\n",
        "engine/memory.py": "from .memory_solve import solve\n",
        "engine/memory_solve.py": "def solve():\n    from .memory import estimate\n",
        "engine/models.py": "def load():\n    from ftstudio.engine.models_load import load\n",
        "engine/models_load.py": "from ftstudio.engine.models import ModelInfo\n",
        "engine/optim.py": "def build():\n    from .speed import InBackward\n",
        "engine/speed.py": "def compile_blocks():\n    from .optim import find_block_list\n",
        "engine/trainer.py": "def train():\n    from ftstudio.engine.launch import run_distributed\n",
        "engine/launch.py": "from ftstudio.engine import trainer\n",
    })
    found = cycles(import_graph(root))
    assert len(found) == 5, found
    assert ["ftstudio.cli", "ftstudio.gui.app"] in found
    assert upward(import_graph(root)) == [("ftstudio.cli", "ftstudio.gui.app"), ("ftstudio.gui.app", "ftstudio.cli")]


def test_upward_imports_and_long_files_are_found(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "core/__init__.py": "", "engine/__init__.py": "", "gui/__init__.py": "",
        "cli/__init__.py": "", "core/config.py": "import ftstudio.engine.hardware\n",
        "engine/hardware.py": "def f():\n    from ftstudio.gui import panel\n",
        "gui/panel.py": "from ftstudio.cli.flags import x\n", "cli/flags.py": "x = 1\n" + "#\n" * MAX_LINES,
    })
    assert upward(import_graph(root)) == [("ftstudio.core.config", "ftstudio.engine.hardware"),
                                          ("ftstudio.engine.hardware", "ftstudio.gui"),
                                          ("ftstudio.engine.hardware", "ftstudio.gui.panel"),
                                          ("ftstudio.gui.panel", "ftstudio.cli.flags")]
    assert long_files(root) == [("ftstudio/cli/flags.py", MAX_LINES + 1)]

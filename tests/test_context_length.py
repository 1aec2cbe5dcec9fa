"""A model's context length is the longest row it takes. RoBERTa-family encoders number their positions after the
padding index, so roberta-base's 514 position embeddings hold 512 tokens: a --seq-len of 514 was accepted and the
first step died with "index 514 is out of bounds" (an internal error), after the run folder was made."""
from __future__ import annotations

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.models.inspect import config_facts, context_length
from ftstudio.engine.models.tensors import shape_from_config

ROBERTA_BASE = {"model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "hidden_size": 768,
                "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50265,
                "max_position_embeddings": 514, "pad_token_id": 1, "position_embedding_type": "absolute"}


@pytest.mark.parametrize("cfg, expected", [
    (ROBERTA_BASE, 512),
    ({**ROBERTA_BASE, "model_type": "xlm-roberta", "vocab_size": 250002}, 512),
    ({**ROBERTA_BASE, "model_type": "camembert", "pad_token_id": 1}, 512),
    ({**ROBERTA_BASE, "model_type": "mpnet", "pad_token_id": 1}, 512),
    ({**ROBERTA_BASE, "model_type": "esm", "max_position_embeddings": 1026, "pad_token_id": 1,
      "position_embedding_type": "rotary"}, 1026),            # ESM-2: rotary, no position table to run past
    ({**ROBERTA_BASE, "model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}, 512),
    ({"model_type": "llama", "max_position_embeddings": 8192, "pad_token_id": 2}, 8192),
])
def test_the_context_is_what_the_position_table_holds(cfg, expected):
    assert context_length(cfg) == expected
    assert config_facts(cfg)["context_length"] == expected


def test_the_planner_caps_at_the_same_context():
    assert shape_from_config(ROBERTA_BASE).context == 512


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from ftstudio.engine.models import demo_model_path

    path = tmp_path_factory.mktemp("tiny-roberta")
    tok = AutoTokenizer.from_pretrained(demo_model_path())
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    torch.manual_seed(0)
    RobertaModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_seq_len_past_the_usable_positions_is_refused_before_the_run(tiny_roberta):
    from ftstudio.engine import check_run

    cfg = RunConfig().replace(source=str(tiny_roberta), seq_len=40)
    with pytest.raises(ConfigError, match=r"context length \(38 positions\); use --seq-len 38 or less"):
        check_run(cfg)
    check_run(cfg.replace(seq_len=38))


def test_the_model_takes_a_full_row_of_its_context_length_and_no_more(tiny_roberta):
    import torch
    from transformers import AutoModel

    from ftstudio.engine.models import describe_model

    ctx = describe_model(str(tiny_roberta)).context_length
    model = AutoModel.from_pretrained(tiny_roberta)
    ids = torch.full((1, ctx), 5)
    assert model(input_ids=ids).last_hidden_state.shape[1] == ctx   # the number said is one the model runs
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=torch.full((1, ctx + 1), 5))

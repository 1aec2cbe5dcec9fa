"""A packed run's data line says what packing made: "4 train examples" from a file of 9 rows read as rows lost
(five of them silently), when they were joined into 4 sequences of seq_len."""
from __future__ import annotations

import json

from ftstudio.core.config import DataConfig
from ftstudio.engine.data import prepare_data


def test_the_summary_counts_rows_and_the_sequences_packed_from_them(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"the party shall pay {i} one two"}) + "\n" for i in range(20)))
    plain = prepare_data(DataConfig(dataset=str(data), seq_len=32, val_fraction=0.0), tok, task="causal-lm", seed=0)
    assert plain.summary().startswith("20 train / 0 validation examples;")
    packed = prepare_data(DataConfig(dataset=str(data), seq_len=32, val_fraction=0.0, packing=True), tok,
                          task="causal-lm", seed=0)
    assert len(packed.train) < 20
    assert packed.summary().startswith(f"{len(packed.train)} train / 0 validation sequences of seq_len packed "
                                       "from 20 / 0 rows;")

"""A DatasetDict saved with save_to_disk (train and test splits) was read as its 'train' split alone, the 'test'
split dropped without a word (a JSON file of splits says which one it read). Now said, with how to use the other
split: its own folder as --val-dataset."""
from __future__ import annotations

import pytest

from ftstudio.core.config import DataConfig
from ftstudio.engine.data import check_data


def test_the_splits_not_read_are_said_and_one_serves_as_val_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": [f"clause {i}" for i in range(10)], "label": ["pay", "notice"] * 5}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict({k: v[:4] for k, v in rows.items()})}
                         ).save_to_disk(str(tmp_path / "dd"))
    report = check_data(DataConfig(dataset=str(tmp_path / "dd"), val_fraction=0.0))
    said = [p for p in report.problems if "DatasetDict" in p.reason]
    assert len(said) == 1 and said[0].severity == "warning" and report.rows == 10
    assert "'train' was read, 'test' not" in said[0].reason and str(tmp_path / "dd" / "test") in said[0].reason
    both = check_data(DataConfig(dataset=str(tmp_path / "dd"), val_dataset=str(tmp_path / "dd" / "test")))
    assert both.ok and both.val_rows == 4

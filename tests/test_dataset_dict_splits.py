"""Datasets saved by the datasets library. A DatasetDict saved with save_to_disk (train and test splits) was read
as its 'train' split alone, the 'test' split dropped without a word (a JSON file of splits says which one it read):
now said, with how to use the other split (its own folder as --val-dataset). ClassLabel ids are read as the class
names the dataset gives them."""
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


def test_classlabel_ids_are_read_as_their_names_from_folders_and_parquet(tmp_path):
    """imdb, sst2, ag_news... keep labels as datasets ClassLabel ids: the classes, the evaluation and the exported
    id2label said "0"/"1" instead of the names the dataset gives them."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["world", "sports", "business"])})
    ds = datasets.Dataset.from_dict({"text": [f"story {i}" for i in range(12)], "label": [i % 3 for i in range(12)]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "folder"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    for source in (tmp_path / "folder", tmp_path / "d.parquet"):
        report = check_data(DataConfig(dataset=str(source), val_fraction=0.0))
        assert report.ok and report.label_counts == {"world": 4, "sports": 4, "business": 4}, source
        assert any("read as the dataset's class names (world, sports, business)" in p.reason
                   for p in report.problems)
    import pandas as pd
    pd.DataFrame({"text": [f"story {i}" for i in range(12)], "label": [i % 3 for i in range(12)]}).to_parquet(
        tmp_path / "plain.parquet")   # no datasets features: the ids are the classes
    report = check_data(DataConfig(dataset=str(tmp_path / "plain.parquet"), val_fraction=0.0))
    assert set(report.label_counts) == {"0", "1", "2"}


def test_classlabel_names_keep_the_datasets_ids(tmp_path):
    """Read as names, the classes keep the ids the dataset gives them (not the names' sorted order): a head
    trained on this dataset's ids by someone else (LABEL_0, LABEL_1) still means the same class."""
    datasets = pytest.importorskip("datasets")
    from ftstudio.engine.data.prepare import build_rows

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})
    datasets.Dataset.from_dict({"text": [f"review {i}" for i in range(10)], "label": [i % 2 for i in range(10)]},
                               features=features).save_to_disk(str(tmp_path / "folder"))
    built = build_rows(DataConfig(dataset=str(tmp_path / "folder"), val_fraction=0.0), "classification", 0)
    assert built.label_names == ["pos", "neg"]

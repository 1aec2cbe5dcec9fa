import dataclasses

import pytest

from ftstudio.core.config import SECTIONS, LEAF_TO_SECTION, RunConfig, field_docs, leaf_doc
from ftstudio.core.errors import ConfigError


def test_every_field_has_a_docstring():
    for name, cls in list(SECTIONS.items()) + [("run", RunConfig)]:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert len(docs.get(f.name, "")) > 15, f"{name}.{f.name} has no docstring"


def test_defaults_are_valid_and_round_trip_through_yaml():
    cfg = RunConfig()
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    changed = cfg.replace(lr=1e-5, max_steps=10, gpus=[0, 1], text_column="body", packing=True)
    again = RunConfig.from_yaml(changed.to_yaml())
    assert again == changed and again.optim.lr == 1e-5 and again.hardware.gpus == [0, 1]


def test_yaml_keys_are_snake_case_leaves_matching_cli_flags():
    text = RunConfig().to_yaml()
    for leaf in ("max_steps", "batch_size", "lr", "seq_len", "warmup_ratio", "checkpoint_every", "val_fraction"):
        assert f"  {leaf}:" in text
    assert leaf_doc("lr").startswith("Peak learning rate")


@pytest.mark.parametrize("leaf,value,field", [
    ("lr", 0.0, "optim.lr"), ("lr", -1.0, "optim.lr"), ("lr", float("nan"), "optim.lr"),
    ("batch_size", 0, "train.batch_size"), ("batch_size", 2.5, "train.batch_size"),
    ("batch_size", "8", "train.batch_size"), ("schedule", "step", "schedule.schedule"),
    ("precision", "fp8", "hardware.precision"), ("optimizer", "adam", "optim.optimizer"),
    ("val_fraction", 1.5, "data.val_fraction"), ("seq_len", 0, "data.seq_len"),
    ("warmup_ratio", 2.0, "schedule.warmup_ratio"), ("device", "tpu", "hardware.device"),
    ("gpus", [0, 0], "hardware.gpus"), ("gpus", ["a"], "hardware.gpus"), ("task", "seq2seq", "model.task"),
    ("format", "xml", "data.format"), ("loss", "fused", "memory.loss"), ("nonfinite", "ignore", "train.nonfinite"),
    ("layer_lr_decay", 0.5, "optim.layer_lr_decay"), ("mix_fraction", 0.95, "regularize.mix_fraction"),
    ("epochs", 0, "train.epochs"), ("grad_clip", -1.0, "optim.grad_clip"), ("keep_last", 0, "checkpoint.keep_last"),
])
def test_invalid_values_name_the_field(leaf, value, field):
    with pytest.raises(ConfigError) as info:
        RunConfig().replace(**{leaf: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_choice_errors_list_allowed_values():
    with pytest.raises(ConfigError, match="cosine, constant, linear"):
        RunConfig().replace(schedule="step")


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        RunConfig().replace(optimizer_in_backward=True, grad_accum=4)
    with pytest.raises(ConfigError, match="offload_activations"):
        RunConfig().replace(offload_activations=True)


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  batch_size: 4\n  lr: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        RunConfig.load(p)
    assert info.value.line is not None and str(p) in str(info.value) and "line" in str(info.value)


def test_unknown_keys_are_rejected_with_the_allowed_ones():
    with pytest.raises(ConfigError, match="train.batchsize"):
        RunConfig.from_yaml("train:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="allowed: model, data"):
        RunConfig.from_yaml("trainer:\n  lr: 1\n")


def test_invalid_value_in_yaml_names_file_and_field(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("optim:\n  lr: -3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        RunConfig.load(p)
    assert "optim.lr" in str(info.value) and str(p) in str(info.value)


def test_leaf_names_are_unique():
    total = sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert len(LEAF_TO_SECTION) == total


def test_a_run_written_before_group_by_length_resumes_in_its_own_order(tmp_path):
    from ftstudio.core.config import RunConfig

    saved = RunConfig().to_dict()
    del saved["data"]["group_by_length"]                # a config.yaml from before the field
    import yaml
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert RunConfig.load(tmp_path / "config.yaml").data.group_by_length is True      # a new config: the default
    assert RunConfig.load_run(tmp_path / "config.yaml").data.group_by_length is False  # that run's own order
    (tmp_path / "config.yaml").write_text(RunConfig().to_yaml() if hasattr(RunConfig, "to_yaml") else
                                          yaml.safe_dump(RunConfig().to_dict()))
    assert RunConfig.load_run(tmp_path / "config.yaml").data.group_by_length is True   # a run that had it

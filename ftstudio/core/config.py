"""RunConfig: every choice of a run, as nested dataclasses that round-trip through YAML.

Each field carries a docstring right under it; :func:`field_docs` reads them (they become the GUI's
tooltips and the CLI's help), and a test checks that none is missing. Leaf names are unique across
sections and equal the CLI flags (``--max-steps`` ⇄ ``train.max_steps``), so the YAML, the CLI and
the GUI form never drift apart.

Pure Python: importing this module imports neither torch nor Qt.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .sections import (  # noqa: F401  (the sections and choices are part of this module's face)
    TASKS, FORMATS, SCHEDULES, PRECISIONS, OPTIMIZERS, BF16_ROUNDINGS, LOSSES, NONFINITE_POLICIES, ANCHOR_PLACES,
    ATTENTIONS, FIELD_CHOICES, SECTIONS, ModelConfig, DataConfig, TrainConfig, OptimConfig, ScheduleConfig,
    MemoryConfig, RegularizeConfig, EvalConfig, CheckpointConfig, HardwareConfig,
)


# Fields whose default changed what a run does, with the value a run written before them had: a resumed run
# continues in its own order (group_by_length reorders the rows of an epoch).
RUN_FIELDS_SINCE = {("data", "group_by_length"): False}


def check_method_format(method: str, fmt: str | None) -> None:
    """train.method against the data's format, refused by name; the trainer calls it before the run folder is
    made (a mismatch writes nothing), the plan before it counts anything."""
    preference = fmt == "preference"
    if method == "sft" and preference:
        raise ConfigError("train.method", "the data are preference pairs (prompt / chosen / rejected); train "
                          "them with --method dpo or --method simpo, or give SFT rows")
    if method != "sft" and not preference:
        raise ConfigError("train.method", f"{method} needs preference data (rows with prompt, chosen and rejected); "
                          f"the data format is {fmt!r}")


def _check_preference_run(cfg) -> None:
    """What train.method dpo / simpo cannot be combined with, refused up front by name."""
    method = cfg.train.method
    if cfg.model.task == "classification":
        raise ConfigError("train.method", f"{method} trains a causal LM on preference pairs; this run's task is "
                          "classification")
    if cfg.data.format not in ("auto", "preference"):
        raise ConfigError("data.format", f"train.method {method} needs preference data (prompt / chosen / rejected); "
                          f"{cfg.data.format!r} rows have no rejected answer")
    if cfg.data.packing:
        raise ConfigError("data.packing", f"train.method {method} scores each answer as its own padded row; "
                          "turn packing off")
    if cfg.regularize.mix_fraction:
        raise ConfigError("regularize.mix_fraction", f"general-text mixing adds next-token rows, which "
                          f"train.method {method} has no loss for; use l2sp or ewc against forgetting instead")
    if len(cfg.hardware.gpus) > 1:
        raise ConfigError("train.method", f"{method} runs on one device for now; several GPUs (FSDP2) train sft only")
    if cfg.eval.metric == "macro_f1":
        raise ConfigError("eval.metric", "macro_f1 is for classifiers; a preference run is judged by its "
                          "validation loss or preference accuracy")


@dataclass
class RunConfig:
    """Everything that defines a run. ``RunConfig()`` is the bundled demo on the CPU."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which pre-trained model to start from (θ0) and what task to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """The fine-tuning dataset and how rows become tokens."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Length of training, batch sizes, seed and the output folder."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer and its learning rate."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """How the learning rate changes over the run."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """Trades of speed for memory: checkpointing, chunked loss, compile."""
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    """Remedies against catastrophic forgetting: L2-SP, EWC, data mixing, retention evaluation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """When and how much to evaluate."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints and the final export."""
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    """Device(s) and numerical precision."""

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"must be a {cls.__name__}")
        if self.memory.optimizer_in_backward and self.train.grad_accum > 1:
            raise ConfigError("memory.optimizer_in_backward",
                              "cannot be combined with train.grad_accum > 1 (gradients are freed as they arrive)")
        if self.memory.offload_activations and not self.memory.activation_checkpointing:
            raise ConfigError("memory.offload_activations", "needs memory.activation_checkpointing on")
        if self.memory.checkpoint_blocks and not self.memory.activation_checkpointing:
            raise ConfigError("memory.checkpoint_blocks", "needs memory.activation_checkpointing on")
        if self.memory.checkpoint_blocks and self.memory.offload_activations:
            raise ConfigError("memory.checkpoint_blocks", "with offload_activations every block's saved tensors would "
                              "go to host memory; set checkpoint_blocks 0 or offload_activations off")
        if self.checkpoint.export_best and len(self.hardware.gpus) > 1:
            raise ConfigError("checkpoint.export_best", "keeps the best weights of one device; it is not "
                              "available for a multi-GPU (FSDP2) run yet")
        preference = self.train.method != "sft"
        if self.eval.metric != "loss" and self.model.task == "causal-lm" and not (
                preference and self.eval.metric == "accuracy"):
            raise ConfigError("eval.metric", f"{self.eval.metric!r} is for classifiers; a causal LM is judged "
                              "by its validation loss (or, with train.method dpo/simpo, its preference accuracy)")
        if preference:
            _check_preference_run(self)

    # -- dict / YAML ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None, *, file: str | None = None) -> "RunConfig":
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError("<top>", "a run config must be a mapping of sections", file=file)
        sections = {}
        for key, value in data.items():
            if key not in SECTIONS:
                raise ConfigError(str(key), f"unknown section; allowed: {', '.join(SECTIONS)}", file=file)
            section_cls = SECTIONS[key]
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(key, "must be a mapping of fields", file=file)
            known = {f.name for f in dataclasses.fields(section_cls)}
            for k in value:
                if not isinstance(k, str) or k not in known:
                    home = LEAF_TO_SECTION.get(k) if isinstance(k, str) else None
                    where = f"; {k} belongs in the {home} section" if home else ""
                    raise ConfigError(f"{key}.{k}", f"unknown field{where}; allowed: {', '.join(sorted(known))}",
                                      file=file)
            try:
                sections[key] = section_cls(**value)
            except ConfigError as e:
                e.file = file
                raise ConfigError(e.field, e.message, file=file) from None
        return cls(**sections)

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from .atomic import atomic_write_text   # a reader (a resume, the GUI) never sees half a config
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_yaml(cls, text: str, *, file: str | None = None) -> "RunConfig":
        import yaml
        loader = _strict_loader()(text)
        try:
            root = loader.get_single_node()
            if root is not None and _expanded_size(root) > MAX_YAML_VALUES:
                raise ConfigError("<yaml>", f"the YAML expands to more than {MAX_YAML_VALUES:,} values (aliases "
                                            "repeating aliases); a run config is a few dozen fields", file=file)
            data = loader.construct_document(root) if root is not None else None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ConfigError("<yaml>", f"invalid YAML: {problem}", line=line, file=file) from None
        except RecursionError:
            raise ConfigError("<yaml>", "invalid YAML: nested too deeply to read", file=file) from None
        finally:
            loader.dispose()
        try:
            return cls.from_dict(data, file=file)
        except ConfigError as e:  # name the line of the section or field at fault
            line = _key_lines(root).get(tuple(e.field.split(".")[:2]))
            raise ConfigError(e.field, e.message, line=line or e.line, file=file) from None

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("<file>", "config file not found", file=str(p)) from None
        except IsADirectoryError:
            raise ConfigError("<file>", "this is a folder; give the config's .yaml file", file=str(p)) from None
        except UnicodeDecodeError:
            raise ConfigError("<file>", "config file is not UTF-8 text", file=str(p)) from None
        except OSError as e:
            raise ConfigError("<file>", f"cannot read the config file: {e.strerror or e}", file=str(p)) from None
        if len(text) > MAX_YAML_CHARS:
            raise ConfigError("<file>", f"config file is {len(text):,} characters; a run config is a few KB (at most "
                                        f"{MAX_YAML_CHARS:,})", file=str(p))
        if "\x00" in text:
            raise ConfigError("<file>", "config file is binary (it holds NUL bytes), not YAML text", file=str(p))
        return cls.from_yaml(text, file=str(p))

    @classmethod
    def load_run(cls, path: str | Path) -> "RunConfig":
        """A run folder's own config.yaml, as that run trained: a field added since it was written, whose
        default would change how the run goes on, takes the behaviour the run had (RUN_FIELDS_SINCE)."""
        import yaml

        cfg = cls.load(path)
        saved = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        old = {leaf: before for (section, leaf), before in RUN_FIELDS_SINCE.items()
               if leaf not in (saved.get(section) or {})}
        return cfg.replace(**old) if old else cfg

    # -- flat access by leaf name (CLI flags, GUI form) ---------------------------------------
    def get(self, leaf: str) -> Any:
        section = LEAF_TO_SECTION[leaf]
        return getattr(getattr(self, section), leaf)

    def replace(self, **leaves: Any) -> "RunConfig":
        """A copy with the given leaf fields changed (by leaf name, e.g. ``lr=1e-5``); validated."""
        d = self.to_dict()
        for leaf, value in leaves.items():
            if leaf not in LEAF_TO_SECTION:
                raise ConfigError(leaf, "unknown field")
            d[LEAF_TO_SECTION[leaf]][leaf] = value
        return RunConfig.from_dict(d)


MAX_YAML_CHARS = 1_000_000     # a run config is a few KB; the GUI's saved ones are under 4 KB
MAX_YAML_VALUES = 100_000      # nodes once every alias is expanded: an alias bomb of 1 KB expands to billions


def safe_load_bounded(text: str):
    """``yaml.safe_load`` for a file that may be hostile (a run folder's config.yaml listed in the Runs tab):
    None when it is larger than a config or its aliases expand past MAX_YAML_VALUES."""
    import yaml

    if len(text) > MAX_YAML_CHARS:
        return None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None or _expanded_size(root) > MAX_YAML_VALUES:
            return None
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _expanded_size(root) -> int:
    """How many nodes ``root`` holds with every alias expanded, counted on the composed graph (shared nodes are
    counted once per use without being copied), so an alias bomb is refused before it is built."""
    import yaml

    memo: dict[int, int] = {}

    def size(node, depth=0) -> int:
        if id(node) in memo:
            return memo[id(node)]
        if depth > 200:      # deeper than any config: PyYAML would recurse past Python's limit building it
            return MAX_YAML_VALUES + 1
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        memo[id(node)] = n = min(n, MAX_YAML_VALUES + 1)
        return n
    return size(root)


@functools.lru_cache(maxsize=1)
def _strict_loader():
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error naming both lines (PyYAML
    keeps the last one silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # "<<: *anchor" merges are SafeLoader's to flatten
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # SafeLoader reports unhashable keys itself
                    line = key_node.start_mark.line + 1
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first given at line {first[key]}); keep one",
                            key_node.start_mark)
                    first.setdefault(key, line)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _key_lines(root) -> dict[tuple, int]:
    """(section,) and (section, field) → the 1-based line where the YAML gives it."""
    import yaml

    out: dict[tuple, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        out.setdefault((str(key.value),), key.start_mark.line + 1)
        if isinstance(value, yaml.MappingNode):
            for k2, _ in value.value:
                out.setdefault((str(key.value), str(k2.value)), k2.start_mark.line + 1)
    return out


def _leaf_map() -> dict[str, str]:
    out: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in out, f"leaf name {f.name} is not unique"
            out[f.name] = section
    return out


LEAF_TO_SECTION: dict[str, str] = _leaf_map()


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass, read from the source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # frozen bundle without sources
        return {}
    import textwrap
    tree = ast.parse(textwrap.dedent(source))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def leaf_doc(leaf: str) -> str:
    """The docstring of a leaf field by its name (``"lr"``), or an empty string."""
    section = LEAF_TO_SECTION.get(leaf)
    return field_docs(SECTIONS[section]).get(leaf, "") if section else ""


# -- CLI flags: every leaf field is a flag of its own name (cli/flags.py builds the parser from them) -----------
FLAG_NAMES = {"source": "model"}  # leaf fields whose flag reads better under another name


def flag_name(field_name: str) -> str:
    """``--max-steps`` for ``max_steps``; ``--model`` for ``source``."""
    return "--" + FLAG_NAMES.get(field_name, field_name).replace("_", "-")


def config_to_flags(cfg: RunConfig) -> list[str]:
    """The flags that turn the default config into ``cfg``: the GUI's "copy CLI command"."""
    default = RunConfig().to_dict()
    out: list[str] = []
    for section, fields in cfg.to_dict().items():
        for name, value in fields.items():
            if value == default[section][name]:
                continue
            flag = flag_name(name)
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + flag[2:])
            elif name == "gpus":
                out += [flag, ",".join(map(str, value))]
            else:
                out += [flag, "none" if value is None else str(value)]
    return out

"""CLI flags generated from RunConfig: every leaf field is a flag of the same name (``--max-steps`` ⇄
``train.max_steps``), with its docstring as help. Flags override the YAML."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ftstudio.core.config import SECTIONS, RunConfig, field_docs, flag_name

CHOICES = {}


def _choices() -> dict[str, tuple]:
    from ftstudio.core.config import FIELD_CHOICES
    return FIELD_CHOICES


def _parse_gpus(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU indices such as 0,1") from None


LIMIT = 10 ** 12   # no count, size or rate FT Studio takes comes near it; beyond it only overflow waits


def bounded(kind, lo: float | None = None, hi: float | None = LIMIT, *, lo_open: bool = False):
    """An argparse type: ``kind`` (int or float) that is finite and within [lo, hi] (lo excluded when ``lo_open``),
    refused as one line otherwise: no flag reaches the engine as inf, nan or a number that overflows."""
    import math

    def parse(text: str):
        value = kind(text)   # a ValueError: argparse's own "invalid int value: '1.5'"
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        if below or (hi is not None and value > hi):
            low = f"{'more than' if lo_open else 'at least'} {lo:g}" if lo is not None else ""
            high = f"at most {hi:g}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} must be {' and '.join(x for x in (low, high) if x)}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Every RunConfig leaf as a flag (``skip``: leaf names the verb defines itself)."""
    choices = _choices()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag = flag_name(f.name)
            hint = hints[f.name]
            args = typing.get_args(hint)
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            kw: dict = {"dest": f"cfg_{f.name}", "default": None, "help": docs.get(f.name, "").replace("%", "%%")}
            if hint is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif f.name == "gpus":
                kw["type"] = _parse_gpus
                kw["metavar"] = "0,1"
            else:
                kind = {int: bounded(int, -LIMIT), float: bounded(float, -LIMIT), str: str}.get(base, str)
                kw["type"] = _optional(kind) if type(None) in args else kind
                if f.name in choices:
                    kw["choices"] = choices[f.name]
            group.add_argument(flag, **kw)


def apply_config_flags(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    changes = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    return cfg.replace(**changes) if changes else cfg

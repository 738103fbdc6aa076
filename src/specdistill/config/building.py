"""Dataclasses from (nested) dicts: every value checked against its field's type, unknown and renamed keys
refused with the closest valid key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

from .schema import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (int -> float, dict -> dataclass)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not allowed; give a finite number")
    if tp is int and abs(value) >= 2**63:
        raise ConfigError(f"{where}: {value} is too large; allowed: a 64-bit integer")
    return value


# Keys that were renamed, because `top_k` meant four things: old key -> (new key, what it is).
RENAMED = {
    "rollout.top_k": ("rollout.skd_top_k", "the K of the SKD top-K policy"),
    "rollout.min_prob": ("rollout.skd_min_prob", "the teacher probability an SKD draft needs"),
    "loss.top_k": ("loss.sparse_top_k", "the teacher's top-k logits of sparse KD"),
}


def build(cls: type, data: dict, where: str = "") -> Any:
    """Make dataclass `cls` from a (nested) dict; unknown keys are errors that suggest the closest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if path in RENAMED:
            new, meaning = RENAMED[path]
            raise ConfigError(f"config key {path!r} was renamed: use {new!r} ({meaning})")
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = convert(value, hints[key], path)
    return cls(**kwargs)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)

"""Validation shared by configs, methods and search spaces: typed conversion of plain
mappings into frozen dataclasses, and range / choice checks.

Every error is a :class:`~autoprune.errors.ConfigError` naming the dotted key. This module
depends on nothing else of autoprune (but ``errors``), so that the dependencies run one
way: ``config`` -> the methods registry -> ``validation``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from autoprune.errors import ConfigError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys, missing keys and wrong types
    are :class:`ConfigError` naming the dotted key."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"unknown key '{prefix}{key}'{also}; allowed: {', '.join(sorted(fields))}"
            )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{prefix}{name}'")
    return cls(**kwargs)


def convert(tp: Any, value: Any, key: str) -> Any:
    """Check (and lightly coerce: int -> float) ``value`` against type ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        check_choice(key, value, list(get_args(tp)))
        return value
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {_kind(value)}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {_kind(value)}")
        (item,) = get_args(tp)[:1] or (Any,)
        return tuple(convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)  # type: ignore[arg-type]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got a boolean")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {_kind(value)} {value!r}")
    return value


def check_choice(key: str, value: Any, allowed: list[Any]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3)
        also = f"; did you mean {', '.join(hint)}?" if hint else ""
        shown = ", ".join(map(str, allowed[:12])) + (", ..." if len(allowed) > 12 else "")
        raise ConfigError(f"unknown {key} {value!r}{also} (allowed: {shown})")


def check_range(
    key: str, value: float, low: float, high: float, low_open: bool = False
) -> None:
    bad_low = value <= low if low_open else value < low
    if bad_low or value > high:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key} must be in {bracket}{low}, {high}], got {value}")


def _kind(value: Any) -> str:
    return type(value).__name__


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


__all__ = ["ConfigError", "check_choice", "check_range", "convert", "from_mapping"]

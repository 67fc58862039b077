"""Flat trial configs (as Ray Tune and Optuna keep them) and nested train configs.

A trial's config is flat: ``method`` plus ``<method>.<param>`` for that method's
parameters and ``training.<key>`` / ``dataset.<key>`` for searched recipe keys.
:func:`train_config_dict` merges it into a space's fixed part; :func:`flatten` goes the
other way for MLflow params. No dependency on the rest of ``search``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from autoprune.errors import ConfigError

SHARED_SECTIONS = ("training", "dataset")
RESERVED = "_"
"""Keys of a trial config that start with this are the search's bookkeeping (e.g.
``_proxy_run_id`` of a replayed schedule), not part of the schedule."""


def train_config_dict(fixed: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested train config: the space's fixed part updated with one trial's flat config."""
    config = copy.deepcopy(dict(fixed))
    if "method" not in flat:
        raise ConfigError("a trial config needs a 'method'")
    method = str(flat["method"])
    params: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if key == "method" or key.startswith(RESERVED):
            continue
        if head == method and tail:
            params[tail] = value
        elif head in SHARED_SECTIONS and tail:
            section = config.get(head) or {}
            config[head] = {**section, tail: value}
        else:
            raise ConfigError(f"trial config key {key!r} belongs to no section or method")
    config["method"] = method
    config["method_params"] = params
    return config


def schedule_key(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable identity of a trial's schedule (floats by repr: exact duplicates only;
    the search's bookkeeping keys are left out)."""
    return tuple(sorted((str(k), repr(v)) for k, v in config.items()
                        if not str(k).startswith(RESERVED)))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


__all__ = ["RESERVED", "SHARED_SECTIONS", "flatten", "schedule_key", "train_config_dict"]

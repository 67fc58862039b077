"""Optuna samplers by name, seedable, with options validated against their constructors."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

_CLASSES: dict[str, str] = {
    "nsga2": "NSGAIISampler",
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "gp": "GPSampler",
    "nsga3": "NSGAIIISampler",
}
# Options that take Python objects, not values a YAML file can hold.
_NOT_FROM_YAML = {"seed", "constraints_func", "mutation", "crossover", "reference_points",
                  "independent_sampler", "elite_population_selection_strategy",
                  "child_generation_strategy", "after_trial_strategy", "weights", "gamma"}


def sampler_class(name: str) -> type[BaseSampler]:
    import optuna

    return getattr(optuna.samplers, _CLASSES[name])


def allowed_options(name: str) -> list[str]:
    """Constructor keywords a space file may set for sampler ``name``."""
    params = inspect.signature(sampler_class(name)).parameters
    return sorted(p for p in params if p not in _NOT_FROM_YAML)


def build_sampler(
    name: str, options: Mapping[str, Mapping[str, Any]], seed: int | None, n_objectives: int
) -> BaseSampler:
    """The Optuna sampler ``name`` with its ``options[name]`` and ``seed``.

    ConfigError names ``sampler_options.<name>.<key>`` for an unknown or invalid option.
    """
    import warnings

    import optuna

    key = f"sampler_options.{name}"
    opts = dict(options.get(name) or {})
    if not isinstance(options.get(name) or {}, Mapping):
        raise ConfigError(f"{key} must be a mapping of option: value")
    allowed = allowed_options(name)
    for opt in opts:
        if opt not in allowed:
            raise ConfigError(f"unknown option '{key}.{opt}'; allowed: {', '.join(allowed)}")
    if name == "nsga3" and n_objectives < 2:
        raise ConfigError("sampler nsga3 needs at least two objectives")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            cls: Any = sampler_class(name)
            return cls(seed=seed, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


__all__ = ["allowed_options", "build_sampler", "sampler_class"]

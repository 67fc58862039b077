"""Checks of a parsed search space that need more than its types: the settings
(objectives, sampler, budget, resources) and every method's corners as train configs.

Both run at parse time (:func:`~autoprune.search.space.parse_space`), so that a space
that cannot run fails in one line before Ray starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from autoprune.config import check_choice, parse_train_config
from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from autoprune.search.space import SearchSpace

OBJECTIVES: dict[str, str] = {
    "accuracy": "max", "macs": "min", "params": "min", "train_flops": "min", "latency_ms": "min",
}
"""Every objective a search can optimise, with its direction."""

SAMPLERS: tuple[str, ...] = ("nsga2", "tpe", "random", "gp", "nsga3")


def validate_settings(space: SearchSpace) -> None:
    """Check the search settings (objectives, sampler, budget, resources)."""
    if not space.objectives:
        raise ConfigError("objectives must name at least one objective")
    for i, name in enumerate(space.objectives):
        with named(f"objectives[{i}]"):
            check_choice("objective", name, list(OBJECTIVES))
    if len(set(space.objectives)) != len(space.objectives):
        raise ConfigError(f"objectives has duplicates: {list(space.objectives)}")
    check_choice("sampler", space.sampler, list(SAMPLERS))
    for name in space.sampler_options:
        with named(f"sampler_options.{name}"):
            check_choice("sampler", name, list(SAMPLERS))
    if space.num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {space.num_samples}")
    if space.resources.cpu <= 0 or space.resources.gpu < 0:
        raise ConfigError("resources.cpu must be > 0 and resources.gpu >= 0")
    if space.resources.workers < 1:
        raise ConfigError(f"resources.workers must be at least 1, got {space.resources.workers}")
    if space.resources.worker_cpu <= 0 or space.resources.worker_gpu < 0:
        raise ConfigError("resources.cpu_per_worker must be > 0 and resources.gpu_per_worker "
                          ">= 0")
    if space.max_concurrent is not None and space.max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be at least 1, got {space.max_concurrent}")
    if space.max_failures < 0:
        raise ConfigError(f"max_failures must be >= 0, got {space.max_failures}")
    space.scheduler.validate(space.epochs)
    space.fidelity.validate(space.epochs, space.train_subset)
    searched = {s.name for s in space.shared}
    if space.fidelity.enabled and space.scheduler.enabled:
        raise ConfigError("fidelity (a two-stage search) and scheduler moasha cannot be "
                          "combined: choose one (--full-fidelity drops the fidelity block)")
    if space.fidelity.enabled and searched & {"training.epochs", "training.schedule_epochs",
                                              "dataset.train_subset"}:
        raise ConfigError("fidelity: a proxy budget needs a fixed training.epochs and "
                          "dataset.train_subset (one is searched here)")
    dataset = space.fixed.get("dataset") or {}
    if isinstance(dataset, dict) and dataset.get("val_fraction") == 0:
        raise ConfigError("fixed.dataset.val_fraction: a search chooses on validation "
                          "accuracy, so it needs a validation split (> 0)")
    if space.scheduler.enabled and searched & {"training.epochs", "training.schedule_epochs"}:
        raise ConfigError("scheduler: multi-fidelity rungs need a fixed training.epochs "
                          "(it is searched here)")
    from autoprune.search.samplers import build_sampler

    for name in space.sampler_options:
        build_sampler(name, space.sampler_options, space.seed, len(space.objectives))


def check_corners(space: SearchSpace) -> None:
    """Every method's low and high corner must be a valid train config (fail before Ray)."""
    from autoprune.search.flat import train_config_dict

    with named("fixed"):
        parse_train_config({**space.fixed, "method": "dense"})
    for method, specs in space.methods.items():
        for high in (False, True):
            flat = {s.name: s.corner(high) for s in (*space.shared, *specs)}
            flat["method"] = method
            try:
                parse_train_config(train_config_dict(space.fixed, flat))
            except ConfigError as exc:
                end = "high" if high else "low"
                raise ConfigError(
                    f"searched.methods.{method}: at the {end} end of every range: {exc}"
                ) from None


@contextmanager
def named(key: str) -> Iterator[None]:
    """Prefix a ConfigError raised inside the block with the space file's key."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


__all__ = ["OBJECTIVES", "SAMPLERS", "check_corners", "named", "validate_settings"]

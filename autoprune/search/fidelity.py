"""Multi-fidelity settings of a search: the two-stage search, or a TrialScheduler.

``fidelity: {proxy: {epochs: 3, train_subset: 1000}, replay: front}`` in a space file runs
a *two-stage* search (:class:`TwoStage`): stage 1 is the sampler's whole search with every
trial at the proxy budget; stage 2 retrains the proxy front (or, with ``replay: {top: K}``,
the K best by non-dominated rank then crowding distance) at the space's full budget, and
only those full-fidelity runs form the front.

``scheduler: {name: moasha, min_epochs: 2, reduction_factor: 3}`` in a space file (or
``--scheduler moasha``) runs every trial as a sequence of *rungs*: complete trainings of
the same schedule compressed to ``min_epochs``, ``min_epochs * eta``, ... and finally the
space's ``training.epochs`` (full fidelity). After each lower rung the TrialScheduler
(:mod:`autoprune.search.moasha`) keeps the trial going only if it is in the top
``1 / reduction_factor`` of that rung by non-dominated sorting on the search objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from autoprune.errors import ConfigError

SCHEDULERS = ("none", "moasha")


@dataclass(frozen=True)
class SchedulerSettings:
    """The ``scheduler`` block of a space file. ``min_epochs`` 0 means: chosen from the
    epochs (``epochs / reduction_factor**2``, at least 1: three rungs where they fit)."""

    name: Literal["none", "moasha"] = "none"
    min_epochs: int = 0
    reduction_factor: float = 3.0

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def validate(self, epochs: int) -> None:
        if self.name not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler.name {self.name!r} (allowed: none, moasha)")
        if not self.reduction_factor > 1:
            raise ConfigError(f"scheduler.reduction_factor must be greater than 1, got "
                              f"{self.reduction_factor}")
        if self.min_epochs < 0:
            raise ConfigError(f"scheduler.min_epochs must be at least 1, got {self.min_epochs}")
        if self.enabled and self.resolved_min(epochs) >= epochs:
            raise ConfigError(f"scheduler.min_epochs ({self.resolved_min(epochs)}) must be "
                              f"below training.epochs ({epochs}): a rung is shorter than "
                              "a full trial")

    def resolved_min(self, epochs: int) -> int:
        return self.min_epochs or max(1, round(epochs / self.reduction_factor**2))

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """Epochs of each rung, the last being full fidelity (``(epochs,)`` without one):
        ``min_epochs * reduction_factor**k`` below ``epochs``, then ``epochs``. A lower
        rung within a factor ``sqrt(reduction_factor)`` of the full budget is dropped: it
        would cost almost a full trial and tell little more (12 epochs, min 3, factor 3:
        rungs 3 and 12, not 3, 9 and 12)."""
        if not self.enabled:
            return (epochs,)
        levels: list[int] = []
        level = float(self.resolved_min(epochs))
        while round(level) < epochs:
            if not levels or round(level) > levels[-1]:
                levels.append(round(level))
            level *= self.reduction_factor
        if len(levels) > 1 and epochs / levels[-1] < self.reduction_factor ** 0.5:
            levels.pop()
        return (*levels, epochs)


@dataclass(frozen=True)
class TwoStage:
    """The ``fidelity`` block of a space file (disabled when no proxy budget is set).

    ``replay``: ``"front"`` (every non-dominated proxy trial) or ``K`` (the K best by
    non-dominated rank, then crowding distance)."""

    proxy_epochs: int | None = None
    proxy_train_subset: int | None = None
    replay: str | int = "front"

    @property
    def enabled(self) -> bool:
        return self.proxy_epochs is not None or self.proxy_train_subset is not None

    @property
    def proxy(self) -> dict[str, int | None]:
        return {"epochs": self.proxy_epochs, "train_subset": self.proxy_train_subset}

    def validate(self, epochs: int, train_subset: int | None) -> None:
        if not self.enabled:
            return
        if self.proxy_epochs is not None and not 1 <= self.proxy_epochs <= epochs:
            raise ConfigError(f"fidelity.proxy.epochs must be in [1, training.epochs={epochs}], "
                              f"got {self.proxy_epochs}")
        if self.proxy_train_subset is not None:
            if self.proxy_train_subset < 1:
                raise ConfigError("fidelity.proxy.train_subset must be at least 1")
            if train_subset is not None and self.proxy_train_subset > train_subset:
                raise ConfigError(f"fidelity.proxy.train_subset ({self.proxy_train_subset}) "
                                  f"must not exceed dataset.train_subset ({train_subset})")
        fewer_images = self.proxy_train_subset is not None and (
            train_subset is None or self.proxy_train_subset < train_subset)
        cheaper = (self.proxy_epochs or epochs) < epochs or fewer_images
        if not cheaper:
            raise ConfigError("fidelity.proxy must be cheaper than a full trial (fewer epochs "
                              "than training.epochs, or a smaller train_subset)")
        if isinstance(self.replay, int) and self.replay < 1:
            raise ConfigError(f"fidelity.replay.top must be at least 1, got {self.replay}")

    def describe(self) -> str:
        parts = [f"{self.proxy_epochs} epochs" if self.proxy_epochs else "",
                 f"{self.proxy_train_subset} training images" if self.proxy_train_subset
                 else ""]
        replay = "its front" if self.replay == "front" else f"its top {self.replay}"
        return f"proxy at {' on '.join(p for p in parts if p)}, then {replay} at full fidelity"

    def settings(self) -> list[Any]:
        return [self.proxy_epochs, self.proxy_train_subset, self.replay]


def override_two_stage(two: TwoStage, proxy_epochs: int | None = None,
                       proxy_train_subset: int | None = None, replay: Any = None,
                       full_fidelity: bool = False) -> TwoStage:
    """A space's two-stage settings with the command line's (or the API's) overrides;
    ``full_fidelity`` drops them (every trial at the full budget)."""
    if full_fidelity:
        return TwoStage()
    changes: dict[str, Any] = {}
    if proxy_epochs is not None:
        changes["proxy_epochs"] = proxy_epochs
    if proxy_train_subset is not None:
        changes["proxy_train_subset"] = proxy_train_subset
    if replay is not None:
        changes["replay"] = parse_replay(replay, "--replay")
    return dataclasses.replace(two, **changes)


def parse_two_stage(data: Any) -> TwoStage:
    """``{proxy: {epochs, train_subset}, replay: front | {top: K}}`` -> :class:`TwoStage`."""
    if data is None or data == {}:
        return TwoStage()
    if not isinstance(data, Mapping):
        raise ConfigError("fidelity must be a mapping with proxy: and replay:")
    unknown = sorted(set(data) - {"proxy", "replay"})
    if unknown:
        raise ConfigError(f"unknown key 'fidelity.{unknown[0]}' (allowed: proxy, replay)")
    proxy = data.get("proxy") or {}
    if not isinstance(proxy, Mapping) or not proxy:
        raise ConfigError("fidelity.proxy must be a mapping such as {epochs: 3, "
                          "train_subset: 1000}")
    bad = sorted(set(proxy) - {"epochs", "train_subset"})
    if bad:
        raise ConfigError(f"unknown key 'fidelity.proxy.{bad[0]}' (allowed: epochs, "
                          "train_subset)")
    values = {k: _positive_int(proxy.get(k), f"fidelity.proxy.{k}")
              for k in ("epochs", "train_subset")}
    return TwoStage(values["epochs"], values["train_subset"],
                    parse_replay(data.get("replay", "front"), "fidelity.replay"))


def parse_replay(value: Any, key: str) -> str | int:
    """``front``, ``{top: K}``, or (from the command line) ``K``."""
    if value == "front":
        return "front"
    if isinstance(value, Mapping) and set(value) == {"top"}:
        return _positive_int(value["top"], f"{key}.top") or 0
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"{key} must be 'front' or {{top: K}}, got {value!r}")


def _positive_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


__all__ = ["SCHEDULERS", "SchedulerSettings", "TwoStage", "override_two_stage", "parse_replay",
           "parse_two_stage"]

"""Search spaces: a YAML file validated once into a frozen :class:`SearchSpace`.

A space file has a fixed part (``fixed``: the train config minus the method, plus the
search settings: objectives, sampler, trial resources) and a searched part
(``searched``): a value spec for some ``training``/``dataset`` keys and, per PruningMethod,
a spec for each of its parameters. A spec is a plain value (fixed), ``{low, high, log,
step}`` (a range; int or float from the parameter's declared type) or ``{choices: [...]}``.
Every error names the key, e.g. ``searched.methods.filter.target_ratio``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from autoprune.config import (
    DatasetConfig,
    TrainingConfig,
    check_choice,
    convert,
    from_mapping,
    load_yaml,
)
from autoprune.errors import ConfigError
from autoprune.references import is_reference, normalise
from autoprune.search.fidelity import SchedulerSettings, TwoStage, parse_two_stage
from autoprune.search.space_checks import (
    OBJECTIVES,
    SAMPLERS,
    check_corners,
    named,
    validate_settings,
)
from autoprune.search.target import Target, parse_target

Kind = Literal["float", "int", "categorical", "fixed"]


@dataclass(frozen=True)
class ParamSpec:
    """One searched (or fixed) value. ``name`` is the flat key a trial's config uses."""

    name: str
    key: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def corner(self, high: bool) -> Any:
        """The low (or high) end of the spec: validating both ends catches most errors."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return self.choices[-1 if high else 0]
        bound = self.high if high else self.low
        return int(bound) if self.kind == "int" else float(bound)


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: CPUs (its torch thread count) and GPUs (fractions allowed).

    With ``workers`` > 1 a trial trains data-parallel on that many Ray Train workers
    (``training.workers``), each reserving ``cpu_per_worker`` CPUs (default ``cpu``) and
    ``gpu_per_worker`` GPUs (default ``gpu``); the trial's own process reserves nothing
    (it only relays the workers' results)."""

    cpu: float = 1.0
    gpu: float = 0.0
    workers: int = 1
    cpu_per_worker: float | None = None
    gpu_per_worker: float | None = None

    @property
    def worker_cpu(self) -> float:
        return self.cpu if self.cpu_per_worker is None else self.cpu_per_worker

    @property
    def worker_gpu(self) -> float:
        return self.gpu if self.gpu_per_worker is None else self.gpu_per_worker

    @property
    def trial_total(self) -> tuple[float, float]:
        """(CPUs, GPUs) one trial holds while it runs, all its workers included."""
        if self.workers == 1:
            return self.cpu, self.gpu
        return self.workers * self.worker_cpu, self.workers * self.worker_gpu

    @property
    def trial_process(self) -> dict[str, float]:
        """What the trial's own process reserves (Ray Tune's ``with_resources``). With
        workers, a nominal 1 MiB of memory: Ray needs a trial to reserve something, and
        a CPU share would keep the workers' CPUs from adding up to the machine's."""
        if self.workers == 1:
            return {"cpu": self.cpu, "gpu": self.gpu}
        return {"cpu": 0.0, "gpu": 0.0, "memory": float(1 << 20)}

    def training_settings(self) -> dict[str, Any]:
        """The train config's ``training`` entries that run a trial on its workers."""
        if self.workers == 1:
            return {}
        return {"workers": self.workers, "cpu_per_worker": self.worker_cpu,
                "gpu_per_worker": self.worker_gpu}


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: what a search runs, and how."""

    fixed: Mapping[str, Any]
    shared: tuple[ParamSpec, ...]
    methods: Mapping[str, tuple[ParamSpec, ...]]
    objectives: tuple[str, ...] = ("accuracy", "macs")
    sampler: str = "nsga2"
    sampler_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int | None = 0
    num_samples: int = 16
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 1
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    """Multi-fidelity TrialScheduler (``none``: every trial trains its full budget)."""
    fidelity: TwoStage = field(default_factory=TwoStage)
    """Two-stage search: stage 1 at a proxy budget, stage 2 replays its front."""
    target: Target | None = None
    """The budget the search aims at (``--target``), or None."""
    name: str | None = None
    source: str = ""
    """The YAML text the space was read from (logged on the search's parent run)."""

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(OBJECTIVES[o] for o in self.objectives)

    @property
    def epochs(self) -> int:
        """A full-fidelity trial's epochs (the fixed ``training.epochs``)."""
        training = self.fixed.get("training") or {}
        return int(training.get("epochs", TrainingConfig.epochs))

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.scheduler.rungs(self.epochs)

    @property
    def train_subset(self) -> int | None:
        """The fixed ``dataset.train_subset`` (None: the whole training split)."""
        dataset = self.fixed.get("dataset") or {}
        subset = dataset.get("train_subset") if isinstance(dataset, Mapping) else None
        return int(subset) if subset is not None else None


@dataclass(frozen=True)
class _Searched:
    methods: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _SpaceFile:
    fixed: Mapping[str, Any]
    searched: _Searched
    name: str | None = None
    description: str = ""
    objectives: tuple[str, ...] = ("accuracy", "macs")
    latency_runtime: str | None = None
    """How the ``latency_ms`` objective is measured: ``torch`` or ``onnx`` (onnxruntime);
    sets ``training.latency_runtime`` of every trial (as do the next two keys)."""
    latency_batch_size: int | None = None
    sampler: str = "nsga2"
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = 0
    num_samples: int = 16
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 1
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None


@dataclass(frozen=True)
class _RangeFile:
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Any, ...] | None = None


def _with_latency(raw: _SpaceFile) -> Mapping[str, Any]:
    """The fixed part with the space's latency settings and its trials' workers
    (``resources.workers``) in its training section."""
    settings = {key: value for key, value in (("latency_runtime", raw.latency_runtime),
                                              ("latency_batch_size", raw.latency_batch_size))
                if value is not None}
    settings.update(raw.resources.training_settings())
    if not settings:
        return raw.fixed
    training = raw.fixed.get("training") or {}
    return {**raw.fixed, "training": {**training, **settings}}


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space YAML file."""
    text = Path(path).read_text() if Path(path).is_file() else ""
    return parse_space(load_yaml(path), source=text)


def parse_space(data: Any, source: str = "") -> SearchSpace:
    """Validate a nested mapping (a parsed space file) into a :class:`SearchSpace`."""
    raw = from_mapping(_SpaceFile, data, "")
    fixed = _parse_fixed(_with_latency(raw))
    if not raw.searched.methods:
        raise ConfigError("searched.methods must name at least one method")
    shared = tuple(
        parse_spec(f"{section}.{key}", value, _field_type(cls, key, f"searched.{section}"))
        for section, cls, specs in (
            ("training", TrainingConfig, raw.searched.training),
            ("dataset", DatasetConfig, raw.searched.dataset),
        )
        for key, value in specs.items()
    )
    methods = {name: _parse_method(name, specs) for name, specs in raw.searched.methods.items()}
    space = SearchSpace(
        fixed=fixed, shared=shared, methods=methods, objectives=raw.objectives,
        sampler=raw.sampler, sampler_options=dict(raw.sampler_options), seed=raw.seed,
        num_samples=raw.num_samples, resources=raw.resources,
        max_concurrent=raw.max_concurrent, max_failures=raw.max_failures,
        scheduler=raw.scheduler, fidelity=parse_two_stage(raw.fidelity),
        target=_target(raw.target), name=raw.name, source=source,
    )
    validate_settings(space)
    check_corners(space)
    return space


def _target(text: str | None) -> Target | None:
    from autoprune.errors import UserError

    try:
        return parse_target(text, "target")
    except UserError as exc:
        raise ConfigError(str(exc)) from None


def parse_spec(name: str, value: Any, tp: Any, key: str | None = None) -> ParamSpec:
    """One value spec for a parameter of declared type ``tp`` (flat ``name``)."""
    key = key or f"searched.{name}"
    if not isinstance(value, Mapping):
        return ParamSpec(name, key, "fixed", value=convert(tp, value, key))
    spec = from_mapping(_RangeFile, value, key)
    if spec.choices is not None:
        if spec.low is not None or spec.high is not None:
            raise ConfigError(f"{key}: give either choices or low/high, not both")
        if not spec.choices:
            raise ConfigError(f"{key}.choices must not be empty")
        choices = tuple(convert(tp, c, f"{key}.choices[{i}]") for i, c in enumerate(spec.choices))
        for i, c in enumerate(choices):
            if not isinstance(c, (str, int, float, bool, type(None))):
                raise ConfigError(f"{key}.choices[{i}] must be a number, string or boolean")
        return ParamSpec(name, key, "categorical", choices=choices)
    return _range_spec(name, key, spec, tp)


def _range_spec(name: str, key: str, spec: _RangeFile, tp: Any) -> ParamSpec:
    if spec.low is None or spec.high is None:
        raise ConfigError(f"{key} needs low and high (or choices, or a plain value)")
    base = _base_type(tp)
    if base not in (int, float):
        raise ConfigError(f"{key} is not numeric: search it with choices: [...]")
    if spec.low > spec.high:
        raise ConfigError(f"{key}: low ({spec.low}) must not be greater than high ({spec.high})")
    if spec.log and (spec.low <= 0 or spec.step is not None):
        raise ConfigError(f"{key}: log needs low > 0 and no step")
    if spec.step is not None and spec.step <= 0:
        raise ConfigError(f"{key}.step must be positive, got {spec.step}")
    if base is int:
        for part in ("low", "high", "step"):
            bound = getattr(spec, part)
            if bound is not None and not float(bound).is_integer():
                raise ConfigError(f"{key}.{part} must be an integer, got {bound}")
    return ParamSpec(name, key, "int" if base is int else "float", low=spec.low, high=spec.high,
                     log=spec.log, step=spec.step)


def _parse_method(name: str, specs: Any) -> tuple[ParamSpec, ...]:
    from autoprune.methods import list_methods

    key = f"searched.methods.{name}"
    with named(key):
        check_choice("method", name, list_methods())
    if specs is None:
        specs = {}
    if not isinstance(specs, Mapping):
        raise ConfigError(f"{key} must be a mapping of parameter specs (or {{}})")
    from autoprune.methods import get_method

    params_cls = get_method(name).Params
    return tuple(
        parse_spec(f"{name}.{p}", v, _field_type(params_cls, p, key), key=f"{key}.{p}")
        for p, v in specs.items()
    )


def _parse_fixed(fixed: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(fixed)
    for key in ("method", "method_params"):
        if key in out:
            raise ConfigError(f"fixed.{key}: methods and their parameters go under "
                              "searched.methods")
    if isinstance(out.get("dataset"), str):
        out["dataset"] = {"name": out["dataset"]}
    if "model" not in out:
        raise ConfigError("missing required key 'fixed.model'")
    # a file reference made absolute here, where the space file is known: a trial on
    # another node (or in Ray's working folder) reads the same path, or its shipped copy
    if is_reference(out["model"]):
        out["model"] = normalise(out["model"], "fixed.model")
    dataset = out.get("dataset")
    if isinstance(dataset, Mapping) and is_reference(dataset.get("factory")):
        out["dataset"] = {**dataset,
                          "factory": normalise(dataset["factory"], "fixed.dataset.factory")}
    return out


def _field_type(cls: type, name: str, where: str) -> Any:
    fields = sorted(f.name for f in dataclasses.fields(cls))
    with named(f"{where}.{name}"):
        check_choice("parameter", name, fields)
    return typing.get_type_hints(cls)[name]


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; Literal and others unchanged."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return options[0] if len(options) == 1 else tp
    return tp


__all__ = ["OBJECTIVES", "SAMPLERS", "ParamSpec", "Resources", "SearchSpace", "load_space",
           "parse_space", "parse_spec"]

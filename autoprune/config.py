"""Typed, frozen train configs: YAML and flat dicts are converted and validated once here.

Every error names the offending key (``training.lr``, ``method_params.target_ratio``)
and, where there is a fixed set, the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from autoprune.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetConfig:
    """Which data, from where, and how much of it."""

    name: str = "digits"
    data_dir: str | None = None
    train_subset: int | None = None
    val_fraction: float = 0.1
    download: bool = False

    def validate(self) -> None:
        from autoprune.data import list_datasets

        check_choice("dataset.name", self.name, list_datasets())
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"dataset.train_subset must be at least 1, got {self.train_subset}")
        check_range("dataset.val_fraction", self.val_fraction, 0.0, 0.5)


@dataclass(frozen=True)
class TrainingConfig:
    """The training recipe. ``lr`` follows ``lr_schedule`` over ``epochs``."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["cosine", "constant", "step"] = "cosine"
    device: str = "auto"
    threads: int | None = None
    label_smoothing: float = 0.0
    bn_recalibration_batches: int = 10
    """Training batches used to refresh batch-norm statistics after a structural change."""
    schedule_epochs: int | None = None
    """The budget the method's epoch-valued parameters are written for (default:
    ``epochs``). When it differs from ``epochs``, the schedule is rescaled to ``epochs``
    with its phases in the same order and proportions (``autoprune train --epochs``)."""

    @property
    def reference_epochs(self) -> int:
        return self.schedule_epochs or self.epochs

    def validate(self) -> None:
        check_range("training.epochs", self.epochs, 1, 100_000)
        check_range("training.batch_size", self.batch_size, 1, 1 << 20)
        check_range("training.lr", self.lr, 0.0, 1000.0, low_open=True)
        check_range("training.momentum", self.momentum, 0.0, 1.0)
        check_range("training.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("training.label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("training.bn_recalibration_batches", self.bn_recalibration_batches, 0, 10_000)
        if self.schedule_epochs is not None:
            check_range("training.schedule_epochs", self.schedule_epochs, 1, 100_000)
        if self.threads is not None:
            check_range("training.threads", self.threads, 1, 1024)
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"training.device must be auto, cpu, cuda or cuda:N, not {self.device!r}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """A whole ``autoprune train`` run. ``method_params`` is validated by the method."""

    model: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    method: str = "dense"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    model_params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what ``summary.json`` and MLflow store; loads back identically)."""
        return dataclasses.asdict(self)

    def schedule(self) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
        """The method parameters this run trains with (``method_params`` rescaled from
        ``training.schedule_epochs`` to ``training.epochs``), and what the rescaling
        changed (``{field: (written, used)}``; empty when the budgets agree)."""
        from autoprune.methods import get_method
        from autoprune.methods.timing import rescale

        tc = self.training
        cls = get_method(self.method)
        params = from_mapping(cls.Params, dict(self.method_params), "method_params")
        scaled, changes = rescale(params, tc.reference_epochs, tc.epochs)
        return dataclasses.asdict(scaled), changes


def parse_train_config(data: Any) -> TrainConfig:
    """Validate a nested mapping (from YAML or a search trial) into a :class:`TrainConfig`."""
    from autoprune.methods import get_method
    from autoprune.models import list_models

    if not isinstance(data, Mapping):
        raise ConfigError("a train config must be a mapping (keys model, dataset, training, ...)")
    data = dict(data)
    if isinstance(data.get("dataset"), str):
        data["dataset"] = {"name": data["dataset"]}
    if "model" not in data:
        raise ConfigError("missing required key 'model'")
    config = from_mapping(TrainConfig, data, "")
    check_choice("model", config.model, list_models())
    config.dataset.validate()
    config.training.validate()
    method = get_method(config.method)
    reference = config.training.reference_epochs
    params = method.parse_params(config.method_params, reference)
    config = dataclasses.replace(config, method_params=dataclasses.asdict(params))
    if reference != config.training.epochs:
        scaled, _ = config.schedule()
        try:
            method.parse_params(scaled, config.training.epochs)
        except ConfigError as exc:
            raise ConfigError(f"the schedule written for {reference} epochs does not fit in "
                              f"{config.training.epochs}: {exc}") from None
    return config


def at_budget(data: Any, epochs: int | None = None, train_subset: int | None = None) -> Any:
    """A raw train config (as read from YAML) replayed at another budget: ``epochs``
    rescales the schedule (``training.schedule_epochs`` keeps the budget it was written
    for), ``train_subset`` sets the number of training samples."""
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    if epochs is not None:
        training = out.get("training") or {}
        if not isinstance(training, Mapping):
            return data  # the validation names the problem
        training = dict(training)
        written = training.get("schedule_epochs") or training.get("epochs")
        training["schedule_epochs"] = written if written is not None else TrainingConfig.epochs
        training["epochs"] = epochs
        out["training"] = training
    if train_subset is not None:
        dataset = out.get("dataset", DatasetConfig.name)
        dataset = {"name": dataset} if isinstance(dataset, str) else dict(dataset or {})
        dataset["train_subset"] = train_subset
        out["dataset"] = dataset
    return out


def load_yaml(path: str | Path) -> Any:
    """Safe YAML load with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a train config YAML file."""
    return parse_train_config(load_yaml(path))


def dump_yaml(data: Any, path: str | Path, header: str = "") -> None:
    """Write ``data`` as YAML, after ``header`` (each line becomes a ``#`` comment)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    Path(path).write_text(comment + yaml.safe_dump(data, sort_keys=False))


REPLAY_NOTE = (
    "Epoch-valued method_params are written for training.schedule_epochs epochs. Replay\n"
    "at another budget with `autoprune train FILE --epochs N` (or edit training.epochs):\n"
    "the schedule is rescaled, its phases keep their order and proportions."
)


def replayable(data: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved train config with ``training.schedule_epochs`` made explicit, so that a
    later change of ``training.epochs`` rescales the schedule instead of truncating it."""
    out = dict(data)
    training = dict(out.get("training") or {})
    training["schedule_epochs"] = training.get("schedule_epochs") or training.get("epochs")
    out["training"] = training
    return out


# --- generic typed conversion -------------------------------------------------------


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

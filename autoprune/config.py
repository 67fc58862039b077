"""Typed, frozen train configs: YAML and flat dicts are converted and validated once here.

Every error names the offending key (``training.lr``, ``method_params.target_ratio``)
and, where there is a fixed set, the allowed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from autoprune.errors import ConfigError
from autoprune.validation import check_choice, check_range, convert, from_mapping

__all__ = ["REPLAY_NOTE", "ConfigError", "DatasetConfig", "TrainConfig", "TrainingConfig",
           "at_budget", "check_choice", "check_range", "convert", "dump_yaml", "from_mapping",
           "load_train_config", "load_yaml", "parse_train_config", "replayable"]


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
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast of the training steps: ``auto`` is bfloat16 on a GPU that has it and on a
    CPU with AMX, float32 elsewhere (:mod:`autoprune.engine.hardware`)."""
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    """Layout of activations and conv weights: ``auto`` is channels_last on CUDA."""
    compile: bool = False
    """Train through ``torch.compile``, compiled again after every structural change: it
    pays when many steps pass between changes (README, Training speed)."""
    threads: int | None = None
    label_smoothing: float = 0.0
    bn_recalibration_batches: int = 10
    """Training batches used to refresh batch-norm statistics after a structural change."""
    latency_runtime: Literal["torch", "onnx"] = "torch"
    """Where the final network's ``latency_ms`` is measured: PyTorch, or onnxruntime on
    its ONNX export (the network must then export)."""
    latency_batch_size: int = 1
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
        check_range("training.latency_batch_size", self.latency_batch_size, 1, 1 << 16)
        check_choice("training.latency_runtime", self.latency_runtime, ["torch", "onnx"])
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
    from autoprune.models import is_registered, list_models, model_info

    if not isinstance(data, Mapping):
        raise ConfigError("a train config must be a mapping (keys model, dataset, training, ...)")
    data = dict(data)
    if isinstance(data.get("dataset"), str):
        data["dataset"] = {"name": data["dataset"]}
    if "model" not in data:
        raise ConfigError("missing required key 'model'")
    config = from_mapping(TrainConfig, data, "")
    if not is_registered(config.model):
        check_choice("model", config.model, list_models())
    config.dataset.validate()
    config.training.validate()
    method = get_method(config.method)
    _check_support(config.model, model_info(config.model).supports, config.method, method.requires)
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
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file (UTF-8 YAML expected; byte "
                          f"{exc.start} cannot be read)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
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


_SUPPORT_WORDS = {
    "prune": ("have its channels removed", "its channels cannot be followed for pruning"),
    "grow": ("grow channels", "a concatenation, a flatten into the classifier, grouped "
             "convolutions or LayerNorm stand in the way"),
    "layers": ("lose residual blocks", "no residual block with an identity shortcut"),
}


def _check_support(
    model: str, supports: tuple[str, ...], method: str, requires: tuple[str, ...]
) -> None:
    """ConfigError unless the model allows every structural change the method makes."""
    for kind in requires:
        if kind not in supports:
            action, why = _SUPPORT_WORDS[kind]
            raise ConfigError(
                f"method {method!r} needs a model that can {action}; model {model!r} cannot "
                f"({why}; 'autoprune models' marks what each model allows)"
            )

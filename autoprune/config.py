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
from autoprune.references import (
    as_reference,
    is_reference,
    normalise,
    parse_reference,
    remember_config_dir,
    resolve,
)
from autoprune.validation import check_choice, check_range, convert, from_mapping

__all__ = ["REPLAY_NOTE", "ConfigError", "DatasetConfig", "TrainConfig", "TrainingConfig",
           "at_budget", "check_choice", "check_range", "convert", "dump_yaml", "from_mapping",
           "load_train_config", "load_yaml", "parse_train_config", "replayable"]


@dataclass(frozen=True)
class DatasetConfig:
    """Which data, from where, and how much of it.

    ``factory`` names the user's own data instead of a registered ``name``: an import
    reference (``"module:callable"``) whose call (with ``kwargs``) returns ``(train,
    test)`` or ``(train, val, test)`` map-style datasets of ``(image, int label)``;
    ``mean``/``std`` (default: measured on the training split) and ``augment`` apply to
    it (:mod:`autoprune.data.factory`)."""

    name: str = "digits"
    data_dir: str | None = None
    train_subset: int | None = None
    val_fraction: float = 0.1
    download: bool = False
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: Literal["none", "crop", "crop_flip"] | None = None

    def validate(self) -> None:
        from autoprune.data import list_datasets

        if self.factory is None:
            for key in FACTORY_ONLY:
                if getattr(self, key) not in (None, {}):
                    raise ConfigError(f"dataset.{key} applies to a dataset factory only "
                                      "(dataset: {factory: 'module:callable', ...})")
            check_choice("dataset.name", self.name, list_datasets())
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"dataset.train_subset must be at least 1, got {self.train_subset}")
        check_range("dataset.val_fraction", self.val_fraction, 0.0, 0.5)
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (not value or (key == "std" and min(value) <= 0)):
                raise ConfigError(f"dataset.{key} must be a non-empty list of numbers"
                                  f"{' above 0' if key == 'std' else ''}, got {list(value)}")
        if (self.mean is None) != (self.std is None) or (
                self.mean is not None and len(self.mean) != len(self.std or ())):
            raise ConfigError("dataset.mean and dataset.std go together, one number per channel")


FACTORY_ONLY = ("kwargs", "mean", "std", "augment")
"""DatasetConfig keys that apply to a dataset factory only."""


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
    pays when many steps pass between changes (docs: Benchmarks, Training speed)."""
    threads: int | None = None
    workers: int = 1
    """Data-parallel workers of the run (Ray Train, DDP): each trains on ``batch_size /
    workers`` samples of every batch (``batch_size`` must be a multiple), with the same
    lr; 1 is the plain single-process loop (docs: How-to, Data-parallel trials)."""
    cpu_per_worker: float | None = None
    """CPUs each worker reserves (and its torch threads; default: ``threads``, else 1)."""
    gpu_per_worker: float | None = None
    """GPUs each worker reserves (default: 1 where ``device`` is CUDA, else 0)."""
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
        check_range("training.workers", self.workers, 1, 4096)
        if self.cpu_per_worker is not None:
            check_range("training.cpu_per_worker", self.cpu_per_worker, 0.0, 1024.0,
                        low_open=True)
        if self.gpu_per_worker is not None:
            check_range("training.gpu_per_worker", self.gpu_per_worker, 0.0, 64.0)
        if self.batch_size % self.workers:
            raise ConfigError(
                f"training.batch_size ({self.batch_size}) must be a multiple of "
                f"training.workers ({self.workers}): each worker takes batch_size / workers "
                "samples of every batch"
            )
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
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Arguments of the user's network when ``model`` is an import reference
    (``num_classes``, ``in_channels`` and ``input_size`` come from the data)."""

    @property
    def is_reference(self) -> bool:
        """Whether ``model`` is the user's own network (an import reference)."""
        return is_reference(self.model)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what ``summary.json`` and MLflow store; loads back identically).
        Keys of the user's own network and data appear only when set."""
        out = dataclasses.asdict(self)
        if not self.model_kwargs:
            del out["model_kwargs"]
        if self.dataset.factory is None:
            for key in ("factory", *FACTORY_ONLY):
                del out["dataset"][key]
        for key in ("mean", "std"):
            if key in out["dataset"] and out["dataset"][key] is not None:
                out["dataset"][key] = list(out["dataset"][key])
        return out

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


def parse_train_config(data: Any, *, imports: bool = True) -> TrainConfig:
    """Validate a nested mapping (from YAML or a search trial) into a :class:`TrainConfig`.

    ``model`` and ``dataset.factory`` may be import references, or the callables
    themselves (kept under a reference, :mod:`autoprune.references`). With ``imports``
    (the user's own config) references are imported and checked to name callables; without
    (a config found beside a model file) they are only read, and no code is imported."""
    from autoprune.methods import get_method
    from autoprune.models import is_registered, list_models, model_info

    if not isinstance(data, Mapping):
        raise ConfigError("a train config must be a mapping (keys model, dataset, training, ...)")
    data = dict(data)
    if isinstance(data.get("dataset"), str):
        data["dataset"] = {"name": data["dataset"]}
    if "model" not in data:
        raise ConfigError("missing required key 'model'")
    data["model"] = as_reference(data["model"], "model")
    if isinstance(data.get("dataset"), Mapping) and data["dataset"].get("factory") is not None:
        data["dataset"] = _factory_dataset(dict(data["dataset"]), imports)
    config = from_mapping(TrainConfig, data, "")
    if config.is_reference:
        config = dataclasses.replace(config, model=_reference("model", config.model, imports))
    elif config.model_kwargs:
        raise ConfigError("model_kwargs apply to an import reference ('module:callable'); "
                          "registered models take model_params")
    elif not is_registered(config.model):
        try:
            check_choice("model", config.model, list_models())
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or an import reference to your own network, "
                              "'module:callable' or 'path/to/file.py:callable'") from None
    config.dataset.validate()
    config.training.validate()
    method = get_method(config.method)
    if not config.is_reference:  # the user's network is measured before training
        _check_support(config.model, model_info(config.model).supports, config.method,
                       method.requires)
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


def _factory_dataset(dataset: dict[str, Any], imports: bool) -> dict[str, Any]:
    """A ``dataset`` mapping with a factory: the reference checked (and imported), and the
    dataset named after it."""
    factory = as_reference(dataset["factory"], "dataset.factory")
    if not isinstance(factory, str):
        raise ConfigError("dataset.factory must be an import reference 'module:callable', "
                          f"got {type(factory).__name__}")
    factory = _reference("dataset.factory", factory, imports)
    name = dataset.get("name")
    if name is not None and name not in (factory, dataset["factory"]):
        raise ConfigError("dataset: give either name (a registered dataset) or factory, "
                          "not both")
    return {**dataset, "factory": factory, "name": factory}


def _reference(key: str, text: str, imports: bool) -> str:
    """A reference in its kept form; with ``imports``, checked to import a callable."""
    if not imports:
        parse_reference(text, key)
        return text
    text = normalise(text, key)
    resolve(text, key)
    return text
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
    remember_config_dir(path)  # import references may name a module beside it
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
    """Read and validate a train config YAML file (modules of import references are also
    looked for beside it)."""
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

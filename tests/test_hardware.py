"""The GPU path, tested where there is none: device selection, precision, memory format,
fractional GPU resources. Tests that need CUDA skip without it."""

from __future__ import annotations

import math

import pytest
import torch

from autoprune.config import ConfigError, parse_train_config
from autoprune.engine import train
from autoprune.engine.hardware import (
    apply_memory_format,
    cpu_has_amx,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from autoprune.errors import UserError
from autoprune.models import create_model

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")


def test_auto_device_is_cpu_without_cuda() -> None:
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == CPU


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")


def test_a_device_that_is_no_device_is_a_user_error() -> None:
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu0")


def test_amp_on_cpu_only_with_amx_or_when_asked(monkeypatch) -> None:
    from autoprune.engine import hardware

    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    assert resolve_precision("auto", CPU) is None
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    assert resolve_precision("auto", CPU) is torch.bfloat16  # AMX: bf16 convolutions
    assert resolve_precision("fp32", CPU) is None


def test_amp_and_channels_last_are_off_on_cpu_unless_asked() -> None:
    assert resolve_precision("auto", CPU) is (torch.bfloat16 if cpu_has_amx() else None)
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16  # asked for: CPU autocast
    assert resolve_memory_format("auto", CPU) == torch.contiguous_format
    assert resolve_memory_format("channels_last", CPU) == torch.channels_last


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_amp_and_channels_last_are_on_on_cuda() -> None:
    gpu = torch.device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert resolve_precision("auto", gpu) is expected
    assert resolve_memory_format("auto", gpu) == torch.channels_last


def test_unknown_precision_names_the_key() -> None:
    with pytest.raises(ConfigError, match="training.precision"):
        parse_train_config({"model": "small_cnn", "dataset": "digits",
                            "training": {"precision": "fp8"}})


def test_channels_last_keeps_parameters_and_function() -> None:
    torch.manual_seed(0)
    model = create_model("small_resnet", 10, 1, 8).eval()
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    ids = [id(p) for p in model.parameters()]
    apply_memory_format(model, torch.channels_last)
    assert ids == [id(p) for p in model.parameters()]
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), before,
                          atol=1e-5)


@pytest.mark.parametrize(("precision", "memory_format"),
                         [("bf16", "channels_last"), ("fp32", "contiguous")])
def test_pruning_run_with_bf16_and_channels_last(tmp_path, precision: str,
                                                 memory_format: str) -> None:
    """bf16 autocast and channels_last through surgery: the run trains, prunes, and counts
    the same MACs and dense training FLOPs as in float32 contiguous (counts do not depend
    on precision or layout)."""
    config = parse_train_config({
        "model": "small_resnet", "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": 3, "batch_size": 32, "device": "cpu", "seed": 0,
                     "precision": precision, "memory_format": memory_format},
        "method": "filter", "method_params": {"target_ratio": 0.5, "end_epoch": 2},
    })
    summary = train(config, tmp_path, progress=False)
    assert summary["macs"] < summary["dense_macs"]
    assert all(e["train_loss"] > 0 for e in summary["epochs"])
    assert summary["config"]["training"]["precision"] == precision
    assert summary["hardware"]["precision"] == precision
    assert summary["hardware"]["memory_format"] == memory_format
    reference = parse_train_config({**config.to_dict(), "training": {
        **config.to_dict()["training"], "precision": "fp32", "memory_format": "contiguous"}})
    ref = train(reference, tmp_path / "ref", progress=False)
    assert (summary["macs"], summary["dense_train_flops"]) == (ref["macs"],
                                                               ref["dense_train_flops"])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_pruning_run_on_cuda_counts_what_the_cpu_counts(tmp_path) -> None:
    """On a GPU with the defaults (bf16 autocast where supported, channels_last): the run
    prunes through surgery on the device, its counts equal the CPU run's, and its saved
    network loads and runs on a CPU."""
    from autoprune.surgery import load_model

    raw = {
        "model": "small_resnet", "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cuda"},
        "method": "filter", "method_params": {"target_ratio": 0.5, "end_epoch": 2},
    }
    gpu = train(parse_train_config(raw), tmp_path / "gpu", progress=False)
    cpu = train(parse_train_config({**raw, "training": {**raw["training"], "device": "cpu"}}),
                tmp_path / "cpu", progress=False)
    assert gpu["macs"] < gpu["dense_macs"]
    for key in ("macs", "params", "dense_train_flops", "widths"):
        assert gpu[key] == cpu[key], key
    assert all(math.isfinite(e["train_loss"]) for e in gpu["epochs"])
    model = load_model(tmp_path / "gpu" / "model.pt")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_compiled_training_prunes_like_eager_training(tmp_path, monkeypatch) -> None:
    """``training.compile``: the steps run compiled (again after the surgery), and the run
    prunes to the same widths with the same losses as the eager one. Dynamo captures the
    graphs and AOTAutograd runs them (``aot_eager``): the engine's side of compiling
    without Inductor's code generation, which takes 10-30 s a graph on this CPU (the
    benchmark's part c times that)."""
    import functools

    from autoprune.engine import context

    monkeypatch.setattr(context.torch, "compile",
                        functools.partial(torch.compile, backend="aot_eager"))
    raw = {
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 64},
        "training": {"epochs": 2, "batch_size": 32, "seed": 0, "precision": "fp32"},
        "method": "filter", "method_params": {"target_ratio": 0.5, "end_epoch": 1},
    }
    eager = train(parse_train_config(raw), tmp_path / "eager", progress=False)
    compiled = train(parse_train_config({**raw, "training": {**raw["training"],
                                                             "compile": True}}),
                     tmp_path / "compiled", progress=False)
    assert compiled["hardware"]["compiled_steps"] == 4  # 2 epochs of 2 steps
    assert eager["hardware"]["compiled_steps"] is None
    assert compiled["widths"] == eager["widths"] and compiled["macs"] < compiled["dense_macs"]
    for a, b in zip(compiled["epochs"], eager["epochs"]):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)


def _space(gpu: float):
    from autoprune.search.space import parse_space

    return parse_space({
        "resources": {"cpu": 1, "gpu": gpu},
        "fixed": {"model": "small_cnn", "dataset": "digits", "training": {"epochs": 2}},
        "searched": {"methods": {"dense": {}}},
    })


def test_fractional_gpus_let_trials_share_a_device() -> None:
    from autoprune.search.tuner import trials_that_fit

    space = _space(0.25)
    assert space.resources.gpu == 0.25
    assert trials_that_fit(space, {"CPU": 16.0, "GPU": 1.0}, local=True) == 4
    assert trials_that_fit(space, {"CPU": 2.0, "GPU": 1.0}, local=True) == 2  # CPU-bound
    assert trials_that_fit(_space(0.3), {"CPU": 16.0, "GPU": 1.0}, local=True) == 3
    assert trials_that_fit(_space(0.0), {"CPU": 16.0}, local=True) == 16


def test_a_gpu_trial_on_a_machine_without_one_is_refused() -> None:
    from autoprune.search.tuner import trials_that_fit

    with pytest.raises(UserError, match="this machine has 2 CPU and 0 GPU"):
        trials_that_fit(_space(0.25), {"CPU": 2.0}, local=True)
    assert trials_that_fit(_space(0.25), {"CPU": 2.0}, local=False) == 1  # a cluster may grow

"""The ``variational`` PruningMethod: Bernoulli gates on channels and residual branches.

Quick runs on digits (256 training samples, 8 batches per epoch, fixed seed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune
from autoprune.config import ConfigError, parse_train_config
from autoprune.data import load_dataset
from autoprune.engine import loop, train
from autoprune.engine.context import TrainContext
from autoprune.methods import create_method
from autoprune.methods._gates import GATES_ATTR
from autoprune.models import BasicBlock, create_model
from autoprune.surgery import DependencyIndex


def config(model: str, epochs: int = 3, **params: Any) -> Any:
    return parse_train_config({
        "model": model,
        "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "seed": 0},
        "method": "variational",
        "method_params": params,
    })


def basic_blocks(model: nn.Module) -> int:
    return sum(isinstance(m, BasicBlock) for m in model.modules())


@pytest.mark.parametrize(("key", "value"), [
    ("strength", -1.0), ("layer_vs_unit", 1.5), ("compute_vs_params", -0.1),
    ("prune_threshold", 0.5), ("prune_threshold", 0.0), ("start_epoch", 4),
])
def test_bad_params_name_their_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"method_params.{key}"):
        config("small_resnet", **{key: value})


def test_expected_cost_prices_units_and_branches_by_the_shares() -> None:
    torch.manual_seed(0)
    data = load_dataset("digits", train_subset=64, seed=0, batch_size=32)
    model = create_model("small_resnet", 10, 1, 8)
    x, y = next(iter(data.train))
    ctx = TrainContext(model, (x, y), data.train, 3, torch.device("cpu"))
    method = create_method("variational", {"strength": 1.0, "layer_vs_unit": 0.0}, 3)
    method.setup(ctx)
    bank = getattr(model, GATES_ATTR)
    cost = method.expected_cost(1.0, 0.0)
    assert cost.item() == pytest.approx(1.0)  # all gates open: the dense network's cost
    cost.backward()
    units = [t for _, t in bank.items("unit")]
    assert all(t.grad is not None and bool((t.grad > 0).all()) for t in units)
    assert all(t.grad is None or float(t.grad.abs().sum()) == 0 for _, t in bank.items("layer"))
    for t in bank.parameters():
        t.grad = None
    method.expected_cost(0.0, 1.0).backward()
    assert all(t.grad is None or float(t.grad.abs().sum()) == 0 for t in units)
    assert all(float(t.grad) > 0 for _, t in bank.items("layer"))  # type: ignore[arg-type]


def test_strength_zero_removes_nothing(tmp_path: Path) -> None:
    summary = train(config("small_resnet", epochs=2, strength=0.0), tmp_path, progress=False)
    assert summary["macs"] == summary["dense_macs"]
    assert summary["params"] == summary["dense_params"]


def test_more_strength_never_costs_more(tmp_path: Path) -> None:
    macs = []
    for strength in (0.1, 1.0, 10.0):
        summary = train(config("small_resnet", strength=strength), tmp_path / str(strength),
                        progress=False)
        macs.append(summary["macs"])
    assert macs[0] >= macs[1] >= macs[2]
    assert macs[2] < macs[0] < summary["dense_macs"]


def test_layer_pressure_removes_residual_blocks(tmp_path: Path) -> None:
    summary = train(config("cifar_resnet20", epochs=2, strength=5.0, layer_vs_unit=0.95),
                    tmp_path, progress=False)
    reloaded = autoprune.load_model(tmp_path / "model.pt")
    assert basic_blocks(reloaded) < 9
    assert summary["macs"] < summary["dense_macs"]
    removed = [b for e in summary["epochs"] for b in e.get("removed_blocks", [])]
    removed += summary["final"]["removed_blocks"]
    assert len(removed) == 9 - basic_blocks(reloaded)
    first = summary["epochs"][0]
    for key in ("unit_gates_open", "unit_gates_fixed", "layer_gates_open", "layer_gates_fixed",
                "removed_channels", "widths"):
        assert key in first


def test_no_gate_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[nn.Module] = []
    original = loop.save_model
    monkeypatch.setattr(loop, "save_model",
                        lambda m, *a: (saved.append(m), original(m, *a)))
    summary = train(config("small_resnet", epochs=2, strength=1.0), tmp_path, progress=False)
    final = saved[0]
    assert not hasattr(final, GATES_ATTR)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in final.modules())
    assert not any("gate" in name for name in final.state_dict())
    reloaded = autoprune.load_model(tmp_path / "model.pt")
    assert sum(p.numel() for p in reloaded.parameters()) == summary["params"]
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(reloaded(x), final.eval()(x))


def test_resume_after_a_crash(tmp_path: Path) -> None:
    settings = {"epochs": 2, "strength": 10.0, "layer_vs_unit": 0.95}
    whole = train(config("cifar_resnet20", **settings), tmp_path / "whole", progress=False)

    class Crash(RuntimeError):
        pass

    def crash(record: dict[str, Any], out: Path) -> None:
        assert record["macs"] < whole["dense_macs"]  # the checkpoint holds a pruned network
        raise Crash

    with pytest.raises(Crash):
        train(config("cifar_resnet20", **settings), tmp_path / "run", on_epoch=crash,
              progress=False)
    resumed = train(config("cifar_resnet20", **settings), tmp_path / "run", progress=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert (resumed["macs"], resumed["params"]) == (whole["macs"], whole["params"])
    assert resumed["accuracy"] == whole["accuracy"]
    autoprune.load_model(tmp_path / "run" / "model.pt")


def test_mobilenet_branch_removal(tmp_path: Path) -> None:
    """Removing the inverted residual re-keys the channel group its root belonged to."""
    summary = train(config("small_mobilenet", epochs=2, strength=10.0, layer_vs_unit=1.0),
                    tmp_path, progress=False)
    reloaded = autoprune.load_model(tmp_path / "model.pt")
    assert any(getattr(m, "autoprune_removed", False) for m in reloaded.modules())
    assert summary["macs"] < summary["dense_macs"]


def test_a_groups_last_channel_stays_on(tmp_path: Path) -> None:
    """When every gate of a group closes, the group keeps its strongest channel with the
    gate fixed at 1: evaluation sees the network training ends with, not a zeroed group."""
    torch.manual_seed(0)
    data = load_dataset("digits", train_subset=64, seed=0, batch_size=32)
    model = create_model("small_resnet", 10, 1, 8)
    x, y = next(iter(data.train))
    ctx = TrainContext(model, (x, y), data.train, 3, torch.device("cpu"))
    method = create_method("variational", {"strength": 1.0, "min_width": 0.0}, 3)
    method.setup(ctx)
    bank = getattr(model, GATES_ATTR)
    key = "layer1.0.conv1"
    with torch.no_grad():
        theta = bank.get("unit", key)
        theta.fill_(0.01)
        theta[3] = 0.02
    method.on_epoch_end(ctx, 1)
    assert ctx.widths()[key] == 1
    fixed = bank.get("fixed", key)
    assert fixed is None or float(fixed[0]) == 1.0  # a fully fixed group loses its gates
    kept = bank.get("unit", key)
    assert kept is None or float(kept[0]) == 1.0
    method.on_epoch_start(ctx, 2)  # gates re-hooked, as the engine does before epoch 2
    model.eval()
    with torch.no_grad():
        inner: dict[str, torch.Tensor] = {}
        handle = model.get_submodule("layer1.0.bn1").register_forward_hook(
            lambda _m, _i, out: inner.setdefault("out", out))
        model(x[:4])
        handle.remove()
    assert float(inner["out"].abs().sum()) > 0  # the kept channel is not gated to zero


def gated_setup(params: dict[str, Any]) -> tuple[nn.Module, TrainContext, Any, torch.Tensor]:
    torch.manual_seed(0)
    data = load_dataset("digits", train_subset=64, seed=0, batch_size=32)
    model = create_model("small_resnet", 10, 1, 8)
    x, y = next(iter(data.train))
    ctx = TrainContext(model, (x, y), data.train, 3, torch.device("cpu"))
    method = create_method("variational", {"strength": 1.0, **params}, 3)
    method.setup(ctx)
    method.on_epoch_start(ctx, 1)
    return model, ctx, method, x[:8]


@pytest.mark.parametrize("key", ["conv1", "layer2.0.conv1"])  # a residual stream, a branch
def test_gates_below_one_half_but_alive_are_evaluated_as_the_final_network(key: str) -> None:
    """Every gate of a group in (prune_threshold, 0.5): training still samples the group,
    nothing is removed at the epoch's end, and evaluation shows the network that training
    ends with (its floor of strongest channels), not a zeroed group."""
    model, ctx, method, x = gated_setup({"min_width": 0.2})
    bank = getattr(model, GATES_ATTR)
    width = ctx.widths()[key]
    floor = math.ceil(0.2 * width)
    with torch.no_grad():
        theta = bank.get("unit", key)
        theta.copy_(torch.linspace(0.1, 0.4, width))
    method.on_epoch_end(ctx, 1)
    assert ctx.widths()[key] == width  # above prune_threshold: still trained, not removed
    method.on_epoch_start(ctx, 2)
    model.train()
    sampled = bank.gate("unit", key)
    assert sampled is not None and 0 < float(sampled.detach().sum()) < width  # training samples it
    model.eval()
    shown = bank.gate("unit", key)
    assert shown is not None and int(shown.sum()) == floor
    with torch.no_grad():
        evaluated = model(x)
    method.on_train_end(ctx)
    assert ctx.widths()[key] == floor
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), evaluated)


@pytest.mark.parametrize("min_width", [0.0, 0.25, 0.5])
def test_residual_streams_keep_their_floor(min_width: float) -> None:
    """Closing every gate of a residual stream removes it down to its declared floor (at
    least one channel), the survivors' gates fixed at 1."""
    model, ctx, method, _ = gated_setup({"min_width": min_width})
    bank = getattr(model, GATES_ATTR)
    streams = [k for k, g in ctx.groups().items() if len(g.out_modules) > 2]
    assert streams
    dense = ctx.widths()
    with torch.no_grad():
        for key in streams:
            bank.get("unit", key).fill_(0.01)
    method.on_epoch_end(ctx, 1)
    for key in streams:
        assert ctx.widths()[key] == max(1, math.ceil(min_width * dense[key]))


def test_trained_streams_stay_at_or_above_the_floor(tmp_path: Path) -> None:
    """Channels-only pressure that cuts a residual stream below a quarter of its width
    without a floor; with ``min_width`` 0.25 no group of the final network is narrower."""
    model = create_model("small_resnet", 10, 1, 8)
    dense = {k: g.width for k, g in DependencyIndex(model, torch.randn(1, 1, 8, 8)).groups.items()}
    narrowest = {}
    for min_width in (0.0, 0.25):
        summary = train(config("small_resnet", epochs=3, strength=20.0, layer_vs_unit=0.0,
                               min_width=min_width), tmp_path / str(min_width), progress=False)
        final = summary["final"]["widths"]
        assert set(final) == set(dense)
        streams = [k for k in final if k == "conv1" or "shortcut" in k]
        narrowest[min_width] = min(final[k] / dense[k] for k in streams)
        for key, width in final.items():
            assert width >= max(1, math.ceil(min_width * dense[key]))
    assert narrowest[0.0] < 0.25 <= narrowest[0.25]

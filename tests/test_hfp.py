"""The ``hfp`` PruningMethod (Holistic Filter Pruning) and the cost model it shares with
``variational``: soft counts, the budget loss, and landing on MACs/params targets."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune
from autoprune.compute import count_macs_params
from autoprune.config import ConfigError, parse_train_config
from autoprune.engine import train
from autoprune.engine.context import TrainContext
from autoprune.methods import create_method
from autoprune.methods._costmodel import build_cost_model
from autoprune.methods._gates import GATES_ATTR
from autoprune.methods.hfp import soft_channel_count
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, remove_channels

X = torch.randn(1, 1, 8, 8)


def config(model: str, epochs: int = 2, **params: Any) -> Any:
    return parse_train_config({
        "model": model,
        "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "seed": 0},
        "method": "hfp",
        "method_params": params,
    })


def context(model: nn.Module) -> TrainContext:
    x = torch.randn(8, *X.shape[1:])
    return TrainContext(model, (x, torch.randint(0, 10, (8,))), None, 3, torch.device("cpu"))


@pytest.mark.parametrize(("key", "value"), [
    ("target_params_ratio", 0.0), ("target_macs_ratio", 1.2), ("end_epoch", 3),
    ("interval", 0), ("budget_weight", -1.0),
])
def test_bad_params_name_their_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"method_params.{key}"):
        config("small_cnn", **{key: value})


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11", "small_mobilenet"])
def test_cost_model_is_exact_for_integer_widths(name: str) -> None:
    model = create_model(name, 10, 1, 8)
    cost = build_cost_model(model, DependencyIndex(model, X), count_macs_params(model, X))
    rng = random.Random(0)
    for _ in range(2):
        pruned = copy.deepcopy(model)
        index = DependencyIndex(pruned, X)
        plan = {k: rng.sample(range(g.width), rng.randint(0, g.width - 1))
                for k, g in index.groups.items()}
        remove_channels(pruned, plan, X, None, index)
        widths = {k: g.width - len(plan[k]) for k, g in index.groups.items()}
        assert cost.at_widths(widths) == count_macs_params(pruned, X)


def test_soft_count_is_differentiable_and_saturates() -> None:
    factors = torch.tensor([1.0, 2.0, 0.5, 0.0], requires_grad=True)
    count = soft_channel_count(factors, 0.5)
    assert 2.0 < count.item() < 3.0  # two full channels, a partial one, a dead one
    count.backward()
    assert factors.grad is not None
    assert bool((factors.grad[:3] > 0).all())  # the cap at 1 holds the value, not the gradient
    assert soft_channel_count(torch.ones(7), 0.5).item() == pytest.approx(7.0)


def test_budget_loss_presses_on_every_live_factor() -> None:
    model = create_model("small_resnet", 10, 1, 8)
    ctx = context(model)
    method = create_method("hfp", {"target_macs_ratio": 0.3, "target_params_ratio": 0.3}, 3)
    method.setup(ctx)
    before = [r.item() for r in method.soft_ratios()]
    assert before == pytest.approx([1.0, 1.0])  # factors at their initial value: the dense net
    loss = method.loss_term(ctx)
    assert loss is not None and loss.item() > 0
    loss.backward()
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(g.grad is not None and bool((g.grad > 0).all()) for g in gammas)


def test_budget_counts_the_live_network_that_the_next_removal_leaves() -> None:
    """The budget compares the current size with the targets: channels whose factor fell
    below ``threshold`` count nothing, live ones count fully (whatever their factor), and the
    value is exactly the counted network after the epoch's removal."""
    torch.manual_seed(0)
    model = create_model("small_resnet", 10, 1, 8)
    ctx = context(model)
    method = create_method("hfp", {"target_macs_ratio": 0.3, "target_params_ratio": 0.3,
                                   "threshold": 0.05}, 4)
    method.setup(ctx)
    named = dict(model.named_modules())
    with torch.no_grad():
        named["layer1.0.bn1"].weight[:6] = 0.01  # dead: below the threshold
        named["layer2.0.bn1"].weight[:5] = -0.02
        named["layer3.0.bn1"].weight[:] = 0.3  # weak, but live
    macs, params = (r.item() for r in method.soft_ratios())
    assert macs < 1.0 and params < 1.0
    record = method.on_epoch_end(ctx, 1)  # before end_epoch (2): threshold removal
    assert record["removed_channels"] == 11
    assert (record["macs_ratio"], record["params_ratio"]) == pytest.approx((macs, params))
    assert ctx.widths()["layer3.0.conv1"] == 64


def test_end_epoch_leaves_the_final_network_half_of_training(tmp_path: Path) -> None:
    """By default the network is on its targets at the end of half of training; the
    epochs after it train that network: no budget, no removal."""
    summary = train(config("small_resnet", epochs=4, target_macs_ratio=0.5,
                           target_params_ratio=0.5), tmp_path, progress=False)
    epochs = summary["epochs"]
    assert epochs[1]["final_cut"] and epochs[1]["targets_met"]
    assert not any(e.get("final_cut") for e in epochs[2:])
    assert all(e["widths"] == epochs[1]["widths"] for e in epochs[2:])
    assert summary["macs"] / summary["dense_macs"] <= 0.5 + 1e-9


def test_groups_without_norm_get_explicit_factors_folded_at_the_end() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    ctx = context(model)
    method = create_method("hfp", {"target_macs_ratio": 1.0, "target_params_ratio": 1.0}, 3)
    method.setup(ctx)
    bank = getattr(model, GATES_ATTR)
    assert len(bank.keys("factor")) == 2
    with torch.no_grad():
        for p in bank.parameters():
            p.uniform_(0.5, 1.5)
    model.eval()
    expected = model(X)
    method.on_train_end(ctx)
    assert not hasattr(model, GATES_ATTR)
    assert all(not m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(X), expected)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11"])
def test_lands_on_the_targets(name: str, target: float, tmp_path: Path) -> None:
    summary = train(config(name, target_macs_ratio=target, target_params_ratio=target),
                    tmp_path, progress=False)
    macs = summary["macs"] / summary["dense_macs"]
    params = summary["params"] / summary["dense_params"]
    assert macs <= target + 0.01 and params <= target + 0.01
    assert max(macs, params) >= target - 0.01  # on the target, not far below it
    cut = summary["epochs"][0]  # end_epoch defaults to epochs - 1 = 1
    assert cut["final_cut"] and cut["targets_met"]
    for record in summary["epochs"]:
        for key in ("soft_macs_ratio", "soft_params_ratio", "macs_ratio", "params_ratio"):
            assert 0 < record[key] <= 1.0 + 1e-6
    reloaded = autoprune.load_model(tmp_path / "model.pt")
    assert count_macs_params(reloaded, X) == (summary["macs"], summary["params"])


def test_threshold_pruning_leaves_the_landing_to_the_end_cut(tmp_path: Path) -> None:
    summary = train(config("small_resnet", epochs=3, target_macs_ratio=0.6,
                           target_params_ratio=0.6, threshold=2.0), tmp_path, progress=False)
    first = summary["epochs"][0]  # every factor is below 2.0: only the targets stop the cut
    assert first["removed_channels"] > 0
    assert max(first["macs_ratio"], first["params_ratio"]) > 0.6  # one channel short
    final = (summary["macs"] / summary["dense_macs"], summary["params"] / summary["dense_params"])
    assert max(final) <= 0.6 + 1e-9 and max(final) >= 0.59

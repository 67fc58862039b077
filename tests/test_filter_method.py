"""Filter pruning while training: criteria, allocation, schedule on a real network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.config import ConfigError
from autoprune.engine import TrainContext
from autoprune.methods import create_method
from autoprune.models import create_model

EPOCHS = 4


def make_ctx(name: str = "cifar_vgg11") -> TrainContext:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, input_size=8)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    ctx = TrainContext(model, batch, train_data=None, epochs=EPOCHS, device=torch.device("cpu"))
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return ctx


def first_group(ctx: TrainContext) -> tuple[str, nn.Conv2d, nn.BatchNorm2d]:
    named = dict(ctx.model.named_modules())
    key = "features.0"
    group = ctx.groups()[key]
    bn = next(named[n] for n in group.out_modules if isinstance(named[n], nn.BatchNorm2d))
    return key, named[key], bn


def survivors(conv: nn.Conv2d, original: torch.Tensor) -> set[int]:
    """Which original filters are left: match each surviving row to its original."""
    rows = conv.weight.detach().flatten(1)
    return {int(torch.cdist(r[None], original.flatten(1)).argmin()) for r in rows}


def prune_once(ctx: TrainContext, **params) -> dict:
    method = create_method("filter", {"start_epoch": 1, "end_epoch": 1, **params}, EPOCHS)
    method.setup(ctx)
    method.on_epoch_start(ctx, 1)
    ctx.model.train()
    with torch.no_grad():
        for _ in range(3):  # "training" forward passes: what mean_activation measures
            ctx.model(torch.randn(8, 1, 8, 8))
    return method.on_epoch_end(ctx, 1)


def test_l1_removes_the_filters_with_smallest_l1_norm() -> None:
    ctx = make_ctx()
    key, conv, _ = first_group(ctx)
    width = conv.out_channels
    weak = [1, 4, 7, 10, 13, 20, 30, 40]
    with torch.no_grad():
        conv.weight.mul_(10)
        conv.weight[weak] *= 0.001
    original = conv.weight.detach().clone()
    prune_once(ctx, criterion="l1", target_ratio=len(weak) / width)
    conv = dict(ctx.model.named_modules())[key]
    assert conv.out_channels == width - len(weak)
    assert survivors(conv, original) == set(range(width)) - set(weak)


def test_mean_activation_removes_channels_that_never_fire() -> None:
    ctx = make_ctx()
    key, conv, bn = first_group(ctx)
    width = conv.out_channels
    dead = [0, 5, 9, 33]
    original = conv.weight.detach().clone()
    with torch.no_grad():
        bn.bias[dead] = -1e3  # always negative before the ReLU: mean activation 0
    event = prune_once(ctx, criterion="mean_activation", target_ratio=len(dead) / width)
    conv = dict(ctx.model.named_modules())[key]
    assert event["removed_channels"] > 0
    assert survivors(conv, original) == set(range(width)) - set(dead)


def test_random_removes_the_scheduled_count_and_depends_on_the_seed() -> None:
    picks = []
    for seed in (0, 0, 1):
        ctx = make_ctx()
        key, conv, _ = first_group(ctx)
        original = conv.weight.detach().clone()
        torch.manual_seed(seed)
        prune_once(ctx, criterion="random", target_ratio=0.5)
        conv = dict(ctx.model.named_modules())[key]
        assert conv.out_channels == 32
        picks.append(survivors(conv, original))
    assert picks[0] == picks[1] and picks[0] != picks[2]


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_allocation_reaches_the_target_fraction(allocation: str) -> None:
    ctx = make_ctx("cifar_resnet20")
    dense = ctx.widths()
    prune_once(ctx, criterion="l1", target_ratio=0.6, allocation=allocation, layer_floor=0.1)
    widths = ctx.widths()
    kept = sum(widths.values()) / sum(dense.values())
    assert kept == pytest.approx(0.4, abs=0.03)
    if allocation == "uniform":
        assert all(widths[k] == max(1, round(dense[k] * 0.4)) for k in dense)
    else:
        assert all(widths[k] >= max(1, round(0.1 * dense[k])) for k in dense)


def test_macs_and_params_are_recounted_after_surgery() -> None:
    ctx = make_ctx()
    macs, params, step = ctx.macs, ctx.params, ctx.cost.train
    prune_once(ctx, criterion="l1", target_ratio=0.5)
    assert ctx.macs < 0.35 * macs and ctx.params < 0.35 * params
    assert ctx.cost.train < 0.4 * step


@pytest.mark.parametrize(
    ("params", "key"),
    [({"target_ratio": 1.5}, "target_ratio"), ({"end_epoch": 9}, "end_epoch"),
     ({"criterion": "l3"}, "criterion"), ({"frequency": 0}, "frequency"),
     ({"start_epoch": 3, "end_epoch": 2}, "end_epoch"), ({"bogus": 1}, "bogus")],
)
def test_bad_parameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        create_method("filter", params, EPOCHS)


def test_prune_retrain_prunes_once_before_the_retrain_epochs() -> None:
    with pytest.raises(ConfigError, match="retrain_epochs"):
        create_method("prune_retrain", {"retrain_epochs": EPOCHS}, EPOCHS)
    method = create_method("prune_retrain", {"retrain_epochs": 1, "target_ratio": 0.5}, EPOCHS)
    ctx = make_ctx()
    method.setup(ctx)
    dense_macs = ctx.macs
    for epoch in range(1, EPOCHS + 1):
        method.on_epoch_start(ctx, epoch)
        method.on_epoch_end(ctx, epoch)
        assert (ctx.macs == dense_macs) == (epoch < EPOCHS - 1)

"""``round_to``: pruned widths stay multiples of N; fewer channels go, never more."""

from __future__ import annotations

import tempfile

import pytest
import torch

from autoprune.config import ConfigError, parse_train_config
from autoprune.engine import TrainContext, train
from autoprune.methods import create_method
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex


def test_round_plan_spares_the_requested_channels_of_largest_norm() -> None:
    torch.manual_seed(0)
    model = create_model("cifar_vgg11", num_classes=10, in_channels=1, input_size=8)
    index = DependencyIndex(model, torch.randn(1, 1, 8, 8))
    key = "features.0"  # 64 channels
    norm = model.features[0].weight.detach().abs().flatten(1).sum(1)
    requested = list(range(0, 26))  # keep 38 -> 40: 24 of the 26 go
    plan = index.round_plan({key: requested}, 8)
    assert len(plan[key]) == 24 and set(plan[key]) <= set(requested)
    spared = set(requested) - set(plan[key])
    assert min(float(norm[i]) for i in spared) >= max(float(norm[i]) for i in plan[key])
    assert len(index.round_plan({key: list(range(60))}, 8)[key]) == 56  # keep 4 -> 8
    assert index.round_plan({key: [3]}, 8) == {}  # 63 rounds up to 64: nothing goes
    assert index.round_plan({key: [5, 3]}, 1) == {key: [5, 3]}


@pytest.mark.parametrize("method", ["filter", "hfp", "variational"])
def test_every_pruned_width_is_a_multiple(method: str) -> None:
    """On a real (tiny) training run: each group the method shrank ends on a multiple of
    8, and at least as wide as without rounding."""
    params = {
        "filter": {"target_ratio": 0.55, "end_epoch": 2},
        "hfp": {"target_macs_ratio": 0.4, "target_params_ratio": 0.4, "end_epoch": 2},
        "variational": {"strength": 3.0, "layer_vs_unit": 0.0, "prune_threshold": 0.3},
    }[method]
    widths = {}
    for round_to in (1, 8):
        config = parse_train_config({
            "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 256},
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0},
            "method": method, "method_params": {**params, "round_to": round_to}})
        with tempfile.TemporaryDirectory() as folder:
            summary = train(config, folder, progress=False)
        widths[round_to] = summary["widths"]
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    dense = {k: g.width for k, g in DependencyIndex(model, torch.randn(1, 1, 8, 8)).groups.items()}
    shrunk = {k for k, w in widths[8].items() if w < dense.get(k, w)}
    assert all(widths[8][k] % 8 == 0 for k in shrunk)
    assert all(widths[8][k] >= widths[1][k] for k in widths[1])
    if method != "variational":  # variational may keep every gate at 3 epochs
        assert shrunk and any(widths[1][k] % 8 for k in widths[1])


def test_round_to_is_validated() -> None:
    with pytest.raises(ConfigError, match="method_params.round_to"):
        create_method("filter", {"round_to": 0}, 4)
    with pytest.raises(ConfigError, match="round_to"):
        create_method("dense", {"round_to": 8}, 4)  # dense removes nothing


def test_context_rounds_every_removal() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    ctx = TrainContext(model, batch, train_data=None, epochs=2, device=torch.device("cpu"))
    ctx.round_to = 16
    removed = ctx.remove_channels({k: list(range(5)) for k in ctx.widths()})  # 32 -> 27 -> 32
    assert removed == 0
    ctx.remove_channels({k: list(range(w - 3)) for k, w in ctx.widths().items()})
    assert all(w % 16 == 0 for w in ctx.widths().values())

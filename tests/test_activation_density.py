"""activation_density: the width formula, planted densities, settling, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoprune.config import ConfigError, parse_train_config
from autoprune.engine import train
from autoprune.engine.context import TrainContext
from autoprune.methods import create_method
from autoprune.methods.activation_density import density_width
from autoprune.models import create_model


def _context(name: str) -> TrainContext:
    torch.manual_seed(0)
    model = create_model(name, 10, 1, 8)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return TrainContext(model, (x, y), None, epochs=3, device=torch.device("cpu"))


def _training_passes(ctx: TrainContext, n: int = 3) -> None:
    """Forward passes in train mode, as the engine's steps make them (no update)."""
    ctx.model.train()
    with torch.no_grad():
        for _ in range(n):
            ctx.model(torch.randn(8, 1, 8, 8))


@pytest.mark.parametrize(
    ("width", "density", "aggressiveness", "min_channels", "expected"),
    [
        (32, 0.25, 1.0, 4, 8),
        (10, 0.3, 1.0, 1, 3),  # float noise: 0.3 * 10 must not ceil to 4
        (32, 0.26, 1.0, 4, 9),
        (32, 0.25, 1.5, 4, 12),
        (32, 0.05, 1.0, 4, 4),  # floor
        (3, 0.1, 1.0, 4, 3),  # never grows to reach min_channels
        (32, 0.9, 2.0, 4, 32),  # never grows
        (32, 0.0, 1.0, 1, 1),
    ],
)
def test_density_width_formula(
    width: int, density: float, aggressiveness: float, min_channels: int, expected: int
) -> None:
    assert density_width(width, density, aggressiveness, min_channels) == expected


@pytest.mark.parametrize("aggressiveness", [1.0, 1.5])
def test_planted_densities_set_the_widths(aggressiveness: float) -> None:
    """Zero BN weights and +/-1 biases make a known set of channels always positive: each
    layer's new width is the formula applied to that density, and those channels stay."""
    ctx = _context("small_cnn")
    positives = {"features.0": 8, "features.3": 20, "features.6": 16, "features.9": 48}
    bns = {key: g.modules_of_type(ctx.model, nn.BatchNorm2d)[0] for key, g in ctx.groups().items()}
    for key, bn in bns.items():
        sign = -torch.ones(bn.num_features)
        sign[torch.randperm(bn.num_features)[: positives[key]]] = 1.0
        bn.weight.data.zero_()
        bn.bias.data.copy_(sign)
    method = create_method("activation_density", {"aggressiveness": aggressiveness,
                                                  "min_channels": 2}, epochs=3)
    before = ctx.widths()
    method.on_epoch_start(ctx, 1)
    _training_passes(ctx)
    record = method.on_epoch_end(ctx, 1)
    for key, width in before.items():
        density = positives[key] / width
        assert record["densities"][key] == pytest.approx(density)
        assert ctx.widths()[key] == density_width(width, density, aggressiveness, 2)
        kept = bns[key].bias.detach()
        assert int((kept > 0).sum()) == positives[key]  # all always-positive channels kept
    assert record["widths"] == ctx.widths()


def test_groups_without_rectifier_keep_their_width() -> None:
    """MobileNetV2's linear bottlenecks have no ReLU: no density, no resize."""
    ctx = _context("small_mobilenet")
    method = create_method("activation_density", {}, epochs=3)
    before = ctx.widths()
    method.on_epoch_start(ctx, 1)
    _training_passes(ctx)
    record = method.on_epoch_end(ctx, 1)
    unmeasured = [k for k, d in record["densities"].items() if d is None]
    assert "features.6.conv.6" in unmeasured and "features.7" not in unmeasured
    assert all(ctx.widths()[k] == before[k] for k in unmeasured)
    assert any(ctx.widths()[k] < before[k] for k in before if k not in unmeasured)


def test_training_run_records_and_settles(tmp_path) -> None:
    """Resized widths follow the measured densities; a settled run stops resizing."""
    params = {"density_batches": 2, "aggressiveness": 1.5, "min_channels": 2, "tolerance": 1.0}
    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": 2, "batch_size": 64, "device": "cpu", "threads": 1},
        "method": "activation_density", "method_params": params,
    })
    summary = train(config, tmp_path, progress=False)
    first, second = summary["epochs"]
    assert first["resized"] and first["settled"]  # tolerance 1.0: settled at once
    for key, width in first["widths_before"].items():
        expected = density_width(width, first["densities"][key], 1.5, 2)
        assert first["widths"][key] == expected
    assert not second["resized"] and second["settled"]
    assert summary["params"] == first["params"] < summary["dense_params"]


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"tolerance": 1.5}, "method_params.tolerance"),
        ({"aggressiveness": 0.0}, "method_params.aggressiveness"),
        ({"interval": 4}, "method_params.interval"),
        ({"start_epoch": 0}, "method_params.start_epoch"),
        ({"min_channels": 0}, "method_params.min_channels"),
        ({"density_batches": 0}, "method_params.density_batches"),
        ({"rule": "halve"}, "method_params.rule"),
        ({"min_drop": -0.1}, "method_params.min_drop"),
    ],
)
def test_invalid_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        create_method("activation_density", params, epochs=3)


def _resize_rounds(rule: str, rounds: int) -> tuple[TrainContext, list[dict]]:
    """``rounds`` resize epochs of a BN network whose channels are all alive (random
    weights, about half of every channel's outputs positive)."""
    ctx = _context("small_resnet")
    method = create_method("activation_density", {"rule": rule, "min_channels": 2,
                                                  "density_batches": 4}, epochs=rounds)
    records = []
    for epoch in range(1, rounds + 1):
        method.on_epoch_start(ctx, epoch)
        ctx.model.train()
        with torch.no_grad():
            for _ in range(4):
                ctx.model(torch.randn(64, 1, 8, 8))
        records.append(method.on_epoch_end(ctx, epoch))
    return ctx, records


def test_live_bn_channels_are_not_pruned_to_the_floor() -> None:
    """The collapse the paper's rule shows on BN networks: density ~0.5 at every resize,
    so every resize halves every layer again. ``settle`` shrinks once, sees the density
    no longer fall, and stops; ``paper`` (kept as an option) goes down to the floor."""
    dense = _context("small_resnet").widths()
    ctx, records = _resize_rounds("settle", 6)
    densities = [d for d in records[0]["densities"].values() if d is not None]
    assert all(0.3 < d < 0.7 for d in densities)  # live channels, as under BN
    assert records[-1]["settled"]
    for key, width in ctx.widths().items():
        assert width > 2, f"{key} pruned to the floor"
        assert width >= dense[key] // 4, f"{key}: {dense[key]} -> {width}"
    assert sum(ctx.widths().values()) < sum(dense.values())  # it did shrink
    paper, _ = _resize_rounds("paper", 6)
    assert all(w == 2 for w in paper.widths().values())


def test_settle_keeps_shrinking_a_layer_whose_density_keeps_falling() -> None:
    """Channels that die between resizes lower the density: that layer resizes again."""
    ctx = _context("small_cnn")
    method = create_method("activation_density", {"min_channels": 2}, epochs=3)
    bns = {key: g.modules_of_type(ctx.model, nn.BatchNorm2d)[0] for key, g in ctx.groups().items()}
    key = "features.3"
    live = [0.8, 0.4]  # fraction of always-positive channels at resize 1 and 2
    for epoch, fraction in enumerate(live, start=1):
        bn = bns[key]
        sign = -torch.ones(bn.num_features)
        sign[: math.ceil(fraction * bn.num_features)] = 1.0
        bn.weight.data.zero_()
        bn.bias.data.copy_(sign)
        width = ctx.widths()[key]
        method.on_epoch_start(ctx, epoch)
        _training_passes(ctx)
        record = method.on_epoch_end(ctx, epoch)
        assert ctx.widths()[key] < width, f"resize {epoch} left {key} at {width}"
        assert key not in record["settled_layers"]


def test_rule_state_survives_a_checkpoint() -> None:
    _, records = _resize_rounds("settle", 2)
    method = create_method("activation_density", {}, epochs=3)
    method.load_state_dict({"settled": False, "last_density": {"a": 0.5},
                            "settled_layers": ["b"]})
    state = method.state_dict()
    assert state == {"settled": False, "last_density": {"a": 0.5}, "settled_layers": ["b"]}
    assert records[1]["settled_layers"]

"""Contract tests: every registered PruningMethod x a ResNet, a VGG and a MobileNet-style net.

A method registered tomorrow is tested here the moment it is registered: it must train,
change the network only physically, keep the compute counts honest, and leave a model
that reloads.
"""

from __future__ import annotations

import math

import pytest
import torch

import autoprune
from autoprune.compute import count_macs_params
from autoprune.config import parse_train_config
from autoprune.engine import train
from autoprune.methods import list_methods

EPOCHS = 3
ARCHITECTURES = ["small_resnet", "cifar_vgg11", "small_mobilenet"]
# Settings that make each method act within three short epochs; a method not listed
# here runs with its defaults, which must be valid for a 3-epoch run.
QUICK_PARAMS: dict[str, dict] = {
    "filter": {"target_ratio": 0.5, "start_epoch": 1, "end_epoch": 2},
    "prune_retrain": {"target_ratio": 0.5, "retrain_epochs": 1},
    "activation_density": {"start_epoch": 1, "interval": 1, "density_batches": 2},
    "variational": {"strength": 2.0},
    "cgap": {"seed_width": 0.5, "growth_interval": 1, "growth_end_epoch": 1,
             "prune_start_epoch": 2, "prune_end_epoch": 3, "prune_ratio": 0.3},
    "hfp": {"target_macs_ratio": 0.5, "target_params_ratio": 0.5, "interval": 1},
}


def run(method: str, model: str, tmp_path) -> dict:
    config = parse_train_config({
        "model": model,
        "dataset": {"name": "digits", "train_subset": 128, "val_fraction": 0.1},
        "training": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.05, "seed": 0},
        "method": method,
        "method_params": QUICK_PARAMS.get(method, {}),
    })
    return train(config, tmp_path, progress=False)


@pytest.mark.parametrize("model", ARCHITECTURES)
@pytest.mark.parametrize("method", list_methods())
def test_method_contract(method: str, model: str, tmp_path) -> None:
    summary = run(method, model, tmp_path)
    epochs = summary["epochs"]
    assert len(epochs) == EPOCHS
    # Training steps ran in every epoch, including those after a surgery.
    assert all(math.isfinite(e["train_loss"]) and e["train_loss"] > 0 for e in epochs)
    flops = [0.0] + [e["train_flops"] for e in epochs]
    assert all(b > a for a, b in zip(flops, flops[1:]))
    # The counts describe the network as it is (recounted after every change).
    reloaded = autoprune.load_model(tmp_path / "model.pt")
    x = torch.randn(1, 1, 8, 8)
    macs, params = count_macs_params(reloaded, x)
    assert (macs, params) == (summary["macs"], summary["params"])
    assert sum(p.numel() for p in reloaded.parameters()) == params
    assert reloaded(x).shape == (1, 10)
    if method != "dense":
        assert summary["macs"] < summary["dense_macs"], "the method removed nothing"
    else:
        assert summary["macs"] == summary["dense_macs"]


# Settings that keep every method acting over six epochs (each resize, prune step or gate
# decision repeated), at its paper's kind of target.
REPEATED_PARAMS: dict[str, dict] = {
    "filter": {"target_ratio": 0.5, "start_epoch": 1, "end_epoch": 5},
    "prune_retrain": {"target_ratio": 0.5, "retrain_epochs": 2},
    "activation_density": {"start_epoch": 1, "interval": 1, "density_batches": 2,
                           "min_channels": 2},
    "variational": {"strength": 1.0},
    "cgap": {"seed_width": 0.5, "growth_interval": 1, "growth_end_epoch": 2,
             "prune_start_epoch": 3, "prune_end_epoch": 5, "prune_ratio": 0.5},
    "hfp": {"target_macs_ratio": 0.3, "target_params_ratio": 0.5, "interval": 1},
}


@pytest.mark.parametrize("method", [m for m in list_methods() if m != "dense"])
def test_live_bn_network_is_not_pruned_to_its_floor(method: str, tmp_path) -> None:
    """A BN network whose channels all carry signal (a ResNet learning digits), pruned to
    about a third of its MACs, however many times the method acts: no layer collapses to
    its floor, and each keeps at least an eighth of its channels (activation density's
    paper rule halved every layer at every resize, down to ``min_channels``)."""
    config = parse_train_config({
        "model": "small_resnet",
        "dataset": {"name": "digits", "train_subset": 256, "val_fraction": 0.1},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.05, "seed": 0},
        "method": method,
        "method_params": REPEATED_PARAMS[method],
    })
    summary = train(config, tmp_path, progress=False)
    dense = {"conv1": 16, "layer1.0.conv1": 16, "layer2.0.conv1": 32, "layer3.0.conv1": 64}
    widths = autoprune.load_model(tmp_path / "model.pt")
    final = {name: widths.get_submodule(name).out_channels for name in dense}
    floor = REPEATED_PARAMS[method].get("min_channels", 1)
    for name, width in final.items():
        assert width > floor and width >= dense[name] // 8, f"{name}: {dense[name]} -> {width}"
    assert summary["macs"] < summary["dense_macs"]


@pytest.mark.parametrize("method", list_methods())
def test_every_numeric_parameter_declares_its_range(method: str) -> None:
    """Ranges are declared on the Params fields (``bounded`` / ``epoch_field``) and checked
    by the base class: every number a user can set has one, and a value outside it is a
    ConfigError naming the key."""
    import dataclasses
    import typing

    from autoprune.config import ConfigError
    from autoprune.methods import create_method, get_method
    from autoprune.methods.timing import epoch_fields

    params = get_method(method).Params
    hints = typing.get_type_hints(params)
    epochs = epoch_fields(params)
    for f in dataclasses.fields(params):
        if hints[f.name] not in (int, float):
            continue
        assert "autoprune.range" in f.metadata or f.name in epochs, f"{method}.{f.name}"
        with pytest.raises(ConfigError, match=f"method_params.{f.name}"):
            create_method(method, {f.name: 10**7}, epochs=10)

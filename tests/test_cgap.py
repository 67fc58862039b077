"""cgap and growth surgery: function kept, optimiser state kept, reload, phases, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune
from autoprune.config import ConfigError, parse_train_config
from autoprune.engine import train
from autoprune.engine.context import TrainContext
from autoprune.errors import UserError
from autoprune.methods import create_method
from autoprune.methods.cgap import growth_plan, saliency_prune_plan, seed_plan
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, SurgeryError, save_model
from autoprune.surgery.grow import check_growable, grow_channels


def _model(name: str, in_channels: int = 1, size: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A model with trained-looking batch-norm statistics and parameters."""
    torch.manual_seed(0)
    model = create_model(name, 10, in_channels, size)
    model.autoprune_build = {"name": name, "num_classes": 10, "in_channels": in_channels,
                             "input_size": size}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
    x = torch.randn(8, in_channels, size, size)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), x


def _random_plan(index: DependencyIndex) -> dict[str, list[int]]:
    """Split about a third of every group's channels, some of them twice."""
    g = torch.Generator().manual_seed(1)
    return {
        key: torch.randint(0, group.width, (max(1, group.width // 3),), generator=g).tolist()
        for key, group in index.groups.items()
    }


@pytest.fixture(scope="module")
def cgap_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("cgap")
    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 256},
        "training": {"epochs": 5, "batch_size": 64, "device": "cpu", "threads": 1},
        "method": "cgap",
        "method_params": {"seed_width": 0.4, "growth_rate": 0.5, "growth_end_epoch": 2,
                          "prune_start_epoch": 3, "prune_end_epoch": 4, "prune_ratio": 0.5},
    })
    return train(config, out, progress=False), out


def test_params_rise_during_growth_and_fall_during_pruning(cgap_run: tuple) -> None:
    summary, _ = cgap_run
    epochs = summary["epochs"]
    params = [r["params"] for r in epochs]
    assert [r["phase"] for r in epochs] == ["growth", "growth", "prune", "prune", "train"]
    assert epochs[0]["grown_channels"] > 0 and epochs[1]["grown_channels"] > 0
    assert params[0] < params[1]
    assert params[1] > params[2] > params[3] == params[4]
    assert epochs[3]["pruned_fraction"] == pytest.approx(0.5)
    assert summary["params"] < summary["dense_params"]


def test_trained_model_file_reloads(cgap_run: tuple) -> None:
    summary, out = cgap_run
    model = autoprune.load_model(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == summary["params"]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11", "small_mobilenet"])
def test_growth_preserves_eval_outputs(name: str) -> None:
    model, x = _model(name)
    with torch.no_grad():
        before = model(x)
    index = DependencyIndex(model, x)
    plan = _random_plan(index)
    widths = {k: g.width for k, g in index.groups.items()}
    grown = grow_channels(model, index, plan, noise=0.1)
    assert grown == sum(len(v) for v in plan.values())
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, atol=1e-4, rtol=0)
    new_widths = {k: g.width for k, g in DependencyIndex(model, x).groups.items()}
    assert new_widths == {k: widths[k] + len(plan[k]) for k in widths}


def test_growth_keeps_optimizer_state_and_zeroes_new_elements() -> None:
    model, x = _model("small_resnet")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(x), torch.arange(8)).backward()
    optimizer.step()
    old = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    index = DependencyIndex(model, x)
    grow_channels(model, index, _random_plan(index), optimizer, noise=0.1)
    params = dict(model.named_parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in params.values()
    }
    grew = 0
    for name, p in params.items():
        buf = optimizer.state[p]["momentum_buffer"]
        assert buf.shape == p.shape
        kept = tuple(slice(0, s) for s in old[name].shape)
        assert torch.equal(buf[kept], old[name])  # new channels are appended at the end
        assert buf.abs().sum() == pytest.approx(old[name].abs().sum().item())  # rest is 0
        grew += p.numel() > old[name].numel()
    assert grew > 0
    nn.functional.cross_entropy(model(x), torch.arange(8)).backward()
    optimizer.step()  # the rebound optimiser works on the grown tensors


def test_grown_model_saves_and_reloads(tmp_path) -> None:
    model, x = _model("small_mobilenet")  # depthwise convolutions change `groups`
    index = DependencyIndex(model, x)
    grow_channels(model, index, _random_plan(index), noise=0.1)
    with torch.no_grad():
        expected = model(x)
    save_model(model, tmp_path / "grown.pt")
    reloaded = autoprune.load_model(tmp_path / "grown.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)


def test_concatenation_is_not_growable() -> None:
    torch.manual_seed(0)
    model = create_model("densenet121", 10, 3, 32)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    ctx = TrainContext(model, (x, y), None, epochs=3, device=torch.device("cpu"))
    widths = ctx.widths()
    method = create_method("cgap", {}, epochs=3)
    with pytest.raises(SurgeryError, match=r"layer 'features\.denseblock\d\.denselayer\d+\.conv2'.*"
                                           r"concatenation") as error:
        method.setup(ctx)
    assert isinstance(error.value, UserError)  # one line and exit code 2 on the command line
    assert ctx.widths() == widths  # the error comes before the seed is cut


def test_flatten_of_a_spatial_map_is_not_growable() -> None:
    model = create_model("vgg11_bn", 10, 3, 32)
    index = DependencyIndex(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(SurgeryError, match=r"layer 'classifier\.0'.*flatten"):
        check_growable(model, index)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"growth_end_epoch": 7}, "growth_end_epoch"),
        ({"growth_end_epoch": 3, "prune_start_epoch": 2}, "prune_start_epoch"),
        ({"growth_end_epoch": 2, "prune_start_epoch": 2}, "prune_start_epoch"),
        ({"growth_end_epoch": 6}, "prune_start_epoch"),
        ({"prune_start_epoch": 4, "prune_end_epoch": 3}, "prune_end_epoch"),
        ({"prune_end_epoch": 9}, "prune_end_epoch"),
        ({"seed_width": 0.5, "max_width": 0.4}, "max_width"),
        ({"seed_width": 0.0}, "seed_width"),
        ({"growth_interval": 3, "growth_end_epoch": 2}, "growth_interval"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
    ],
)
def test_contradictory_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method_params.{key}"):
        create_method("cgap", params, epochs=6)


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
def test_defaults_are_valid_for_any_epochs(epochs: int) -> None:
    params = create_method("cgap", {}, epochs=epochs).params
    growth_end, prune_start, prune_end = params.phases(epochs)
    assert 0 <= growth_end < prune_start <= prune_end <= epochs


def test_seed_plan_keeps_the_first_channels() -> None:
    assert seed_plan({"a": 10, "b": 1}, 0.3) == {"a": list(range(3, 10))}


def test_growth_goes_to_salient_layers_within_caps() -> None:
    saliency = {"a": torch.tensor([1.0, 3.0, 2.0, 0.0]), "b": torch.full((4,), 0.5),
                "c": torch.ones(4)}
    plan = growth_plan(saliency, {"a": 4, "b": 4, "c": 4}, {"a": 8, "b": 8, "c": 5}, rate=0.5)
    # mean saliencies 1.5, 0.5, 1.0 around an average of 1.0
    assert plan["a"] == [1, 2, 0]  # 0.5 * 4 * 1.5 = 3, most salient first
    assert len(plan["b"]) == 1  # 0.5 * 4 * 0.5 = 1
    assert len(plan["c"]) == 1  # 0.5 * 4 * 1.0 = 2, capped at 5 - 4


def test_saliency_pruning_ranks_all_layers_and_keeps_floors() -> None:
    saliency = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b": torch.tensor([0.1, 0.2, 0.3, 0.4])}
    plan = saliency_prune_plan(saliency, {"a": 4, "b": 4}, {"a": 4, "b": 4}, 0.5, floor=0.25)
    assert plan == {"a": [3], "b": [0, 1, 2]}  # keeps 4 of 8: 3 of a, the floor (1) of b

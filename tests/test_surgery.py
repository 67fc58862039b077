"""Structural surgery: function preservation, optimiser state, save/reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, SurgeryError, remove_channels, save_model

FAMILIES = [
    ("cifar_resnet20", 8),
    ("cifar_vgg11", 8),
    ("small_mobilenet", 8),
    ("mobilenet_v2", 32),
    ("densenet121", 32),
]


def build(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=1, input_size=size)
    model.autoprune_build = {  # what the engine records for saving
        "name": name, "num_classes": 5, "in_channels": 1, "input_size": size,
    }
    randomise_bn(model)
    return model.eval()


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode outputs depend on every entry."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def zero_channels(index: DependencyIndex, key: str, idxs: list[int]) -> None:
    """Make channels ``idxs`` of group ``key`` contribute nothing, without removing them:
    zero the producing filters and their batch-norm entries in every coupled layer."""
    group = index.pruning_group(key, idxs)
    with torch.no_grad():
        for dep, dep_idxs in group:
            if not index.graph.is_out_channel_pruning_fn(dep.handler):
                continue
            module = dep.target.module
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.weight[dep_idxs] = 0
                if module.bias is not None:
                    module.bias[dep_idxs] = 0


def pick_channels(width: int, seed: int) -> list[int]:
    n = max(1, width // 3)
    return torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:n].tolist()


@pytest.mark.parametrize(("name", "size"), FAMILIES)
def test_removal_preserves_function_of_zeroed_channels(name: str, size: int) -> None:
    model = build(name, size)
    x = torch.randn(4, 1, size, size)
    index = DependencyIndex(model, x)
    keys = list(index.groups)
    assert keys, "no prunable group found"
    # several groups: first, a middle one, last (residual-coupled, concat-fed, depthwise ...)
    chosen = {k: pick_channels(index.groups[k].width, i)
              for i, k in enumerate({keys[0], keys[len(keys) // 2], keys[-1]})}
    for key, idxs in chosen.items():
        zero_channels(index, key, idxs)
    with torch.no_grad():
        before = model(x)
    params_before = sum(p.numel() for p in model.parameters())
    removed = remove_channels(model, chosen, x, index=index)
    with torch.no_grad():
        after = model(x)
    assert removed == sum(len(v) for v in chosen.values())
    assert sum(p.numel() for p in model.parameters()) < params_before
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    widths = DependencyIndex(model, x).groups
    for key, idxs in chosen.items():
        assert widths[key].width == index.groups[key].width - len(idxs)


def test_classifier_outputs_are_never_a_group() -> None:
    model = build("cifar_resnet20", 8)
    index = DependencyIndex(model, torch.randn(2, 1, 8, 8))
    assert index.classifier is model.fc
    for group in index.groups.values():
        assert "fc" not in group.out_modules


def test_removing_a_whole_group_is_refused() -> None:
    model = build("cifar_vgg11", 8)
    x = torch.randn(2, 1, 8, 8)
    index = DependencyIndex(model, x)
    key = next(iter(index.groups))
    with pytest.raises(SurgeryError, match="empty"):
        remove_channels(model, {key: list(range(index.groups[key].width))}, x, index=index)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_of_surviving_weights_is_carried(opt_name: str) -> None:
    model = build("cifar_resnet20", 8).train()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    opt: torch.optim.Optimizer
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        key_name = "momentum_buffer"
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        key_name = "exp_avg"
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    conv = model.layer1[0].conv1
    old_state = opt.state[conv.weight][key_name].clone()
    index = DependencyIndex(model, x)
    removed = [0, 3, 5]
    remove_channels(model, {"layer1.0.conv1": removed}, x, optimizer=opt, index=index)
    kept = [i for i in range(old_state.shape[0]) if i not in removed]
    new_weight = model.layer1[0].conv1.weight
    assert new_weight.shape[0] == old_state.shape[0] - 3
    torch.testing.assert_close(opt.state[new_weight][key_name], old_state[kept])
    # The consumer's input columns were sliced the same way.
    consumer = model.layer1[0].conv2.weight
    assert opt.state[consumer][key_name].shape == consumer.shape
    # The optimiser holds exactly the model's parameters and a step runs after surgery.
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters()}
    assert all(id(p) in opt_params for p in opt.state)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_pruned_model_saves_and_reloads_without_pickled_code(tmp_path) -> None:
    model = build("small_mobilenet", 8)
    x = torch.randn(3, 1, 8, 8)
    index = DependencyIndex(model, x)
    plan = {k: pick_channels(g.width, i) for i, (k, g) in enumerate(index.groups.items())}
    remove_channels(model, plan, x, index=index)
    save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data only
    assert payload["format"] == "autoprune-model/1"
    reloaded = autoprune.load_model(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def test_load_model_rejects_other_files(tmp_path) -> None:
    bad = tmp_path / "evil.pt"
    torch.save({"x": nn.Linear(2, 2)}, bad)  # a pickled module: refused by weights_only
    with pytest.raises(autoprune.errors.UserError):
        autoprune.load_model(bad)
    with pytest.raises(autoprune.errors.UserError, match="not found"):
        autoprune.load_model(tmp_path / "missing.pt")

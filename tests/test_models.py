"""Tests for the model registry: contract over every model, architecture details, errors, and
that Torch-Pruning can trace and prune representative models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.compute import count_macs_params
from autoprune.errors import UserError
from autoprune.methods.support import measure_support
from autoprune.models import (
    FAMILIES,
    BasicBlock,
    ModelInfo,
    _registry,
    create_model,
    list_models,
    model_info,
    register_model,
)
from autoprune.surgery import DependencyIndex, UnprunableModelError, remove_channels

MAX_REAL_PARAMS = 30_000_000  # bigger models are only built on the meta device


def _test_size(name: str) -> int:
    return max(32, model_info(name).min_input_size)


def _count_params_on_meta(name: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Parameter count without allocating or initialising the weights."""
    size = _test_size(name)
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=7, in_channels=1, input_size=size)
    except NotImplementedError:
        # torchvision's regnet computes its widths with tensors, which fails under a meta
        # device context; instead move every parameter to meta as it is registered.
        original = nn.Module.register_parameter

        def register(self: nn.Module, pname: str, param: nn.Parameter | None) -> None:
            if param is not None:
                param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            original(self, pname, param)

        with monkeypatch.context() as m:
            m.setattr(nn.Module, "register_parameter", register)
            model = create_model(name, num_classes=7, in_channels=1, input_size=size)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registered model builds and maps (2, 1, S, S) to (2, 7) logits."""
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.name == name
    assert info.family in FAMILIES and info.description and info.min_input_size >= 1
    n_params = _count_params_on_meta(name, monkeypatch)
    assert n_params > 0
    if n_params > MAX_REAL_PARAMS:
        pytest.skip(f"{name} has {n_params / 1e6:.1f}M parameters; only built on meta")
    size = _test_size(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=1, input_size=size).eval()
    assert sum(p.numel() for p in model.parameters()) == n_params
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_list_models_sorted_and_filtered() -> None:
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert list_models("cifar_resnet*") == [
        "cifar_resnet110",
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet56",
    ]
    assert list_models("small_*") == ["small_cnn", "small_mobilenet", "small_resnet"]
    assert list_models("cifar_vgg*") == ["cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19"]
    for name in ("resnet18", "mobilenet_v2", "densenet121", "inception_v3", "googlenet", "vgg11"):
        assert model_info(name).family == "torchvision"
    assert not list_models("vit_*") and not list_models("swin_*") and not list_models("maxvit_*")


@pytest.mark.parametrize(("name", "n"), [("20", 3), ("32", 5), ("56", 9), ("110", 18)])
def test_cifar_resnet_depth(name: str, n: int) -> None:
    model = create_model(f"cifar_resnet{name}", num_classes=10)
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [n, n, n]
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 3 * n
    assert 6 * n + 2 == int(name)
    for i, stage in enumerate(stages):
        for j, block in enumerate(stage):
            projection = i > 0 and j == 0
            assert block.has_identity_shortcut is not projection
            assert isinstance(block.shortcut, nn.Sequential if projection else nn.Identity)


def test_cifar_resnet20_param_count() -> None:
    # Option A (paper) gives 0.27M; option-B projections add 2,752 (10 classes: 272,474).
    n = sum(p.numel() for p in create_model("cifar_resnet20", num_classes=10).parameters())
    assert 270_000 < n < 275_000


def test_identity_block_is_removable() -> None:
    """An identity-shortcut block computes relu(branch(x) + x) and can become nn.Identity."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, input_size=8).eval()
    block = model.layer2[1]
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(branch + x))
        model.layer2[1] = nn.Identity()
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("size", "pools"), [(8, 3), (28, 4), (32, 5)])
def test_cifar_vgg_skips_pools_for_small_inputs(size: int, pools: int) -> None:
    model = create_model("cifar_vgg11", num_classes=7, in_channels=1, input_size=size)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == pools
    assert model.classifier.in_features == 512
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("name", ["small_cnn", "small_resnet", "small_mobilenet"])
def test_small_nets(name: str, size: int, in_channels: int) -> None:
    model = create_model(name, num_classes=10, in_channels=in_channels, input_size=size)
    model.train()
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_small_mobilenet_structure() -> None:
    model = create_model("small_mobilenet", num_classes=10)
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules())
    assert any(getattr(m, "use_residual", False) for m in model.modules())
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert isinstance(model.classifier, nn.Linear)


@pytest.mark.parametrize("name", ["cifar_resnet20", "small_mobilenet", "resnet18", "googlenet"])
def test_deterministic_under_seed(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(create_model(name, num_classes=5, in_channels=1).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_first_conv_replaced_for_torchvision() -> None:
    model = create_model("resnet18", num_classes=4, in_channels=1)
    assert model.conv1.in_channels == 1
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == (
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert model.conv1.bias is None
    assert create_model("densenet121", 4, in_channels=5).features.conv0.in_channels == 5


def test_unknown_model_raises_user_error() -> None:
    with pytest.raises(UserError, match="cifar_resnet21") as excinfo:
        create_model("cifar_resnet21", num_classes=10)
    assert "cifar_resnet20" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(UserError, match="no_such_net"):
        model_info("no_such_net")


def test_too_small_input_raises_user_error() -> None:
    msg = "model 'inception_v3' needs inputs of at least 75x75 pixels; the dataset gives 8x8"
    with pytest.raises(UserError) as excinfo:
        create_model("inception_v3", num_classes=10, input_size=8)
    assert str(excinfo.value) == msg
    with pytest.raises(UserError, match="densenet121"):
        create_model("densenet121", num_classes=10, input_size=28)


def test_bad_arguments_raise_user_error() -> None:
    with pytest.raises(UserError, match="num_classes"):
        create_model("small_cnn", num_classes=0)
    with pytest.raises(UserError, match="width"):
        create_model("small_cnn", num_classes=10, width=2)
    with pytest.raises(UserError, match="weights"):
        create_model("resnet18", num_classes=10, weights="DEFAULT")


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Undo registrations made by a test."""
    _registry.list_models()  # the lazy families first, so that the snapshot has them
    infos, builders = dict(_registry._INFOS), dict(_registry._BUILDERS)
    yield
    _registry._INFOS.clear()
    _registry._INFOS.update(infos)
    _registry._BUILDERS.clear()
    _registry._BUILDERS.update(builders)


def test_register_model(scratch_registry: None) -> None:
    @register_model("tiny_linear", "small", min_input_size=4)
    def tiny_linear(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        """A flatten + linear model."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))

    assert "tiny_linear" in list_models()
    assert model_info("tiny_linear") == ModelInfo(
        "tiny_linear", "small", 4, "A flatten + linear model."
    )
    assert create_model("tiny_linear", 3, 2, 4)(torch.randn(2, 2, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_linear", "small")(tiny_linear)
    with pytest.raises(ValueError, match="family"):
        register_model("other", "no_family")


PRUNABLE = ["cifar_resnet20", "cifar_vgg11", "small_cnn", "small_mobilenet", "mobilenet_v2"]


@pytest.mark.parametrize("name", [*PRUNABLE, "densenet121"])
def test_torch_pruning_can_prune(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=3, input_size=32).eval()
    example = torch.randn(2, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    before = conv.out_channels
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1])
    group.prune()
    assert conv.out_channels == before - 2
    with torch.no_grad():
        assert model(example).shape == (2, 7)


def _conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers of one sample, from their shapes."""
    total = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * (module.in_channels // module.groups) * kernel
        else:
            total += output[0].numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return total


def _zero_channels(model: nn.Module, index: DependencyIndex, plan: dict[str, list[int]]) -> None:
    """Make the planned channels output exactly zero (weights, biases, norm affine)."""
    named = dict(model.named_modules())
    with torch.no_grad():
        for key, idxs in plan.items():
            rows = torch.tensor(idxs)
            for name in index.groups[key].out_modules:
                module = named[name]
                for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if tensor is not None:
                        tensor[rows] = 0.0


# Deeper members of a family whose smallest member is tested, where tracing takes 15-45 s.
_COVERED_BY = {"densenet161": "densenet121", "densenet169": "densenet121",
               "densenet201": "densenet121"}

# Normalisations over the channel axis: zeroed channels still change their statistics.
_CHANNEL_STATISTICS = (nn.LayerNorm, nn.GroupNorm)


@pytest.mark.parametrize("name", list_models())
def test_every_model_prunes_correctly_or_is_refused(name: str, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """What `autoprune models` marks is what the network allows, and pruning about half of
    the channels of several groups with the project's surgery gives a network that runs,
    is counted from its new shapes and (where zeroed channels make it exact) computes the
    same function as the network with those channels zeroed."""
    info = model_info(name)
    cover = _COVERED_BY.get(name)
    if cover:
        assert info.supports == model_info(cover).supports
        pytest.skip(f"{name} repeats the blocks of {cover} (tested), with a graph too big to "
                    "trace quickly")
    n_params = _count_params_on_meta(name, monkeypatch)
    if n_params > MAX_REAL_PARAMS:
        pytest.skip(f"{name} has {n_params / 1e6:.1f}M parameters; its marks were measured "
                    "once with autoprune.methods.support")
    size = _test_size(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=1, input_size=size).eval()
    x = torch.randn(2, 1, size, size)
    support = measure_support(model, x[:1])
    assert support.kinds == info.supports, support.why_not
    if not support.prune:
        with pytest.raises(UnprunableModelError, match="cannot be followed for pruning"):
            DependencyIndex(model, x)
        with torch.no_grad():
            assert model(x).shape == (2, 7)  # it still trains dense
        return

    index = DependencyIndex(model, x)
    keys = list(index.groups)
    chosen = keys[:: max(1, len(keys) // 4)][:4]
    generator = torch.Generator().manual_seed(1)
    plan = {}
    for key in chosen:
        width = index.groups[key].width
        request = torch.randperm(width, generator=generator)[: width // 2].tolist()
        plan[key] = index.conform(key, request)
        group = index.groups[key]
        if group.slots > 1:  # the same number from every block of a grouped convolution
            per = width // group.slots
            counts = {sum(1 for i in plan[key] if i // per == b) for b in range(group.slots)}
            assert len(counts) == 1, counts
    plan = {k: v for k, v in plan.items() if v}
    assert plan
    widths = {k: index.groups[k].width for k in plan}
    _zero_channels(model, index, plan)
    with torch.no_grad():
        reference = model(x)
    macs_before = count_macs_params(model, x)[0]

    removed = remove_channels(model, plan, x, None, index)

    assert removed == sum(len(v) for v in plan.values())
    after = DependencyIndex(model, x)
    for key, idxs in plan.items():
        assert after.groups[key].width == widths[key] - len(idxs)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    macs, own = count_macs_params(model, x)[0], _conv_linear_macs(model, x)
    assert macs < macs_before
    assert own <= macs <= 1.15 * own  # conv/linear MACs plus norms, activations, pooling
    if not any(isinstance(m, _CHANNEL_STATISTICS) for m in model.modules()):
        scale = reference.abs().max().item()
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5 * max(scale, 1e-30))

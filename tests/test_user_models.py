"""The user's own network and data: import references, ``autoprune check``, training with
filter and hfp, physical removal equal to zeroing, model files without trust, ONNX, and the
Python API. Networks are written the way users write them (not registered ones), tiny, on
a synthetic dataset from a factory; CPU, seconds each.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import autoprune
from autoprune import references
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.surgery import DependencyIndex, remove_channels

SHAPE = (3, 16, 16)
CLASSES = 4


@pytest.fixture(scope="module", autouse=True)
def fresh_references() -> Any:
    """What this module resolves stays in this module: a later search in the same pytest
    process must not ship these test modules to its Ray workers."""
    saved = {name: copy.copy(getattr(references, name))
             for name in ("_CONFIG_DIRS", "_LIVE", "_TRUSTED", "_SHIPPED")}
    path = list(sys.path)
    yield
    for name, value in saved.items():
        setattr(references, name, value)
    sys.path[:] = path


# --- the user's code --------------------------------------------------------------------


def load_data(train: int = 96, test: int = 48) -> tuple[TensorDataset, TensorDataset]:
    """Synthetic (train, test): each class a bright quadrant plus noise, uint8 3x16x16."""

    def split(n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % CLASSES
        images = torch.rand(n, *SHAPE, generator=g) * 100
        for i, label in enumerate(labels.tolist()):
            r, c = divmod(label, 2)
            images[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 150
        return TensorDataset(images.to(torch.uint8), labels)

    return split(train, 1), split(test, 2)


def load_three_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    train, test = load_data()
    return train, test, test


class ConcatNet(nn.Module):
    """Inception-like: two branches joined with torch.cat."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                               nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
                                 nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(x.mean((2, 3)))


class SepSENet(nn.Module):
    """Depthwise-separable block with squeeze-excitation (x * sigmoid(...))."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU())
        self.squeeze = nn.Linear(16, 4)
        self.excite = nn.Linear(4, 16)
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3))))))
        x = self.pw(x * gate[:, :, None, None])
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ProjBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.proj(x))


def proj_resnet(num_classes: int, in_channels: int, width: int = 8) -> nn.Module:
    """A residual network with projection shortcuts, built by a function."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(), ProjBlock(width, 2 * width), ProjBlock(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def tv_mobilenet(num_classes: int) -> nn.Module:
    """torchvision's MobileNetV3-Small (a quarter wide) with its head replaced."""
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.25)
    model.classifier[3] = nn.Linear(model.classifier[3].in_features, num_classes)
    return model


def shuffle(x: torch.Tensor) -> torch.Tensor:
    """ShuffleNet's channel shuffle: a reshape across channels."""
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, stride, 1, groups=cout, bias=False), nn.BatchNorm2d(cout),
        nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShuffleBlock(nn.Module):
    """Half the channels through a branch, the other half kept, then shuffled."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.left = branch(cin, cout // 2, stride) if stride > 1 else nn.Identity()
        self.right = branch(cin if stride > 1 else cout // 2, cout // 2, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            return shuffle(torch.cat([self.left(x), self.right(x)], 1))
        a, b = x.chunk(2, dim=1)
        return shuffle(torch.cat([a, self.right(b)], 1))


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 24, 3, padding=1)
        self.stage = nn.Sequential(ShuffleBlock(24, 48, 2), ShuffleBlock(48, 48, 1),
                                   ShuffleBlock(48, 48, 1))
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(torch.relu(self.stem(x))).mean((2, 3)))


class ShuffleOnce(nn.Module):
    """One shuffle before a grouped convolution: Torch-Pruning follows it in shape only."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(shuffle(torch.relu(self.conv1(x)))).mean((2, 3)))


class FixedViewNet(nn.Module):
    """Sizes written into the forward pass: prunable on the graph, broken once pruned."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], 8 * 4 * 4))


def returns_int(num_classes: int) -> int:
    return num_classes


def bad_data() -> TensorDataset:
    return load_data()[0]


def mixed_shapes() -> tuple[list[tuple[torch.Tensor, int]], list[tuple[torch.Tensor, int]]]:
    good = [(torch.zeros(3, 16, 16), 0)] * 4
    return [*good, (torch.zeros(3, 12, 16), 1)], good


NOT_CALLABLE = 42

PRUNABLE = {
    "concat": ConcatNet,
    "sep_se": SepSENet,
    "proj_resnet": proj_resnet,
    "torchvision": tv_mobilenet,
}
MODULE = __name__.rpartition(".")[2]


def config(method: str = "filter", **changes: Any) -> dict[str, Any]:
    params = {"filter": {"target_ratio": 0.5, "start_epoch": 1, "end_epoch": 2},
              "hfp": {"target_macs_ratio": 0.5, "target_params_ratio": 0.6, "end_epoch": 2},
              "dense": {}}[method]
    return {"model": "dummy", "dataset": {"factory": f"{MODULE}:load_data"},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.05, "seed": 0,
                         "bn_recalibration_batches": 2},
            "method": method, "method_params": params, **changes}


def example() -> torch.Tensor:
    return torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))


def build(fn: Any) -> nn.Module:
    torch.manual_seed(0)
    from autoprune.models.user import build_user_model

    return build_user_model(references.register(fn), {}, CLASSES, SHAPE[0], SHAPE[1])


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# --- check ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_check_finds_channel_groups(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{MODULE}:{PRUNABLE[name].__name__}"
    code, out, err = cli(["check", ref, "--input-shape", "3,16,16", "--num-classes", "4",
                          "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["supports"]["prune"] and report["groups"] and report["macs"] > 0
    assert report["blocked"][0]["why"].startswith("the classifier")
    assert report["inexact"] == []  # removal = zeroing, checked on the network itself
    if name == "concat":  # the concatenation stops growth
        assert not report["supports"]["grow"] and "concatenation" in report["why_not"]["grow"]


def test_check_text_names_what_cannot_be_pruned(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["check", f"{MODULE}:FixedViewNet", "--dataset", f"{MODULE}:load_data"],
                       capsys)
    assert code == 0
    assert "channel removal" in out and "breaks the forward pass" in out
    assert "conv: removing a channel breaks the forward pass" in out
    assert "input 3x16x16, 4 classes" in out


def test_check_flags_a_shuffle_followed_in_shape_only(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    code, out, _ = cli(["check", f"{MODULE}:ShuffleOnce", "--input-shape", "3,8,8"], capsys)
    assert code == 0 and "pruned inexactly (1)" in out and out.endswith("  conv1\n")


def test_check_refuses_an_untraceable_network(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["check", f"{MODULE}:ShuffleNet", "--input-shape", "3,16,16"], capsys)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("error:") and "'stage'" in err


# --- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Filter and hfp runs of every prunable network, trained through the Python API."""
    torch.set_num_threads(1)
    runs = {}
    for name, fn in PRUNABLE.items():
        for method in ("filter", "hfp"):
            out = tmp_path_factory.mktemp(f"{name}-{method}")
            autoprune.train(config(method), model=fn, out=out)
            runs[name, method] = out
    return runs


@pytest.mark.parametrize("method", ["filter", "hfp"])
@pytest.mark.parametrize("name", list(PRUNABLE))
def test_training_removes_channels(name: str, method: str,
                                   trained: dict[tuple[str, str], Path]) -> None:
    summary = json.loads((trained[name, method] / "summary.json").read_text())
    assert summary["macs"] < summary["dense_macs"] and summary["params"] < summary["dense_params"]
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["latency_ms"] > 0
    assert summary["config"]["model"] == f"{MODULE}:{PRUNABLE[name].__name__}"
    assert summary["config"]["dataset"]["factory"] == f"{MODULE}:load_data"


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_model_file_needs_trust(name: str, trained: dict[tuple[str, str], Path],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = trained[name, "filter"] / "model.pt"
    summary = json.loads((trained[name, "filter"] / "summary.json").read_text())
    monkeypatch.setattr(references, "_LIVE", {})  # as in a fresh process
    monkeypatch.setattr(references, "_TRUSTED", set())
    with pytest.raises(UserError, match=f"trust=\\['{MODULE}'\\]"):
        autoprune.load_model(path)
    with pytest.raises(UserError, match="does not import"):
        autoprune.load_model(path, trust=["other_module", "test_user"])
    trusted = autoprune.load_model(path, trust=[MODULE])
    by_file = autoprune.load_model(path, trust=[__file__])  # the module's file trusts it
    direct = autoprune.load_model(path, factory=PRUNABLE[name])
    assert sum(p.numel() for p in trusted.parameters()) == summary["params"]
    x = example()
    assert torch.equal(trusted(x), direct(x)) and torch.equal(by_file(x), direct(x))


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_onnx_export_of_the_pruned_network(name: str, trained: dict[tuple[str, str], Path],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["export", str(trained[name, "hfp"]), "--out", str(tmp_path / "m.onnx"),
                          "--repeats", "1", "--batch-size", "4", "--trust", MODULE], capsys)
    assert code == 0, err
    line = json.loads(out)
    assert line["max_abs_diff"] < 1e-4 and "test images" in line["inputs"]


# --- physical removal = zeroing ---------------------------------------------------------------


def _zero(model: nn.Module, index: DependencyIndex, plan: dict[str, list[int]]) -> None:
    named = dict(model.named_modules())
    with torch.no_grad():
        for key, idxs in plan.items():
            for name in index.groups[key].out_modules:
                module = named[name]
                for tensor in (module.weight, getattr(module, "bias", None)):
                    if tensor is not None:
                        tensor[idxs] = 0


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_removal_equals_zeroing(name: str) -> None:
    model = build(PRUNABLE[name]).eval()
    x = example()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    index = DependencyIndex(model, x)
    plan = {}
    for key, group in index.groups.items():
        wanted = list(range(group.width - max(1, group.width // 4), group.width))
        plan[key] = index.conform(key, wanted)
    plan = {k: v for k, v in plan.items() if v}
    assert plan
    _zero(model, index, plan)
    with torch.no_grad():
        zeroed = model(x)
    removed = remove_channels(model, plan, x, None, index)
    with torch.no_grad():
        after = model(x)
    assert removed == sum(len(v) for v in plan.values())
    torch.testing.assert_close(after, zeroed, atol=1e-5, rtol=1e-4)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("net, words", [
    ("ShuffleNet", ("'stage'", "cannot be followed")),
    ("FixedViewNet", ("'conv'", "breaks its forward pass")),
])
def test_train_refuses_a_method_the_network_cannot_take(
        net: str, words: tuple[str, ...], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("filter", model=f"{MODULE}:{net}")))
    code, _, err = cli(["train", str(path), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()  # before any epoch


def test_search_refuses_a_method_the_network_cannot_take_before_ray(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The network is built once where the search starts; a searched method it cannot take
    is refused in one line naming the method and the layer, before any trial or run."""
    fixed = {k: v for k, v in config("dense", model=f"{MODULE}:FixedViewNet").items()
             if k not in ("method", "method_params")}
    space = {"name": "refused", "num_samples": 2, "objectives": ["accuracy", "macs"],
             "fixed": fixed, "searched": {"methods": {
                 "dense": {}, "filter": {"target_ratio": {"low": 0.3, "high": 0.6},
                                         "start_epoch": 1, "end_epoch": 2}}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    store = tmp_path / "mlflow.db"
    code, _, err = cli(["search", str(path), "--tracking-uri", f"sqlite:///{store}",
                        "--storage-path", str(tmp_path / "ray")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert all(w in err for w in ("searched.methods.filter", "'conv'", "breaks")), err
    assert not (tmp_path / "ray").exists()  # no Ray experiment was started
    from autoprune.search.preflight import check_network
    from autoprune.search.space import parse_space

    ok = {**space, "fixed": {**fixed, "model": f"{MODULE}:ConcatNet"}}
    assert check_network(parse_space(ok, str(path))) == ["filter"]  # dense needs nothing
    # a registered dataset's shapes come from the registry; growth through a torch.cat
    grow = {**ok, "fixed": {**ok["fixed"], "dataset": {"name": "digits"}},
            "searched": {"methods": {"filter": ok["searched"]["methods"]["filter"],
                                     "cgap": {}}}}
    with pytest.raises(UserError, match=r"searched\.methods\.cgap: .*ConcatNet.*grows"):
        check_network(parse_space(grow, str(path)))


BAD = [
    ("no-module", {"model": "no_such_module_xyz:build"}, ("cannot import", "no_such_module_xyz")),
    ("no-attribute", {"model": f"{MODULE}:nothing_here"}, ("no attribute", "nothing_here")),
    ("not-callable", {"model": f"{MODULE}:NOT_CALLABLE"}, ("not a callable",)),
    ("bad-syntax", {"model": "a-b:c"}, ("not an import reference",)),
    ("unknown-name", {"model": "resnet9000"}, ("resnet9000", "module:callable")),
    ("returns-no-module", {"model": f"{MODULE}:returns_int"}, ("not a torch.nn.Module",)),
    ("kwargs-for-registered", {"model": "small_cnn", "model_kwargs": {"width": 3}},
     ("model_kwargs",)),
    ("factory-one-split", {"model": f"{MODULE}:ConcatNet",
                           "dataset": {"factory": f"{MODULE}:bad_data"}},
     ("expected (train, test)",)),
    ("factory-mixed-shapes", {"model": f"{MODULE}:ConcatNet",
                              "dataset": {"factory": f"{MODULE}:mixed_shapes"}},
     ("train[4]", "3x12x16")),
    ("factory-and-name", {"model": f"{MODULE}:ConcatNet",
                          "dataset": {"name": "digits", "factory": f"{MODULE}:load_data"}},
     ("either name",)),
    ("augment-without-factory", {"model": "small_cnn", "dataset": {"augment": "crop"}},
     ("dataset.augment",)),
]


@pytest.mark.parametrize("changes, words", [(c, w) for _, c, w in BAD],
                         ids=[i for i, _, _ in BAD])
def test_reference_errors_are_one_line(changes: dict[str, Any], words: tuple[str, ...],
                                       tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("dense", **changes)))
    code, _, err = cli(["train", str(path), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


# --- where modules are found, and the API ------------------------------------------------------

MODULE_TEXT = """
import torch
from torch import nn


def build(num_classes, in_channels, width=4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""


def test_module_beside_the_config_and_file_references(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "beside_nets_u24.py").write_text(MODULE_TEXT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(references, "_CONFIG_DIRS", [])
    monkeypatch.setattr(references, "_SHIPPED", {})
    monkeypatch.chdir(tmp_path)
    for ref in ("beside_nets_u24:build", "project/beside_nets_u24.py:build"):
        path = folder / "c.yaml"
        path.write_text(yaml.safe_dump(config("filter", model=ref, model_kwargs={"width": 6})))
        code, out, err = cli(["train", str(path), "--out", str(tmp_path / ref[:7]), "--quiet"],
                             capsys)
        assert code == 0, err
        summary = json.loads((tmp_path / ref[:7] / "summary.json").read_text())
        assert summary["macs"] < summary["dense_macs"]
    assert summary["config"]["model"] == f"{folder / 'beside_nets_u24.py'}:build"
    shipped = (references.runtime_env() or {})["py_modules"]
    assert str(folder / "beside_nets_u24.py") in shipped  # what Ray workers get
    assert not any("site-packages" in path for path in shipped)


def test_a_file_reference_reaches_a_node_without_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``path/file.py:build`` ships as the single-file module ``file``; a Ray worker where
    the path does not exist finds it through the environment the search sets."""
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "shipnet_u24.py").write_text(MODULE_TEXT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(references, "_SHIPPED", {})
    references.resolve(f"{driver / 'shipnet_u24.py'}:build", "model")
    env = references.runtime_env()
    assert env is not None and env["py_modules"] == [str(driver / "shipnet_u24.py")]
    # a worker: Ray put the shipped copy on sys.path and set the variable; the path is gone
    node = tmp_path / "ray_node" / "py_modules"
    node.mkdir(parents=True)
    shutil.move(str(driver / "shipnet_u24.py"), node / "shipnet_u24.py")
    sys.path.append(str(node))
    for name, value in env["env_vars"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(references, "_LIVE", {})
    built = references.resolve(f"{driver / 'shipnet_u24.py'}:build", "model")(3, 1)
    assert isinstance(built, nn.Module)
    monkeypatch.delenv(references.SHIPPED_FILES_ENV)
    with pytest.raises(UserError, match="not found"):
        references.resolve(f"{driver / 'other_u24.py'}:build", "model")


def test_api_train_with_callables_defined_anywhere(tmp_path: Path) -> None:
    def local_net(num_classes: int, in_channels: int) -> nn.Module:  # not importable
        return nn.Sequential(nn.Conv2d(in_channels, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(6, num_classes))

    summary = autoprune.train(config("filter"), model=local_net, dataset=load_three_splits,
                              out=tmp_path, training={"lr": 0.02})
    assert summary["macs"] < summary["dense_macs"]
    assert summary["config"]["model"].startswith("__main__:")
    assert summary["config"]["training"]["lr"] == 0.02
    model = autoprune.load_model(tmp_path / "model.pt", factory=local_net)
    assert model(example()).shape == (4, CLASSES)
    again = autoprune.train(config("filter"), model=local_net, dataset=load_three_splits,
                            out=tmp_path, training={"lr": 0.02})  # resumes: nothing left
    assert again["macs"] == summary["macs"] and again["accuracy"] == summary["accuracy"]
    dense = autoprune.train(config("filter"), model=local_net, out=tmp_path / "dense",
                            method="dense", epochs=1)  # the filter parameters go with it
    assert dense["macs"] == dense["dense_macs"] and len(dense["epochs"]) == 1
    with pytest.raises(UserError, match="training.epochs"):
        autoprune.train(config("filter"), model=local_net, out=tmp_path / "x",
                        training={"epochs": "many"})


def float_data() -> tuple[TensorDataset, TensorDataset]:
    train, test = load_data()
    return (TensorDataset(train.tensors[0].float() / 255, train.tensors[1]),
            TensorDataset(test.tensors[0].float() / 255, test.tensors[1]))


def test_factory_data_is_split_and_normalised_like_registered_data() -> None:
    from autoprune.config import DatasetConfig
    from autoprune.data import load_config_data

    def load(factory: str, **extra: Any) -> Any:
        ds = DatasetConfig(name=factory, factory=factory, **extra)
        return load_config_data(ds, seed=0, batch_size=16)

    data = load(f"{MODULE}:float_data", val_fraction=0.25, train_subset=40)
    assert (data.num_classes, data.in_channels, data.input_size) == (CLASSES, 3, 16)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (40, 24, 48)
    first = torch.cat([x for x, _ in data.val])
    again = torch.cat([x for x, _ in data.val])  # float splits are not normalised in place
    torch.testing.assert_close(first, again)
    assert abs(float(torch.cat([x for x, _ in load(f"{MODULE}:float_data").train]).mean())) < 0.1
    given = load(f"{MODULE}:load_three_splits", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                 augment="crop_flip")
    assert given.val.num_samples == 48 and given.train.num_samples == 96
    x, _ = next(iter(given.test))
    expected = (load_data()[1].tensors[0][:len(x)].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)


def test_factory_images_may_be_pil_or_numpy() -> None:
    import numpy as np
    from PIL import Image

    from autoprune.data.factory import materialise

    pil = [(Image.new("RGB", (5, 4), (255, 0, 0)), 1), (Image.new("RGB", (5, 4)), np.int64(0))]
    images, labels = materialise("train", pil, "ref")
    assert images.shape == (2, 3, 4, 5) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 0] and int(images[0, 0].min()) == 255
    gray, _ = materialise("train", [(np.zeros((4, 5), np.float32), torch.tensor(2))], "ref")
    assert gray.shape == (1, 1, 4, 5) and gray.dtype == torch.float32
    with pytest.raises(UserError, match=r"ref train\[0\].*label is 1.5"):
        materialise("train", [(np.zeros((4, 5), np.float32), 1.5)], "ref")

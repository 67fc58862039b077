"""From a pruned network to MLflow models, registry versions and ONNX (no Ray here; the
search's own logging is checked in test_search_e2e.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.cli import main
from autoprune.deploy.onnx_export import ExportError, parity, session, to_onnx
from autoprune.errors import UserError
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, load_model, remove_channels, save_model
from autoprune.surgery.grow import grow_channels

SHAPE = (1, 28, 28)


def pruned(name: str, grow: bool = False) -> nn.Module:
    """``name`` with about 40% of the channels of up to 4 groups removed (or, with
    ``grow``, 50% more channels in them), odd widths included, BN statistics non-trivial."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, input_size=28)
    model.autoprune_build = {"name": name, "num_classes": 10, "in_channels": 1,
                             "input_size": 28}
    x = torch.randn(2, *SHAPE)
    index = DependencyIndex(model, x)
    keys = [k for k, g in index.groups.items() if g.width >= 4][:4]
    if grow:
        grow_channels(model, index, {k: list(range(index.groups[k].width // 2)) for k in keys})
    else:
        cut = {k: index.groups[k].width * 2 // 5 for k in keys}
        cut = {k: n + (index.groups[k].width - n + 1) % 2 for k, n in cut.items()}  # odd widths
        remove_channels(model, {k: list(range(1, 1 + n)) for k, n in cut.items()}, x, None,
                        index)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


@pytest.mark.parametrize(("name", "grow"), [
    ("small_cnn", False), ("cifar_resnet20", False), ("cifar_vgg11", False),
    ("small_mobilenet", False), ("small_resnet", True),
])
def test_onnx_export_matches_pytorch_at_any_batch(name: str, grow: bool,
                                                  tmp_path: Path) -> None:
    model = pruned(name, grow)
    widths = DependencyIndex(model, torch.randn(1, *SHAPE)).groups
    path = to_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    sess = session(path, threads=1)
    for batch in (1, 5):  # the batch dimension is dynamic
        diff = parity(model, sess, torch.randn(batch, *SHAPE))
        assert diff < 1e-4
    assert sess.get_inputs()[0].shape[1:] == list(SHAPE)
    assert any(g.width % 2 for g in widths.values()) or grow  # odd widths exported too


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if float(x.mean()) > 0 else -x


def test_unexportable_layer_is_named(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), _DataDependent()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ExportError, match=r"layer '1\.1' \(_DataDependent\)") as caught:
        to_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    assert "\n" not in str(caught.value)


def test_parity_check_catches_a_different_network(tmp_path: Path) -> None:
    model = pruned("small_cnn")
    path = to_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    with pytest.raises(ExportError, match="differ"):
        parity(model, session(path, 1), torch.randn(4, *SHAPE))


def test_export_command_from_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    save_model(pruned("small_mobilenet"), tmp_path / "model.pt", SHAPE)
    out = tmp_path / "out" / "m.onnx"
    code = main(["export", str(tmp_path), "--out", str(out), "--batch-size", "8",
                 "--repeats", "2", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file()
    assert report["size_bytes"] == out.stat().st_size
    assert report["max_abs_diff"] < 1e-4
    assert report["inputs"].startswith("random") and report["threads"] == 1
    for runtime in ("pytorch", "onnxruntime"):
        assert set(report["latency_ms"][runtime]) == {"batch_1", "batch_8"}
        assert all(v > 0 for v in report["latency_ms"][runtime].values())
    model = load_model(tmp_path / "model.pt")
    assert report["params"] == sum(p.numel() for p in model.parameters())


def test_export_uses_the_training_data_beside_the_model(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """A run folder (model.pt + summary.json): the test split of its dataset is the input."""
    code = main(["train", str(Path(__file__).parent.parent / "examples" / "filter_digits.yaml"),
                 "--epochs", "3", "--train-subset", "200", "--out", str(tmp_path / "run"),
                 "--quiet"])
    assert code == 0
    capsys.readouterr()
    code = main(["export", str(tmp_path / "run" / "model.pt"), "--out",
                 str(tmp_path / "m.onnx"), "--repeats", "2"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["inputs"] == "64 test images of digits"  # the config's batch size
    assert set(report["latency_ms"]["onnxruntime"]) == {"batch_1", "batch_64"}


@pytest.mark.parametrize(("args", "words"), [
    (["no/such/model.pt"], "is not a model file, a run id or a models:/ URI"),
    (["0123456789abcdef0123456789abcdef"], "no MLflow store"),
    (["models:/nope@picked"], "no MLflow store"),
    (["{model}", "--input-shape", "1,28"], "--input-shape must be C,H,W"),
    (["{model}", "--repeats", "0"], "--repeats: must be a positive integer"),
])
def test_export_bad_input_is_one_line(args: list[str], words: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    save_model(pruned("small_cnn"), tmp_path / "model.pt", SHAPE)
    args = [a.replace("{model}", str(tmp_path / "model.pt")) for a in args]
    code = main(["export", *args, "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1


# --- MLflow models and the registry ---------------------------------------------------------


@pytest.fixture
def trial_run(tmp_path: Path) -> dict[str, Any]:
    """A store with one trial run holding ``model.pt`` as the search logs it."""
    from autoprune.search.store import artifact_location, open_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp = client.create_experiment("s", artifact_location=artifact_location(uri, "s"))
    run_id = client.create_run(exp).info.run_id
    model = pruned("cifar_resnet20")
    save_model(model, tmp_path / "model.pt", SHAPE)
    client.log_artifact(run_id, str(tmp_path / "model.pt"))
    return {"uri": uri, "client": client, "run_id": run_id, "model": model}


def _same_outputs(loaded: Any, model: nn.Module, shape: tuple[int, ...] = SHAPE) -> None:
    x = torch.randn(3, *shape)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)


def test_logged_network_loads_with_mlflow_alone(trial_run: dict[str, Any]) -> None:
    import mlflow

    from autoprune.deploy.mlflow_model import MODEL_TAG, ensure_logged, log_model_file, tracking

    client, run_id = trial_run["client"], trial_run["run_id"]
    old = Path(trial_run["uri"][len("sqlite:///"):]).with_name("old.pt")
    save_model(trial_run["model"], old)  # as autoprune wrote it before recording shapes
    with pytest.raises(UserError, match="does not record its input shape"):
        log_model_file(trial_run["uri"], run_id, old)
    uri = ensure_logged(client, trial_run["uri"], run_id)  # logs from the model.pt artifact
    assert uri.startswith("models:/m-") and client.get_run(run_id).data.tags[MODEL_TAG] == uri
    assert ensure_logged(client, trial_run["uri"], run_id) == uri  # once only
    with tracking(trial_run["uri"]):
        loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    _same_outputs(loaded, trial_run["model"])
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, *SHAPE]


def test_register_sets_alias_and_tags(trial_run: dict[str, Any]) -> None:
    import mlflow

    from autoprune.deploy.mlflow_model import register, tracking

    client, run_id, uri = trial_run["client"], trial_run["run_id"], trial_run["uri"]
    first = register(client, uri, run_id, "qs", "picked", {"autoprune.search": "s"})
    second = register(client, uri, run_id, "qs", "picked", {"autoprune.search": "s"})
    assert (first["version"], second["version"]) == (1, 2)
    version = client.get_model_version_by_alias("qs", "picked")
    assert int(version.version) == 2 and version.tags["autoprune.search"] == "s"
    with tracking(uri):
        loaded = mlflow.pytorch.load_model("models:/qs@picked")
    _same_outputs(loaded, trial_run["model"])
    with pytest.raises(UserError, match="reserved"):
        register(client, uri, run_id, "qs", "latest", {})
    with pytest.raises(UserError, match="--register"):
        register(client, uri, run_id, "bad name/x", "picked", {})


SHIP_PAGE = Path(__file__).parent.parent / "docs" / "how-to" / "pick-and-ship.md"


def test_the_ship_page_snippet_runs(trial_run: dict[str, Any],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The documented way to use a registered network (docs/how-to/pick-and-ship.md), run
    as written against this test's store: the torch.export module is called as it is
    (its .eval() raises, as the page says), and model.pt gives a trainable nn.Module."""
    from autoprune.deploy.mlflow_model import register, tracking

    text = SHIP_PAGE.read_text()
    marker = "<!-- tested: tests/test_deploy.py::test_the_ship_page_snippet_runs -->"
    snippet = re.search(re.escape(marker) + r"\n```python\n(.*?)```", text, re.S).group(1)
    client, run_id, uri = trial_run["client"], trial_run["run_id"], trial_run["uri"]
    register(client, uri, run_id, "qs", "picked", {})
    assert 'mlflow.set_tracking_uri("sqlite:///runs/mlflow.db")' in snippet
    code = snippet.replace("sqlite:///runs/mlflow.db", uri)
    scope: dict[str, Any] = {}
    with tracking(uri):
        exec(compile(code, str(SHIP_PAGE), "exec"), scope)
    assert "tensor([" in capsys.readouterr().out
    assert scope["net"].training and isinstance(scope["net"], nn.Module)
    with pytest.raises(NotImplementedError):  # what the page warns about
        scope["model"].eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(scope["model"](x).numpy(),
                                   scope["net"].eval()(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_latency_objective_states_how_it_was_measured(runtime: str, tmp_path: Path) -> None:
    from autoprune.config import parse_train_config
    from autoprune.engine import train

    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 128},
        "training": {"epochs": 1, "batch_size": 64, "latency_runtime": runtime,
                     "latency_batch_size": 4, "threads": 1},
        "method": "dense"})
    summary = train(config, tmp_path, progress=False)
    latency = summary["latency"]
    assert latency["runtime"] == runtime and latency["batch_size"] == 4
    assert latency["threads"] == 1 and latency["repeats"] >= 10 and latency["warmup"] >= 1
    assert summary["latency_ms"] == latency["ms"] > 0


def test_tracked_train_is_an_mlflow_run_with_its_network(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    import mlflow

    from autoprune.deploy.mlflow_model import tracking
    from autoprune.search.store import open_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = Path(__file__).parent.parent / "examples" / "filter_digits.yaml"
    code = main(["train", str(config), "--epochs", "3", "--train-subset", "200", "--out",
                 str(tmp_path / "run"), "--quiet", "--tracking-uri", uri,
                 "--experiment", "mine"])
    out = capsys.readouterr().out
    assert code == 0
    run_id = re.search(r"tracked: run ([0-9a-f]{32}) in experiment 'mine'", out).group(1)
    client = open_client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["autoprune.role"] == "train"
    assert run.data.params["method"] == "filter" and run.data.params["training.epochs"] == "3"
    assert {m.step for m in client.get_metric_history(run_id, "macs")} == {1, 2, 3}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run.data.metrics["accuracy"] == pytest.approx(summary["accuracy"])
    # schedule.png: the picture of what the schedule did, beside the model
    assert {"model.pt", "summary.json", "train_config.yaml", "schedule.png"} <= {
        a.path for a in client.list_artifacts(run_id)}
    assert (tmp_path / "run" / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with tracking(uri):
        logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    _same_outputs(logged, load_model(tmp_path / "run" / "model.pt"), (1, 8, 8))
    code = main(["export", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "m.onnx"),
                 "--repeats", "2"])
    assert code == 0 and json.loads(capsys.readouterr().out)["macs"] == summary["macs"]


def test_tracked_train_checks_the_server_before_training(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    config = Path(__file__).parent.parent / "examples" / "filter_digits.yaml"
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet",
                 "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the MLflow tracking server" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_x_400mf",
                                  "shufflenet_v2_x0_5"])
def test_torchvision_families_export_pruned(name: str, tmp_path: Path) -> None:
    """ResNet, MobileNetV3 (squeeze-excitation), RegNet (grouped convolutions) pruned by
    the surgery, ShuffleNetV2 (which the surgery refuses) as it is: each exports and
    matches PyTorch."""
    from autoprune.models import model_info

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    if "prune" in model_info(name).supports:
        index = DependencyIndex(model, x)
        keys = [k for k, g in index.groups.items() if g.width >= 8][:3]
        remove_channels(model, {k: list(range(index.groups[k].width // 3)) for k in keys},
                        x, None, index)
    sess = session(to_onnx(model.eval(), x, tmp_path / "m.onnx"), threads=1)
    assert parity(model, sess, torch.randn(3, 3, 32, 32)) < 1e-4


def test_a_cgap_grown_network_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    from autoprune.config import parse_train_config
    from autoprune.engine import train

    config = parse_train_config({
        "model": "small_resnet", "dataset": {"name": "digits", "train_subset": 128},
        "training": {"epochs": 4, "batch_size": 64, "threads": 1}, "method": "cgap",
        "method_params": {"seed_width": 0.5, "max_width": 1.5, "growth_rate": 0.5,
                          "growth_end_epoch": 2, "prune_ratio": 0.2}})
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["params"] != summary["dense_params"]
    code = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"),
                 "--repeats", "2", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["max_abs_diff"] < 1e-4 and report["macs"] == summary["macs"]

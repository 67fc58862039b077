"""End to end: ``examples/custom_model`` as a user runs it, command by command, in a shell.

The folder is copied where a user would put it; every command runs as a subprocess of
this venv's ``autoprune`` from that folder (the network's module is found beside the
config): ``check``, ``train``, ``search --num-samples 4`` through a real local Ray into a
real MLflow SQLite store, ``pick --register``, then the registered MLflow model loaded in
a Python process that cannot import the user's module (a shipped model needs no user
code), and ``export`` of the picked trial, which needs the module's trust and passes its
parity check with it. The search, ``pick --register`` and ``export models:/...`` find the
store through ``MLFLOW_TRACKING_URI`` alone, as MLflow's own tools do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_model"
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, timeout: int = 300,
       tracking: str | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` in a shell-like environment; ``tracking``: MLFLOW_TRACKING_URI exported."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if tracking is not None:
        env["MLFLOW_TRACKING_URI"] = tracking
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("custom")
    folder = root / "my_project"
    shutil.copytree(EXAMPLE, folder)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # only MLflow's own variable says where results go, for search, pick and export alike
    search = sh(["autoprune", "search", "space.yaml", "--num-samples", "4", "--storage-path",
                 str(root / "ray")], folder, timeout=600, tracking=uri)
    return {"root": root, "folder": folder, "uri": uri, "search": search}


def test_check_names_the_groups_and_methods(example: dict[str, Any]) -> None:
    out = ok(sh(["autoprune", "check", "mynet:build", "--input-shape", "1,28,28"],
                example["folder"]))
    assert "prunable channel groups" in out and "channel removal" in out
    assert "head: the classifier" in out


def test_train_config_removes_channels(example: dict[str, Any]) -> None:
    out_dir = example["root"] / "train"
    ok(sh(["autoprune", "train", "config.yaml", "--out", str(out_dir), "--quiet"],
          example["folder"]))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["config"]["model"] == "mynet:build"
    assert summary["macs"] < summary["dense_macs"]
    assert summary["val_accuracy"] > 0.5  # ten classes: far above chance


def test_search_of_four_trials_completes(example: dict[str, Any]) -> None:
    out = ok(example["search"])
    assert "4/4 done, 0 running, 0 failed" in out
    assert "Pareto front of 'custom_model'" in out
    assert f"MLflow: {example['uri']} (from MLFLOW_TRACKING_URI)" in example["search"].stderr
    assert not (example["folder"] / "runs").exists()  # nothing went to the default store


@pytest.fixture(scope="module")
def picked(example: dict[str, Any]) -> dict[str, Any]:
    """``pick --register`` of the most accurate trial within half the dense MACs."""
    return json.loads(ok(sh(["autoprune", "pick", "--experiment", "custom_model",
                             "--max-macs-ratio", "0.5", "--register", "mynet-picked"],
                            example["folder"], tracking=example["uri"])))


def test_pick_register_and_load_without_the_users_code(example: dict[str, Any],
                                                       picked: dict[str, Any]) -> None:
    uri, root = example["uri"], example["root"]
    assert picked["registered"]["model_uri"] == "models:/mynet-picked@picked"
    assert picked["macs_ratio"] <= 0.5
    assert picked["config"]["model"] == "mynet:build"
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    code = ("import importlib.util, mlflow, torch\n"
            "assert importlib.util.find_spec('mynet') is None\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            "net = mlflow.pytorch.load_model('models:/mynet-picked@picked')\n"
            "print(tuple(net(torch.rand(3, 1, 8, 8)).shape))\n")
    out = ok(sh([sys.executable, "-c", code], elsewhere))
    assert out.strip().splitlines()[-1] == "(3, 10)"


def test_export_needs_trust_and_passes_parity_with_it(example: dict[str, Any],
                                                     picked: dict[str, Any]) -> None:
    folder, uri, root = example["folder"], example["uri"], example["root"]
    source = ["autoprune", "export", picked["registered"]["model_uri"]]
    refused = sh([*source, "--out", str(root / "refused.onnx")], root, tracking=uri)
    error = refused.stderr.splitlines()[-1]  # after the line naming the store
    assert refused.returncode == 2 and error.startswith("error: "), refused.stderr
    assert "'mynet:build'" in error and "--trust" in error
    assert not (root / "refused.onnx").exists() and not (root / "runs").exists()
    result = json.loads(ok(sh([*source, "--out", str(root / "net.onnx"), "--trust",
                               str(folder / "mynet.py"), "--repeats", "3"], root,
                              tracking=uri)))
    assert result["max_abs_diff"] < 1e-4 and (root / "net.onnx").stat().st_size > 0
    assert "mynet:load_data" in result["inputs"]  # parity on the user's own test images


def test_register_of_a_trial_without_its_mlflow_model_needs_trust(
        example: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Where a trial's MLflow model is missing (a server that was away), ``pick --register``
    logs it from ``model.pt``: for the user's network only with ``--trust``."""
    from mlflow import MlflowClient

    from autoprune.cli import main
    from autoprune.deploy.mlflow_model import MODEL_TAG

    folder, uri = example["folder"], example["uri"]
    pick = ["autoprune", "pick", "--experiment", "custom_model", "--tracking-uri", uri,
            "--max-macs-ratio", "1.0"]  # the most accurate trial: the dense one
    assert main(pick[1:]) == 0  # in this process: the run the commands below will pick
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    client = MlflowClient(uri)
    client.delete_logged_model(client.get_run(run_id).data.tags[MODEL_TAG].split("/")[-1])
    client.delete_tag(run_id, MODEL_TAG)
    refused = sh([*pick, "--register", "mynet-relogged"], example["root"])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "'mynet:build'" in refused.stderr
    registered = json.loads(ok(sh([*pick, "--register", "mynet-relogged", "--trust",
                                   str(folder / "mynet.py")], example["root"])))
    assert registered["registered"]["version"] == 1
    assert client.get_run(run_id).data.tags[MODEL_TAG] == registered["registered"]["source"]

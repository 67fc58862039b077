"""An interrupted search resumes without rerunning or duplicating trials; misuse is a user
error before anything starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoprune.cli import main

NUM_SAMPLES = 4
SPACE: dict[str, Any] = {
    "num_samples": NUM_SAMPLES, "sampler": "random", "seed": 0, "max_concurrent": 1,
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 4, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {
        "filter": {"target_ratio": {"low": 0.3, "high": 0.9}, "end_epoch": 3},
        "prune_retrain": {"target_ratio": {"low": 0.3, "high": 0.9}},
    }},
}


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path


def args(folder: Path, *extra: str) -> list[str]:
    return ["search", str(folder / "space.yaml"), "--name", "r",
            "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--storage-path", str(folder / "ray"), *extra]


@pytest.fixture()
def ray_tmp() -> Iterator[str]:
    """A short private Ray temp dir (socket paths must stay under 108 characters)."""
    folder = tempfile.mkdtemp(prefix="apr")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def children(folder: Path) -> list[Any]:
    from autoprune.search.store import RunLookup, open_client

    client = open_client(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("r")
    return [] if experiment is None else RunLookup(client, experiment.experiment_id).children()


def completed(folder: Path) -> list[Any]:
    return [c for c in children(folder) if c.data.tags.get("autoprune.status") == "completed"]


def test_resume_without_a_search_is_a_user_error(workdir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_bad_flags_fail_before_training(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--sampler", "annealing")) == 2
    assert "unknown sampler 'annealing'" in capsys.readouterr().err
    assert main(args(workdir, "--num-samples", "0")) == 2
    assert "num_samples" in capsys.readouterr().err
    assert main([*args(workdir)[:3], "a/b"]) == 2
    assert "--name 'a/b'" in capsys.readouterr().err
    assert not (workdir / "ray").exists()


def kill_when(cmd: list[str], env: dict[str, str], log_path: Path,
              ready: Any, timeout: float) -> None:
    """Start the search ``cmd`` and SIGKILL it (the driver and the Ray it started) once
    ``ready(its output so far)`` holds. The progress lines are watched, not MLflow: a second
    process opening the SQLite store while the search creates it would race on the schema
    migration."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready(log_path.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_two_stage_search_killed_in_stage_2_resumes_there(workdir: Path, ray_tmp: str) -> None:
    """Stage 1 is read back, not rerun; stage 2 goes on with the replays it had chosen."""
    space = {**SPACE, "fidelity": {"proxy": {"epochs": 3, "train_subset": 400},
                                   "replay": {"top": 3}}}
    space["searched"] = {"methods": {
        "filter": {"target_ratio": {"low": 0.3, "high": 0.9}, "end_epoch": 4},
        "prune_retrain": {"target_ratio": {"low": 0.3, "high": 0.9}}}}
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "autoprune", *args(workdir)]
    kill_when(cmd, env, workdir / "first.log",
              lambda text: " completed: " in text.partition("stage 2:")[2], 300)
    proxies = {c.info.run_id for c in completed(workdir)
               if c.data.tags["autoprune.fidelity"] == "proxy"}
    assert len(proxies) == NUM_SAMPLES
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "stage 1:" not in resumed.stdout  # straight back into stage 2
    runs = children(workdir)
    ids = [c.data.tags["autoprune.trial_id"] for c in runs]
    assert len(ids) == len(set(ids)), "a trial has two child runs"
    done = completed(workdir)
    assert {c.info.run_id for c in done if c.data.tags["autoprune.fidelity"] == "proxy"} == proxies
    full = [c for c in done if c.data.tags["autoprune.fidelity"] == "full"]
    assert len(full) == 3
    assert len({c.data.tags["autoprune.proxy_run_id"] for c in full}) == 3


def test_unreachable_cluster_is_a_user_error(workdir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--address", "127.0.0.1:1")) == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err

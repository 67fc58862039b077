"""End to end: real searches through a local Ray into an MLflow SQLite store in tmp_path.

The searches run on the test process's shared local Ray (``ray_session`` in conftest.py).
A trial killed mid-run and retried from its checkpoint: ``tests/test_faults.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoprune.cli import main

pytestmark = pytest.mark.slow

EPOCHS = 3
SPACE: dict[str, Any] = {
    "num_samples": 5,
    "sampler": "nsga2",
    "sampler_options": {"nsga2": {"population_size": 4}},
    "seed": 0,
    "objectives": ["accuracy", "macs"],
    "resources": {"cpu": 1},
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {
        "dense": {},
        "filter": {"target_ratio": {"low": 0.3, "high": 0.9}, "end_epoch": 2},
        "prune_retrain": {"target_ratio": {"low": 0.3, "high": 0.9}},
    }},
}


def run_search(folder: Path, space: dict[str, Any], name: str, *flags: str) -> tuple[int, str]:
    """``autoprune search`` in this process (it uses the test process's Ray)."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["search", str(path), "--name", name, "--tracking-uri", uri,
                 "--storage-path", str(folder / "ray"), *flags])
    return code, uri


@pytest.fixture(scope="module")
def search(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from autoprune.search.store import RunLookup, open_client

    folder = tmp_path_factory.mktemp("e2e")
    code, uri = run_search(folder, SPACE, "e2e")
    client = open_client(uri)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None
    lookup = RunLookup(client, experiment.experiment_id)
    return {"code": code, "uri": uri, "client": client, "lookup": lookup, "folder": folder,
            "parent": lookup.parent(), "children": lookup.children()}


def test_search_exits_cleanly(search: dict[str, Any]) -> None:
    assert search["code"] == 0


def test_parent_run_holds_space_and_front(search: dict[str, Any]) -> None:
    client, parent = search["client"], search["parent"]
    assert parent is not None and parent.data.tags["autoprune.role"] == "search"
    assert parent.data.params["sampler"] == "nsga2" and parent.data.params["seed"] == "0"
    assert parent.data.params["num_samples"] == "5"
    assert parent.data.params["objectives"] == "accuracy,macs"
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png", "pareto.html", "search_space.yaml"} <= names
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_child_runs_have_metrics_tags_and_artifacts(search: dict[str, Any]) -> None:
    client, parent, children = search["client"], search["parent"], search["children"]
    assert len(children) == 5
    trial_ids = [c.data.tags["autoprune.trial_id"] for c in children]
    assert len(set(trial_ids)) == 5
    for child in children:
        tags, run_id = child.data.tags, child.info.run_id
        assert tags["autoprune.role"] == "trial"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["autoprune.status"] == "completed" and child.info.status == "FINISHED"
        assert re.fullmatch(r"[0-9a-f]{20,}", tags["autoprune.node_id"])
        assert child.data.params["method"] in SPACE["searched"]["methods"]
        assert child.data.params["training.epochs"] == str(EPOCHS)
        for key in ("accuracy", "macs", "params", "train_flops"):
            history = client.get_metric_history(run_id, key)
            assert {m.step for m in history} == set(range(1, EPOCHS + 1)), key
        assert {"model.pt", "summary.json", "train_config.yaml", "schedule.png"} <= {
            a.path for a in client.list_artifacts(run_id)}
        summary = json.loads(Path(client.download_artifacts(
            run_id, "summary.json", str(search["folder"]))).read_text())
        # the search chooses on validation accuracy and reports test accuracy beside it
        assert child.data.metrics["accuracy"] == pytest.approx(summary["val_accuracy"])
        assert child.data.metrics["val_accuracy"] == pytest.approx(summary["val_accuracy"])
        assert child.data.metrics["test_accuracy"] == pytest.approx(summary["accuracy"])
        assert tags["autoprune.fidelity"] == "full"
        assert child.data.metrics["macs"] == summary["macs"]


def test_front_is_the_non_dominated_set_of_completed_trials(search: dict[str, Any]) -> None:
    """Recompute the front here, with a dominance check written in the test."""
    client, parent = search["client"], search["parent"]
    points = {c.data.tags["autoprune.trial_id"]: (c.data.metrics["accuracy"],
                                                   c.data.metrics["macs"])
              for c in search["children"] if c.data.tags["autoprune.status"] == "completed"}

    def beaten(p: tuple[float, float], q: tuple[float, float]) -> bool:
        return q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])

    expected = {t for t, p in points.items()
                if not any(beaten(p, q) for u, q in points.items() if u != t)}
    path = client.download_artifacts(parent.info.run_id, "pareto.csv", str(search["folder"]))
    with open(path) as fh:
        written = {row["trial_id"] for row in csv.DictReader(fh)}
    assert written == expected


def test_pareto_command_and_pick_on_the_store(search: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import autoprune
    from autoprune.config import load_train_config
    from autoprune.engine import train

    assert main(["pareto", "--experiment", "e2e", "--tracking-uri", search["uri"]]) == 0
    assert "Pareto front of 'e2e'" in capsys.readouterr().out
    out = tmp_path / "picked.yaml"
    assert main(["pick", "--experiment", "e2e", "--tracking-uri", search["uri"],
                 "--max-macs-ratio", "1.0", "--out", str(out)]) == 0
    picked = json.loads(capsys.readouterr().out)
    best = max(search["children"], key=lambda c: c.data.metrics["accuracy"])
    assert picked["accuracy"] == pytest.approx(best.data.metrics["accuracy"])
    replay = train(load_train_config(out), tmp_path / "replay", progress=False)
    assert replay["macs"] == picked["macs"]  # the same schedule, replayed
    assert abs(replay["val_accuracy"] - picked["val_accuracy"]) < 0.05
    assert picked["test_accuracy"] == pytest.approx(
        search["client"].get_run(picked["run_id"]).data.metrics["test_accuracy"])
    model_path = search["client"].download_artifacts(picked["run_id"], "model.pt", str(tmp_path))
    assert autoprune.load_model(model_path) is not None


def test_every_completed_trial_logs_its_network_as_an_mlflow_model(
        search: dict[str, Any], tmp_path: Path) -> None:
    """``runs:/<id>/model`` loads with MLflow alone and computes what model.pt computes."""
    import mlflow
    import torch

    import autoprune
    from autoprune.deploy.mlflow_model import MODEL_ERROR_TAG, MODEL_TAG, tracking

    x = torch.randn(4, 1, 8, 8)
    for child in search["children"]:
        run_id = child.info.run_id
        assert MODEL_ERROR_TAG not in child.data.tags
        assert child.data.tags[MODEL_TAG].startswith("models:/m-")
        with tracking(search["uri"]):
            logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        own = autoprune.load_model(search["client"].download_artifacts(
            run_id, "model.pt", str(tmp_path / run_id)))
        with torch.no_grad():
            assert torch.allclose(logged(x), own(x), atol=1e-5)


def test_pick_registers_the_network_and_export_reads_the_registry(
        search: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow
    import torch

    import autoprune
    from autoprune.deploy.mlflow_model import tracking

    uri = search["uri"]
    assert main(["pick", "--experiment", "e2e", "--tracking-uri", uri,
                 "--max-macs-ratio", "1.0", "--register", "e2e-model"]) == 0
    picked = json.loads(capsys.readouterr().out)
    registered = picked["registered"]
    assert registered["model_uri"] == "models:/e2e-model@picked"
    version = search["client"].get_model_version_by_alias("e2e-model", "picked")
    assert version.run_id == picked["run_id"]
    assert version.tags["autoprune.search"] == "e2e"
    assert version.tags["autoprune.budget"] == "--max-macs-ratio 1"
    assert version.tags["autoprune.objectives"] == "accuracy,macs"
    x = torch.randn(3, 1, 8, 8)
    with tracking(uri):
        served = mlflow.pytorch.load_model("models:/e2e-model@picked")
    own = autoprune.load_model(search["client"].download_artifacts(
        picked["run_id"], "model.pt", str(tmp_path)))
    with torch.no_grad():
        assert torch.allclose(served(x), own(x), atol=1e-5)

    out = tmp_path / "m.onnx"
    assert main(["export", "models:/e2e-model@picked", "--tracking-uri", uri, "--out",
                 str(out), "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == "64 test images of digits" and report["max_abs_diff"] < 1e-4
    assert report["macs"] == picked["macs"] and out.is_file()
    code = main(["export", "models:/e2e-model@nope", "--tracking-uri", uri, "--out",
                 str(out)])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_failing_trials_do_not_stop_the_search(ray_session: str, tmp_path: Path) -> None:
    """SGD with lr 10 and weight decay 1.0 turns the loss NaN; lr 0.05 trains."""
    import optuna

    from autoprune.search.sampling import DefineByRun
    from autoprune.search.space import parse_space
    from autoprune.search.store import RunLookup, open_client

    space = {**SPACE, "sampler": "random", "num_samples": 4}
    space["fixed"] = {**SPACE["fixed"], "training": {
        **SPACE["fixed"]["training"], "epochs": 2, "weight_decay": 1.0}}
    space["searched"] = {"training": {"lr": {"choices": [0.05, 10.0]}},
                         "methods": {"filter": {"target_ratio": {"low": 0.3, "high": 0.9},
                                                "end_epoch": 2}}}
    seed = next(s for s in range(50) if _mixed_lrs(parse_space(space), s, optuna, DefineByRun))
    code, uri = run_search(tmp_path, space, "failing", "--seed", str(seed),
                           "--max-failures", "0")
    assert code == 0
    client = open_client(uri)
    lookup = RunLookup(client, client.get_experiment_by_name("failing").experiment_id)
    children = lookup.children()
    status = {c.data.tags["autoprune.trial_id"]: c.data.tags["autoprune.status"]
              for c in children}
    assert len(children) == 4 and set(status.values()) == {"completed", "failed"}
    for child in children:
        tags = child.data.tags
        if tags["autoprune.status"] == "failed":
            assert child.data.params["training.lr"] == "10.0"
            assert tags["autoprune.diverged"] == "true" and "nan" in tags["autoprune.error"]
            assert child.info.status == "FAILED"
            assert "accuracy" not in child.data.metrics  # NaN in epoch 1: nothing to log
        else:
            assert math.isfinite(child.data.metrics["accuracy"])
    path = client.download_artifacts(lookup.parent().info.run_id, "pareto.csv", str(tmp_path))
    with open(path) as fh:
        on_front = {row["trial_id"] for row in csv.DictReader(fh)}
    assert on_front and all(status[t] == "completed" for t in on_front)


def _mixed_lrs(space: Any, seed: int, optuna: Any, define_by_run: Any) -> bool:
    """Whether the random sampler with ``seed`` draws both learning rates in 4 trials."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    lrs = [define_by_run(space)(study.ask())["training.lr"] for _ in range(4)]
    return len(set(lrs)) == 2


# --- two stages: a proxy search, then its best schedules at full fidelity ---------------

TWO_STAGE_TRIALS = 6


@pytest.fixture(scope="module")
def two_stage(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-stage search aimed at a budget: 6 proxy trials (2 epochs of 3 on 400 images),
    then the 3 best proxy schedules within ``macs_ratio<=0.7`` at full fidelity. Its driver
    (a subprocess joining this process's Ray) is killed with SIGKILL once stage 2 has
    completed a trial, then ``--resume`` finishes it: every test of the module checks the
    resumed search."""
    from autoprune.search.store import RunLookup, open_client

    folder = tmp_path_factory.mktemp("two-stage")
    space = {**SPACE, "num_samples": TWO_STAGE_TRIALS,
             "fidelity": {"proxy": {"epochs": 2, "train_subset": 400}, "replay": {"top": 3}}}
    space["searched"] = {"methods": {
        "dense": {}, "filter": {"target_ratio": {"low": 0.2, "high": 0.9}, "end_epoch": 3}}}
    (folder / "two.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "autoprune", "search", str(folder / "two.yaml"), "--name",
           "two", "--tracking-uri", uri, "--storage-path", str(folder / "ray"),
           "--target", "macs_ratio<=0.7", "--address", ray_session]
    kill_when(cmd, folder / "first.log",
              lambda text: " completed: " in text.partition("stage 2:")[2], 300)
    client = open_client(uri)
    lookup = RunLookup(client, client.get_experiment_by_name("two").experiment_id)
    before = lookup.children()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    return {"code": resumed.returncode, "output": resumed.stdout + resumed.stderr, "uri": uri,
            "client": client, "lookup": lookup, "folder": folder, "space": space,
            "before": before, "parent": lookup.parent(), "children": lookup.children()}


def kill_when(cmd: list[str], log_path: Path, ready: Any, timeout: float) -> None:
    """Start the search ``cmd`` and SIGKILL it once ``ready(its output so far)`` holds. The
    progress lines are watched, not MLflow: a second process opening the SQLite store while
    the search creates it would race on the schema migration."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
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


def test_two_stage_search_killed_in_stage_2_resumes_there(two_stage: dict[str, Any]) -> None:
    """Stage 1 is read back, not rerun; stage 2 goes on with the replays it had chosen, and
    every trial has one child run."""
    assert two_stage["code"] == 0, two_stage["output"][-3000:]
    assert "stage 1:" not in two_stage["output"]  # straight back into stage 2
    before, after = two_stage["before"], two_stage["children"]

    def done(runs: list[Any], fidelity: str) -> dict[str, Any]:
        return {c.info.run_id: c for c in runs if c.data.tags["autoprune.fidelity"] == fidelity
                and c.data.tags.get("autoprune.status") == "completed"}

    assert len(done(before, "proxy")) == TWO_STAGE_TRIALS
    assert done(after, "proxy").keys() == done(before, "proxy").keys()  # not rerun
    assert 1 <= len(done(before, "full")) < len(done(after, "full"))  # killed mid-stage 2
    ids = [c.data.tags["autoprune.trial_id"] for c in after]
    assert len(ids) == len(set(ids)), "a trial has two child runs"
    replayed = [c.data.tags["autoprune.proxy_run_id"] for c in done(after, "full").values()]
    assert len(replayed) == len(set(replayed))  # each chosen proxy replayed once


def test_two_stage_search_tags_proxy_and_full_trials(two_stage: dict[str, Any]) -> None:
    assert two_stage["code"] == 0
    children = two_stage["children"]
    proxies = [c for c in children if c.data.tags["autoprune.fidelity"] == "proxy"]
    full = [c for c in children if c.data.tags["autoprune.fidelity"] == "full"]
    assert len(proxies) == TWO_STAGE_TRIALS and 1 <= len(full) <= 3
    by_id = {c.info.run_id: c for c in proxies}
    for run in proxies:  # params: the schedule as written; metric epochs: the proxy's
        assert run.data.params["training.epochs"] == str(EPOCHS)
        assert run.data.metrics["epochs"] == 2
        assert "test_accuracy" not in run.data.metrics  # the proxy never sees the test split
    for run in full:
        assert run.data.metrics["epochs"] == EPOCHS
        assert run.data.tags["autoprune.status"] == "completed"
        source = by_id[run.data.tags["autoprune.proxy_run_id"]]  # the proxy it replays
        schedule = {k: v for k, v in run.data.params.items() if k.startswith("method")}
        assert schedule == {k: v for k, v in source.data.params.items()
                            if k.startswith("method")}
        assert run.data.metrics["macs_ratio"] <= 0.7 + 1e-9 or not any(
            p.data.metrics["macs_ratio"] <= 0.7 for p in proxies)
        assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    parent = two_stage["parent"]
    assert parent.data.tags["autoprune.target"] == "macs_ratio<=0.7"
    assert parent.data.tags["autoprune.search_status"] == "completed"


def test_two_stage_front_holds_full_trials_only(two_stage: dict[str, Any]) -> None:
    client, parent = two_stage["client"], two_stage["parent"]
    full = {c.data.tags["autoprune.trial_id"]: c for c in two_stage["children"]
            if c.data.tags["autoprune.fidelity"] == "full"}
    path = client.download_artifacts(parent.info.run_id, "pareto.csv", str(two_stage["folder"]))
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"val_accuracy", "test_accuracy", "fidelity"} <= set(rows[0])
    assert {r["trial_id"] for r in rows} <= set(full)
    points = {t: (c.data.metrics["val_accuracy"], c.data.metrics["macs"]) for t, c in full.items()}
    for row in rows:  # non-dominated on validation accuracy and MACs
        p = points[row["trial_id"]]
        assert not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points.values())
        assert float(row["test_accuracy"]) == pytest.approx(
            full[row["trial_id"]].data.metrics["test_accuracy"])


def test_two_stage_compute_covers_both_stages_and_costs_less(two_stage: dict[str, Any]) -> None:
    client, children = two_stage["client"], two_stage["children"]
    total = client.get_run(two_stage["parent"].info.run_id).data.metrics["search_train_flops"]
    assert total == pytest.approx(sum(c.data.metrics["trial_train_flops"] for c in children))
    full = [c.data.metrics["train_flops"] for c in children
            if c.data.tags["autoprune.fidelity"] == "full"]
    proxy = [c.data.metrics["train_flops"] for c in children
             if c.data.tags["autoprune.fidelity"] == "proxy"]
    assert sum(proxy) > 0 and total == pytest.approx(sum(full) + sum(proxy))
    # the same 6 schedules at full fidelity would cost at least 6 x the cheapest full run
    assert total < TWO_STAGE_TRIALS * min(full)


def test_pick_without_a_budget_stays_within_the_target(
        two_stage: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["pick", "--experiment", "two", "--tracking-uri", two_stage["uri"]])
    out, err = capsys.readouterr()
    if code == 2:  # no replay within the target: the error names it
        assert "--target macs_ratio<=0.7" in err
        return
    picked = json.loads(out)
    assert picked["macs_ratio"] <= 0.7 and picked["budget"] == "--target macs_ratio<=0.7"
    assert picked["accuracy"] == picked["val_accuracy"] and "test_accuracy" in picked
    full = [c for c in two_stage["children"] if c.data.tags["autoprune.fidelity"] == "full"
            and c.data.metrics["macs_ratio"] <= 0.7]
    best = max(full, key=lambda c: (c.data.metrics["val_accuracy"], -c.data.metrics["macs"]))
    assert picked["run_id"] == best.info.run_id  # chosen on validation, not test


def test_resuming_a_finished_two_stage_search_reruns_nothing(two_stage: dict[str, Any]) -> None:
    folder = two_stage["folder"]
    path = folder / "two.yaml"
    code = main(["search", str(path), "--name", "two", "--tracking-uri", two_stage["uri"],
                 "--storage-path", str(folder / "ray"), "--target", "macs_ratio<=0.7",
                 "--resume"])
    assert code == 0
    assert len(two_stage["lookup"].children()) == len(two_stage["children"])

"""Data-parallel pruning while training (issue 25): every method on two gloo ranks makes
the same structural decisions on both, checked after every step; the Ray Train path from
``autoprune train --workers 2`` and from a search trial.

The method tests run the engine's worker code on two local processes (tests/_ranks.py):
each rank builds its network, reads its shard, prunes or grows, and records digests of its
widths and of every parameter and buffer after every structural step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from _ranks import run_on_ranks

from autoprune.config import parse_train_config
from autoprune.data.loaders import shard_positions
from autoprune.engine.loop import run_training
from autoprune.methods import list_methods

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2,
                                reason="data-parallel tests need 2 CPUs (one per worker)")

# Settings under which every method changes the network within two epochs.
TWO_EPOCHS: dict[str, dict] = {
    "filter": {"target_ratio": 0.5, "start_epoch": 1, "end_epoch": 2},
    "filter_mean_activation": {"criterion": "mean_activation", "target_ratio": 0.5,
                               "start_epoch": 1, "end_epoch": 2},
    "filter_random": {"criterion": "random", "target_ratio": 0.5, "start_epoch": 1,
                      "end_epoch": 2},
    "activation_density": {"start_epoch": 1, "interval": 1, "density_batches": 2},
    "variational": {"strength": 2.0},
    "cgap": {"seed_width": 0.5, "growth_interval": 1, "growth_end_epoch": 1,
             "prune_start_epoch": 2, "prune_end_epoch": 2, "prune_ratio": 0.3},
    "hfp": {"target_macs_ratio": 0.5, "target_params_ratio": 0.5, "interval": 1},
    "prune_retrain": {"target_ratio": 0.5, "retrain_epochs": 1},
}


def config(name: str, epochs: int = 2, **training) -> dict:
    return {
        "model": "small_resnet",
        "dataset": {"name": "digits", "train_subset": 128, "val_fraction": 0.1},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "seed": 0, **training},
        "method": name.split("_mean")[0].split("_random")[0],
        "method_params": TWO_EPOCHS[name],
    }


@pytest.fixture(scope="module")
def two_ranks():
    names = list(TWO_EPOCHS)
    results, folder = run_on_ranks([config(n) for n in names])
    return {n: (results[0][i], results[1][i], folder / "rank0" / f"run{i}")
            for i, n in enumerate(names)}


def test_every_method_is_covered() -> None:
    assert {c.split("_mean")[0].split("_random")[0] for c in TWO_EPOCHS} == \
        set(list_methods()) - {"dense"}


@pytest.mark.parametrize("name", list(TWO_EPOCHS))
def test_ranks_make_the_same_structural_decisions(two_ranks, name: str) -> None:
    rank0, rank1, folder = two_ranks[name]
    assert rank0["error"] is None and rank1["error"] is None, (rank0["error"], rank1["error"])
    steps = [c["step"] for c in rank0["checks"]]
    assert steps == ["set-up", "epoch 1", "epoch 2", "final cut"]
    assert rank0["checks"] == rank1["checks"]  # both saw the same gathered digests
    for check in rank0["checks"]:
        assert len(check["widths"]) == 2 and len(set(check["widths"])) == 1, check
        assert len(check["state"]) == 2 and len(set(check["state"])) == 1, check
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["macs"] < summary["dense_macs"], "no structural change to check"
    widths = [c["widths"][0] for c in rank0["checks"]]
    assert len(set(widths)) > 1, "the widths never changed"
    assert summary["hardware"]["workers"] == 2
    assert summary["hardware"]["backend"] == "gloo"
    assert summary["hardware"]["cross_rank"]["agreed"] is True
    assert summary["hardware"]["cross_rank"]["checks"] == 4


def test_only_rank_zero_writes_files(two_ranks) -> None:
    _, _, folder = two_ranks["filter"]
    assert (folder / "summary.json").is_file() and (folder / "model.pt").is_file()
    other = folder.parent.parent / "rank1" / "run0"
    assert not (other / "summary.json").exists() and not (other / "checkpoint.pt").exists()


def test_two_ranks_count_the_global_batch_once(two_ranks, tmp_path) -> None:
    """A weight criterion (filter l1) on the same global batch: same widths on one worker
    as on two; FLOPs count every sample once; accuracies cover the whole split."""
    _, _, folder = two_ranks["filter"]
    two = json.loads((folder / "summary.json").read_text())
    one = run_training(parse_train_config(config("filter")), tmp_path, progress=False)
    assert two["widths"] == one["widths"]
    assert two["train_flops"] == pytest.approx(one["train_flops"], rel=1e-9)
    assert two["dense_train_flops"] == one["dense_train_flops"]
    assert [e["macs"] for e in two["epochs"]] == [e["macs"] for e in one["epochs"]]
    # evaluation sums every worker's part: a whole number of correct test images
    n_test = 359  # the digits test split
    assert round(two["accuracy"] * n_test, 6) == round(two["accuracy"] * n_test)
    assert one["hardware"]["workers"] == 1 and "cross_rank" not in one["hardware"]


def test_ranks_that_would_differ_are_stopped() -> None:
    """Scores that differ between ranks (a per-rank random criterion) stop the run before
    any surgery: the check can fail."""
    results, _ = run_on_ranks([config("filter_random")], diverge=True)
    for rank in results:
        assert rank[0]["error"] is not None
        assert rank[0]["error"].startswith("RanksDisagree: remove_channels")


def test_shards_split_every_global_batch() -> None:
    n, batch = 70, 16  # 4 full batches and a short one of 6
    parts = [shard_positions(n, batch, r, 2, train=True) for r in range(2)]
    assert [len(p) for p in parts] == [35, 35]
    assert sorted(torch.cat(parts).tolist()) == list(range(70))
    assert parts[0][:8].tolist() == list(range(8)) and parts[1][:8].tolist() == list(range(8, 16))
    # a short last batch smaller than the worker count is dropped by every worker
    parts = [shard_positions(65, batch, r, 2, train=True) for r in range(2)]
    assert [len(p) for p in parts] == [32, 32]
    # evaluation: contiguous parts, nothing dropped
    parts = [shard_positions(65, batch, r, 3, train=False) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(65))


def test_a_batch_that_does_not_split_is_refused() -> None:
    from autoprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"training.batch_size \(30\) must be a multiple of "
                                          r"training.workers \(4\)"):
        parse_train_config({**config("filter"), "training": {"batch_size": 30, "workers": 4}})


# --- the Ray Train path ---------------------------------------------------------------------


def test_train_cli_on_two_ray_train_workers(ray_session, tmp_path, capsys) -> None:
    """``autoprune train --workers 2`` (on the test process's Ray; without one, the command
    starts a local Ray, as benchmarks/data_parallel.py does)."""
    from autoprune.cli import main

    cfg = tmp_path / "filter.yaml"
    cfg.write_text(json.dumps(config("filter", epochs=2)))
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--workers", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2 on 2 workers: val accuracy" in err, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    hardware = summary["hardware"]
    assert hardware["workers"] == 2 and hardware["backend"] == "gloo"
    assert hardware["cross_rank"]["agreed"] is True
    assert [c["step"] for c in hardware["cross_rank"]["steps"]] == \
        ["set-up", "epoch 1", "epoch 2", "final cut"]
    assert summary["macs"] < summary["dense_macs"]
    assert summary["config"]["training"]["workers"] == 2
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    import autoprune

    net = autoprune.load_model(out / "model.pt")
    assert sum(p.numel() for p in net.parameters()) == summary["params"]


def test_a_search_trial_on_two_workers_survives_a_lost_worker_and_is_tracked(
        ray_session, tmp_path) -> None:
    """A search trial on two Ray Train workers; one worker is SIGKILLed after two epochs:
    the trial fails, Tune retries it, and both workers continue from the last checkpoint in
    its pruned shape. The trial then appears in MLflow like any other, with its model."""
    import threading

    import mlflow
    import yaml
    from _processes import descendants

    from autoprune.cli import main
    from autoprune.deploy.mlflow_model import MODEL_ERROR_TAG, MODEL_TAG, tracking
    from autoprune.search.store import RunLookup, open_client

    space = {
        "num_samples": 1, "sampler": "random", "seed": 0, "max_failures": 1,
        "resources": {"workers": 2, "cpu": 1},
        "fixed": {"model": "small_cnn", "dataset": {"name": "digits", "train_subset": 256},
                  "training": {"epochs": 6, "batch_size": 8, "lr": 0.05, "seed": 0}},
        "searched": {"methods": {"filter": {"target_ratio": 0.5, "end_epoch": 2}}},
    }
    path = tmp_path / "lost.yaml"
    path.write_text(yaml.safe_dump(space))

    def results() -> list[dict]:
        files = list((tmp_path / "ray" / "lost").glob("trial_*/result.json"))
        return [json.loads(line) for line in files[0].read_text().splitlines()
                if line.strip()] if files else []

    killed: list[int] = []

    def kill_a_worker() -> None:
        import signal
        import time

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if len(results()) >= 2 and list((tmp_path / "ray" / "lost").glob(
                    "trial_*/checkpoint_*")):
                for pid in descendants(os.getpid()):
                    try:
                        name = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if name.startswith(b"ray::RayTrainWorker"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        break
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_a_worker)
    watcher.start()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["search", str(path), "--name", "lost", "--tracking-uri", uri,
                 "--storage-path", str(tmp_path / "ray")])
    watcher.join()
    assert code == 0 and killed, "no worker was killed mid-run"
    rows = results()
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, [(r["epoch"], r["iterations_since_restore"]) for r in rows]
    before, first = rows[restarts[1] - 1], rows[restarts[1]]
    assert first["epoch"] == before["epoch"] + 1 > 2  # from the checkpoint, not from scratch
    assert first["macs"] == before["macs"] < rows[-1]["dense_macs"]  # in its pruned shape
    assert rows[-1]["is_final"] and rows[-1]["trial_status"] == "completed"

    client = open_client(uri)
    [child] = RunLookup(client, client.get_experiment_by_name("lost").experiment_id).children()
    assert child.data.tags["autoprune.status"] == "completed", child.data.tags
    assert child.data.params["training.workers"] == "2"
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"summary.json", "model.pt", "schedule.png"} <= names, names
    assert MODEL_ERROR_TAG not in child.data.tags
    assert child.data.tags[MODEL_TAG].startswith("models:/m-")  # its network, an MLflow model
    with tracking(uri):
        logged = mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/model")
    assert sum(p.numel() for p in logged.parameters()) == int(child.data.metrics["params"])
    summary = json.loads(Path(client.download_artifacts(child.info.run_id, "summary.json",
                                                        str(tmp_path))).read_text())
    assert summary["hardware"]["workers"] == 2
    assert summary["hardware"]["cross_rank"]["agreed"] is True
    assert summary["hardware"]["cross_rank"]["steps"][0]["step"].startswith("resume at epoch")
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "macs"))
    assert set(range(1, 7)) <= set(steps)  # every epoch, relayed by worker 0, then logged


def test_a_search_counts_every_worker_of_a_trial() -> None:
    from autoprune.errors import UserError
    from autoprune.search.space import load_space, parse_space
    from autoprune.search.tuner import trials_that_fit

    def space(resources: dict) -> object:
        return parse_space({
            "resources": resources,
            "fixed": {"model": "small_cnn", "dataset": "digits",
                      "training": {"epochs": 2, "batch_size": 64}},
            "searched": {"methods": {"dense": {}}}})

    gpus = load_space(Path(__file__).parent.parent / "search_spaces" / "resnet50_imagenet.yaml")
    assert gpus.resources.trial_total == (16.0, 2.0)  # 2 workers x (8 CPUs, 1 GPU)
    assert gpus.fixed["training"]["workers"] == 2
    assert gpus.resources.trial_process == {"cpu": 0.0, "gpu": 0.0, "memory": 1048576.0}
    assert trials_that_fit(gpus, {"CPU": 64.0, "GPU": 8.0}, local=False) == 4
    assert trials_that_fit(gpus, {"CPU": 24.0, "GPU": 8.0}, local=False) == 1  # CPU-bound
    cpu = space({"workers": 2, "cpu": 1})  # per-worker defaults: cpu, gpu
    assert cpu.resources.trial_total == (2.0, 0.0)
    assert trials_that_fit(cpu, {"CPU": 2.0}, local=True) == 1
    with pytest.raises(UserError, match=r"a trial needs 4 CPU and 0 GPU \(2 workers\), "
                                        r"this machine has 2 CPU"):
        trials_that_fit(space({"workers": 2, "cpu_per_worker": 2}), {"CPU": 2.0}, local=True)
    single = space({"cpu": 1})
    assert single.resources.trial_process == {"cpu": 1.0, "gpu": 0.0}
    assert "workers" not in single.fixed.get("training", {})

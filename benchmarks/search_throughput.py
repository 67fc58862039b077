"""How fast does a search run trials, and what do Ray and MLflow cost per trial?

Runs the same search (``--trials`` trials of one filter-pruning schedule of small_resnet on
a Fashion-MNIST subset, seeds differing only in the sampled rate) twice on this machine
through ``autoprune search`` with a local Ray and an MLflow SQLite store:

- **serial**: one trial at a time, reserving every core (``resources.cpu`` = cores, torch
  threads = cores);
- **concurrent**: two trials at a time, each reserving half the cores.

Throughput = completed trials per hour of the search's trial span (first trial start to
last trial end, from the MLflow child runs), so Ray's start-up is not counted as trial
time; the command's whole wall time is reported too. ``speedup_2_vs_1`` is the ratio of
the two throughputs.

Orchestration overhead: one trial of the concurrent search is replayed with ``autoprune
train`` (its ``train_config.yaml`` artifact, the same threads); ``overhead_fraction`` is
the trial's wall time under the search (MLflow child run start to end: Ray starting the
trial, imports, data, training, reports, MLflow logging) over the wall time of the whole
``autoprune train`` command (process start, imports, data, training, saving), minus 1.
The replay runs alone, the trial ran beside another one: the figure includes the slowdown
of sharing the machine's memory bandwidth, so it is an upper bound.

Usage::

    .venv/bin/python benchmarks/search_throughput.py [--trials 6] [--epochs 6] [--subset 4000]

Results: ``benchmarks/results/search_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).parent / "results" / "search_throughput.json"
ROOT = Path(__file__).resolve().parent.parent


def space(trials: int, epochs: int, subset: int, cpu: int, concurrent: int) -> dict[str, Any]:
    return {
        "num_samples": trials, "sampler": "random", "seed": 0,
        "objectives": ["accuracy", "macs"],
        "resources": {"cpu": cpu}, "max_concurrent": concurrent, "max_failures": 0,
        "fixed": {"model": "small_resnet",
                  "dataset": {"name": "fashion_mnist", "train_subset": subset,
                              "val_fraction": 0.02},
                  "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0}},
        "searched": {"methods": {"filter": {"target_ratio": {"low": 0.3, "high": 0.7},
                                            "end_epoch": max(1, epochs // 2)}}},
    }


def autoprune(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "autoprune", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def run_search(folder: Path, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    from mlflow import MlflowClient

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    wall, _ = autoprune("search", str(path), "--name", name, "--tracking-uri", uri,
                        "--storage-path", str(folder / "ray"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("autoprune.role") == "trial"
              and r.data.tags.get("autoprune.status") == "completed"]
    start = min(r.info.start_time for r in trials) / 1e3
    end = max(r.info.end_time for r in trials) / 1e3
    span = end - start
    return {"name": name, "completed": len(trials), "command_wall_s": wall,
            "trial_span_s": span, "trials_per_hour": len(trials) / span * 3600,
            "trial_wall_s": [(r.info.end_time - r.info.start_time) / 1e3 for r in trials],
            "uri": uri, "runs": [r.info.run_id for r in trials],
            "cpu_per_trial": spec["resources"]["cpu"],
            "max_concurrent": spec["max_concurrent"]}


def replay_overhead(folder: Path, search: dict[str, Any], threads: int) -> dict[str, Any]:
    """Replay the median-length trial of ``search`` with ``autoprune train``."""
    from mlflow import MlflowClient

    client = MlflowClient(search["uri"])
    walls = dict(zip(search["runs"], search["trial_wall_s"]))
    run_id = sorted(walls, key=walls.get)[len(walls) // 2]
    config = yaml.safe_load(Path(client.download_artifacts(
        run_id, "train_config.yaml", str(folder))).read_text())
    config["training"]["threads"] = threads
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    wall, _ = autoprune("train", str(path), "--out", str(folder / "replay"), "--quiet",
                        "--fresh")
    summary = json.loads((folder / "replay" / "summary.json").read_text())
    trial_wall = walls[run_id]
    train_wall = float(summary["wall_time_s"])
    return {"run_id": run_id, "trial_wall_s": trial_wall, "train_wall_s": train_wall,
            "train_command_wall_s": wall, "overhead_fraction": trial_wall / wall - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--subset", type=int, default=4000)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    with tempfile.TemporaryDirectory(prefix="autoprune-throughput-") as tmp:
        folder = Path(tmp)
        serial = run_search(folder, "serial", space(args.trials, args.epochs, args.subset,
                                                    cores, 1))
        print(json.dumps({k: v for k, v in serial.items() if k not in ("runs", "uri")}),
              flush=True)
        concurrent = run_search(folder, "concurrent", space(args.trials, args.epochs,
                                                            args.subset, half, 2))
        print(json.dumps({k: v for k, v in concurrent.items() if k not in ("runs", "uri")}),
              flush=True)
        overhead = replay_overhead(folder, concurrent, half)
    for record in (serial, concurrent):
        record.pop("uri")
        record.pop("runs")
    report = {
        "cores": cores, "trials": args.trials, "epochs": args.epochs, "subset": args.subset,
        "serial": serial, "concurrent": concurrent, "overhead": overhead,
        "speedup_2_vs_1": concurrent["trials_per_hour"] / serial["trials_per_hour"],
        "overhead_fraction": overhead["overhead_fraction"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"speedup_2_vs_1 {report['speedup_2_vs_1']:.3f}  overhead_fraction "
          f"{report['overhead_fraction']:.3f} (trial {overhead['trial_wall_s']:.1f} s under "
          f"the search, {overhead['train_command_wall_s']:.1f} s under autoprune train)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

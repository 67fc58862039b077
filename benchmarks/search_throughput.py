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

Then the median trial of the serial search is replayed with ``autoprune train`` (its
``train_config.yaml`` artifact): alone on every core, alone on half of them, and twice at
once on half of them each. From those:

- ``overhead_fraction``: the serial trial's wall time under the search (MLflow child run
  start to end: Ray starting the trial, data, training, reports, MLflow logging) over the
  wall time of the whole ``autoprune train`` command on the same threads, alone (process
  start, imports, data, training, saving), minus 1;
- ``attainable_speedup``: what two trials at once could give with no Ray and no MLflow at
  all, i.e. two plain trainings on half the cores each against one on all of them. On a
  machine where one training already uses every core well, this, not 2, is the ceiling
  of ``speedup_2_vs_1``; ``thread_scaling`` and ``corun_slowdown`` say why.

On a GPU (``--device cuda``) it measures what fractional GPUs per trial (``resources:
{gpu: 1/K}``, K trials sharing one GPU) can give: K plain ``autoprune train`` processes
of one schedule of the same search at once on the one GPU, for each K of ``--gpu-share``,
against one alone (``gpu_share``: trainings per hour and ``speedup_vs_1``). These are the
trainings Ray would start, without Ray and MLflow themselves.

Usage::

    .venv/bin/python benchmarks/search_throughput.py [--trials 4] [--epochs 12] [--subset 12000]
    python benchmarks/search_throughput.py --device cuda --gpu-share 1 2 4 8

Results: ``benchmarks/results/search_throughput.json`` (``search_throughput_cuda.json``
with ``--device cuda``).
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


def space(trials: int, epochs: int, subset: int, cpu: int, concurrent: int,
          precision: str = "auto") -> dict[str, Any]:
    return {
        "num_samples": trials, "sampler": "random", "seed": 0,
        "objectives": ["accuracy", "macs"],
        "resources": {"cpu": cpu}, "max_concurrent": concurrent, "max_failures": 0,
        "fixed": {"model": "small_resnet",
                  "dataset": {"name": "fashion_mnist", "train_subset": subset,
                              "val_fraction": 0.02},
                  "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0,
                               "precision": precision}},
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
            "engine_wall_s": [r.data.metrics.get("wall_time_s") for r in trials],
            "uri": uri, "runs": [r.info.run_id for r in trials],
            "cpu_per_trial": spec["resources"]["cpu"],
            "max_concurrent": spec["max_concurrent"]}


def replay_config(folder: Path, search: dict[str, Any]) -> dict[str, Any]:
    """The train config of the median-length trial of ``search``."""
    from mlflow import MlflowClient

    client = MlflowClient(search["uri"])
    walls = dict(zip(search["runs"], search["trial_wall_s"]))
    run_id = sorted(walls, key=walls.get)[len(walls) // 2]
    config = yaml.safe_load(Path(client.download_artifacts(
        run_id, "train_config.yaml", str(folder))).read_text())
    engine = dict(zip(search["runs"], search["engine_wall_s"]))
    return {"run_id": run_id, "trial_wall_s": walls[run_id], "engine_wall_s": engine[run_id],
            "config": config}


def train_alone(folder: Path, config: dict[str, Any], threads: int,
                copies: int = 1) -> list[dict[str, float]]:
    """``copies`` runs of ``autoprune train`` on ``config`` with ``threads`` threads each,
    started together; per run: the command's wall time and the training's own."""
    runs = []
    for i in range(copies):
        path = folder / f"train-{config['training'].get('device', 'cpu')}-{threads}t-" \
            f"{copies}x-{i}.yaml"
        spec = {**config, "training": {**config["training"], "threads": threads}}
        path.write_text(yaml.safe_dump(spec))
        out = folder / path.stem
        argv = [sys.executable, "-m", "autoprune", "train", str(path), "--out", str(out),
                "--quiet", "--fresh"]
        runs.append((out, subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)))
    start = time.perf_counter()
    walls = []
    for _, proc in runs:
        _, err = proc.communicate()
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"autoprune train failed:\n{err[-3000:]}")
    return [{"command_wall_s": wall,
             "train_wall_s": float(json.loads((out / "summary.json").read_text())["wall_time_s"])}
            for (out, _), wall in zip(runs, walls)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def decompose(serial: dict[str, Any], concurrent: dict[str, Any], replay: dict[str, Any],
              alone: dict[str, list[dict[str, float]]], cores: int) -> dict[str, Any]:
    """Split the search's figures into what the hardware allows and what Ray + MLflow cost.

    - ``thread_scaling``: one training on ``cores`` threads against one thread, alone;
    - ``corun_slowdown``: a one-thread training beside another one against alone;
    - ``attainable_speedup``: two one-thread ``autoprune train`` at once against one on all
      cores, in trainings per hour: what the concurrent search could reach with no Ray and
      no MLflow at all;
    - ``overhead_fraction``: the serial search's median trial (MLflow child run start to
      end) against the same config's whole ``autoprune train`` command on the same threads,
      alone, minus 1; ``overhead_fraction_of_span``: the serial search's trial span per
      trial (gaps between trials included) against the same command, minus 1;
      ``overhead_fraction_concurrent``: a concurrent trial against a training beside another;
    - the replayed trial's overhead split in two: ``overhead_inside_training_s`` (the
      engine's own wall time in the trial against the same training under ``autoprune
      train``: the driver and Ray taking CPU from it, the per-epoch reports) and
      ``overhead_around_training_s`` (the rest of the trial beyond the training, less what
      the train command spends beyond its training: start, imports, saving).
    """
    full, one, pair = alone["full"][0], alone["one"][0], alone["pair"]
    pair_wall = mean([run["command_wall_s"] for run in pair])
    serial_trial = replay["trial_wall_s"]  # the median serial trial
    concurrent_trial = sorted(concurrent["trial_wall_s"])[len(concurrent["trial_wall_s"]) // 2]
    attainable = 2 * full["command_wall_s"] / pair_wall
    speedup = concurrent["trials_per_hour"] / serial["trials_per_hour"]
    return {
        "speedup_2_vs_1": speedup,
        "overhead_fraction": serial_trial / full["command_wall_s"] - 1,
        "overhead_s": serial_trial - full["command_wall_s"],
        "overhead_fraction_of_span": serial["trial_span_s"] / serial["completed"]
        / full["command_wall_s"] - 1,
        "overhead_fraction_concurrent": concurrent_trial / pair_wall - 1,
        "thread_scaling": one["command_wall_s"] / full["command_wall_s"],
        "corun_slowdown": pair_wall / one["command_wall_s"],
        "attainable_speedup": attainable,
        "speedup_vs_attainable": speedup / attainable,
        # the replayed trial's overhead, split: inside its training (the engine's own time
        # against the same training under `autoprune train`) and around it
        "replayed_trial_wall_s": replay["trial_wall_s"],
        "replayed_trial_engine_s": replay["engine_wall_s"],
        "overhead_inside_training_s": replay["engine_wall_s"] - full["train_wall_s"],
        "overhead_around_training_s": replay["trial_wall_s"] - replay["engine_wall_s"]
        - (full["command_wall_s"] - full["train_wall_s"]),
        "replayed_run": replay["run_id"], "cores": cores,
        "train_alone": alone,
    }


def gpu_sharing(folder: Path, args: argparse.Namespace, cores: int) -> dict[str, Any]:
    """K ``autoprune train`` of one schedule of the search at once on one GPU, for each K of
    ``args.gpu_share``: trainings per hour against one alone. Each process gets cores / K
    CPU threads, as ``resources: {cpu: cores / K, gpu: 1 / K}`` would."""
    import torch

    spec = space(1, args.epochs, args.subset, cores, 1, args.precision)["fixed"]
    config = {**spec, "training": {**spec["training"], "device": args.device},
              "method": "filter",
              "method_params": {"target_ratio": 0.5, "end_epoch": max(1, args.epochs // 2)}}
    shares: dict[str, Any] = {}
    for k in sorted({1, *args.gpu_share}):
        runs = train_alone(folder, config, max(1, cores // k), copies=k)
        wall = max(run["command_wall_s"] for run in runs)
        shares[str(k)] = {"runs": runs, "wall_s": wall, "trainings_per_hour": k / wall * 3600,
                          "train_wall_s": mean([run["train_wall_s"] for run in runs])}
        print(json.dumps({"gpu_share": k, **shares[str(k)]}), flush=True)
    for row in shares.values():
        row["speedup_vs_1"] = row["trainings_per_hour"] / shares["1"]["trainings_per_hour"]
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    return {"device": name, "cores": cores, "epochs": args.epochs,
            "subset": args.subset, "config": config, "gpu_share": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--subset", type=int, default=12000)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="training.precision of every trial and training")
    parser.add_argument("--gpu-share", type=int, nargs="+", default=[1, 2, 4],
                        help="with --device cuda: numbers of trainings sharing the GPU")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.device == "cuda":
        with tempfile.TemporaryDirectory(prefix="autoprune-gpu-share-") as tmp:
            report = gpu_sharing(Path(tmp), args, cores)
        path = RESULTS.with_name("search_throughput_cuda.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        for k, row in report["gpu_share"].items():
            print(f"{k} at once: {row['trainings_per_hour']:.0f} trainings/h, speedup "
                  f"{row['speedup_vs_1']:.2f}, {row['train_wall_s']:.1f} s of training each")
        print(f"wrote {path}")
        return
    half = max(1, cores // 2)
    with tempfile.TemporaryDirectory(prefix="autoprune-throughput-") as tmp:
        folder = Path(tmp)
        serial = run_search(folder, "serial", space(args.trials, args.epochs, args.subset,
                                                    cores, 1, args.precision))
        print(json.dumps({k: v for k, v in serial.items() if k not in ("runs", "uri")}),
              flush=True)
        concurrent = run_search(folder, "concurrent", space(args.trials, args.epochs,
                                                            args.subset, half, 2,
                                                            args.precision))
        print(json.dumps({k: v for k, v in concurrent.items() if k not in ("runs", "uri")}),
              flush=True)
        replay = replay_config(folder, serial)
        alone = {"full": train_alone(folder, replay["config"], cores),
                 "one": train_alone(folder, replay["config"], half),
                 "pair": train_alone(folder, replay["config"], half, copies=2)}
        print(json.dumps(alone), flush=True)
    for record in (serial, concurrent):
        record.pop("uri")
        record.pop("runs")
    figures = decompose(serial, concurrent, replay, alone, cores)
    report = {"cores": cores, "trials": args.trials, "epochs": args.epochs,
              "precision": args.precision,
              "subset": args.subset, "serial": serial, "concurrent": concurrent, **figures}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for key in ("speedup_2_vs_1", "attainable_speedup", "speedup_vs_attainable",
                "thread_scaling", "corun_slowdown", "overhead_fraction", "overhead_s",
                "overhead_fraction_of_span", "overhead_fraction_concurrent",
                "overhead_inside_training_s", "overhead_around_training_s"):
        print(f"{key:30s} {report[key]:.3f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Where does a trial's time go beyond its training? One training, four ways.

``benchmarks/search_throughput.py`` found a search trial 7-18% slower than the same
``autoprune train``, most of it *inside* the training (the engine's own wall time). This
script trains one fixed schedule (search_throughput's, filter pruning of small_resnet on
a Fashion-MNIST subset, every core as torch threads) four ways, each ``--repeats`` times,
interleaved so that a slow spell of the machine hits all four alike:

- **alone**: ``autoprune train``, nothing else running;
- **idle Ray beside**: the same, while a local Ray head (``ray start --head``) idles;
- **Ray task**: ``engine.train`` inside a Ray task reserving every core (a Ray worker
  process, its environment and threads; no Tune, no MLflow);
- **search trial**: ``autoprune search`` of that one schedule (Ray Tune, per-epoch reports
  with checkpoints, the driver logging to MLflow).

For each run: the training's wall time (the engine's ``wall_time_s``), and the CPU time
every *other* process on the machine used while the training process was at work
(``others_cpu_s``, from ``/proc/stat`` less the training process's own; ``others_cores``
per second), i.e. what competed with the training for the cores. ``overhead_fraction``
of a setting is its median training time over the median alone, minus 1.

Usage::

    .venv/bin/python benchmarks/trial_overhead.py [--epochs 6] [--repeats 3]

Results: ``benchmarks/results/trial_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from search_throughput import space  # noqa: E402  (the same schedule, the same data)

RESULTS = ROOT / "benchmarks" / "results" / "trial_overhead.json"
CLK = os.sysconf("SC_CLK_TCK")


def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK


def tree_cpu_s(pid: int, prefix: bytes | None = None) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and its descendants, by process; with
    ``prefix``, only those whose command line starts with it (a Ray worker's
    ``ray::...``)."""
    total: dict[int, float] = {}
    for p in [pid, *_children(pid)]:
        try:
            if prefix is not None and not Path(f"/proc/{p}/cmdline").read_bytes().startswith(
                    prefix):
                continue
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total[p] = (int(stat[11]) + int(stat[12])) / CLK
        except (OSError, IndexError):
            continue
    return total


def _children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


class Meter:
    """Busy CPU of the machine, and of the process that trains, sampled over a run.

    ``others_cpu_s`` counts only the samples in which the training process was busy (more
    than half a core): what competed with the training while it trained, not start-up."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.samples: list[tuple[float, float, float]] = []  # (time, machine, training)
        self.pid: int | None = None
        self.prefix: bytes | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def follow(self, pid: int, prefix: bytes | None = None) -> None:
        """Count as training ``pid``'s tree, or only its ``prefix`` processes."""
        self.pid, self.prefix = pid, prefix

    def _follow(self) -> None:
        while not self._stop:
            if self.pid is not None:
                for p, cpu in tree_cpu_s(self.pid, self.prefix).items():
                    self.seen[p] = max(self.seen.get(p, 0.0), cpu)
            self.samples.append((time.perf_counter(), busy_s(), sum(self.seen.values())))
            time.sleep(0.25)

    def stop(self) -> dict[str, float]:
        self._stop = True
        self._thread.join()
        training_s = others = own = 0.0
        for (t0, m0, o0), (t1, m1, o1) in zip(self.samples, self.samples[1:]):
            if (o1 - o0) > 0.5 * (t1 - t0):  # the training process is at work
                training_s += t1 - t0
                own += o1 - o0
                others += max(0.0, (m1 - m0) - (o1 - o0))
        return {"busy_window_s": training_s, "training_cpu_s": own, "others_cpu_s": others,
                "others_cores": others / training_s if training_s else 0.0}


def config(args: argparse.Namespace) -> dict[str, Any]:
    spec = space(1, args.epochs, args.subset, args.cores, 1)
    fixed = spec["fixed"]
    return {**fixed, "training": {**fixed["training"], "threads": args.cores},
            "method": "filter",
            "method_params": {"target_ratio": 0.5, "end_epoch": max(1, args.epochs // 2)}}


def run_train(folder: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    path = folder / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config(args)))
    out = folder / tag
    meter = Meter()
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "train", str(path), "--out",
                             str(out), "--quiet", "--fresh"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    meter.follow(proc.pid)
    _, err = proc.communicate()
    cpu = meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"autoprune train failed:\n{err[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"train_wall_s": summary["wall_time_s"], **cpu}


def run_beside_idle_ray(folder: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    temp = Path(tempfile.mkdtemp(prefix="ovh-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "start", "--head", "--port", "0", "--num-cpus", str(args.cores),
                    "--include-dashboard=false", "--temp-dir", str(temp),
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        time.sleep(5)  # let it settle into idling
        return run_train(folder, args, tag)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def run_ray_task(folder: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    path = folder / f"{tag}.json"
    path.write_text(json.dumps(config(args)))
    script = f"""
import json, logging, os, ray
ray.init(address="local", num_cpus={args.cores}, include_dashboard=False,
         logging_level=logging.ERROR, log_to_driver=False)

@ray.remote(num_cpus={args.cores})
def job():
    import torch
    from autoprune.config import parse_train_config
    from autoprune.engine import train
    torch.set_num_threads({args.cores})
    out = {str(folder / tag)!r}
    s = train(parse_train_config(json.load(open({str(path)!r}))), out, progress=False,
              resume=False)
    return s["wall_time_s"], os.getpid(), os.environ.get("OMP_NUM_THREADS")

wall, pid, omp = ray.get(job.remote())
print(json.dumps({{"train_wall_s": wall, "omp_num_threads": omp}}))
"""
    meter = Meter()
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    meter.follow(proc.pid, b"ray::job")  # the Ray worker (the local Ray is in its tree)
    out, err = proc.communicate()
    cpu = meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"the Ray task failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), **cpu}


def run_search(folder: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    spec = space(1, args.epochs, args.subset, args.cores, 1)
    spec["searched"] = {"methods": {"filter": {"target_ratio": 0.5,
                                               "end_epoch": max(1, args.epochs // 2)}}}
    spec["fixed"]["training"]["threads"] = args.cores
    path = folder / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{folder / (tag + '.db')}"
    meter = Meter()
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "search", str(path), "--name",
                             tag, "--tracking-uri", uri, "--storage-path",
                             str(folder / "ray")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    meter.follow(proc.pid, b"ray::ImplicitFunc")  # the trial's Ray worker
    _, err = proc.communicate()
    cpu = meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"autoprune search failed:\n{err[-3000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tag)
    [trial] = [r for r in client.search_runs([experiment.experiment_id])
               if r.data.tags.get("autoprune.role") == "trial"]
    return {"train_wall_s": trial.data.metrics["wall_time_s"],
            "trial_wall_s": (trial.info.end_time - trial.info.start_time) / 1e3, **cpu}


SETTINGS = {"alone": run_train, "idle Ray beside": run_beside_idle_ray,
            "Ray task": run_ray_task, "search trial": run_search}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--subset", type=int, default=12000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out-json", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="trial-overhead-") as tmp:
        folder = Path(tmp)
        for repeat in range(args.repeats):
            for name, run in SETTINGS.items():
                row = run(folder, args, f"{name.replace(' ', '-')}-{repeat}")
                rows[name].append(row)
                print(f"{name:>16} #{repeat}: training {row['train_wall_s']:6.1f} s, others "
                      f"used {row['others_cpu_s']:5.1f} CPU-s", flush=True)
    base = statistics.median(r["train_wall_s"] for r in rows["alone"])
    summary = {
        name: {"median_train_wall_s": statistics.median(r["train_wall_s"] for r in runs),
               "overhead_fraction": statistics.median(r["train_wall_s"] for r in runs) / base
               - 1,
               "median_others_cpu_s": statistics.median(r["others_cpu_s"] for r in runs),
               "median_others_cores": statistics.median(r["others_cores"] for r in runs)}
        for name, runs in rows.items()
    }
    result = {
        "benchmark": "trial_overhead", "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {"epochs": args.epochs, "subset": args.subset, "threads": args.cores,
                     "repeats": args.repeats, "model": "small_resnet",
                     "method": "filter 0.5"},
        "summary": summary, "runs": rows,
    }
    print(json.dumps(summary, indent=2))
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

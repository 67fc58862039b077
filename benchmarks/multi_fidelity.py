"""Multi-fidelity search: hypervolume against the compute a search spends, and proxies.

Runs real ``autoprune search`` commands (local Ray, MLflow, the product's own code) on
``search_spaces/fashion_multi_fidelity.yaml`` (small_resnet, 2,000 Fashion-MNIST images,
12 epochs a full trial, every method), for each setting and seed:

- ``random``: random sampling, every trial at full fidelity;
- ``nsga2``: NSGA-II, every trial at full fidelity;
- ``nsga2+moasha``: NSGA-II with the multi-objective successive-halving TrialScheduler
  (rungs of 3 and 12 epochs: each trial first trains its schedule compressed to 3 epochs,
  the top third by non-dominated sorting goes on to 12), with more trials for about the
  same compute.

From MLflow it reads, trial by trial in the order they ended, the search's cumulative
training FLOPs (every rung of every trial) and the hypervolume of the full-fidelity front
so far: objectives (test accuracy, MACs / dense MACs), reference point (0, 1.1).

Then the proxy question, on the schedules of the ``random`` searches (an unbiased sample
of the space) that completed at full fidelity: each is trained again (a) compressed to 3
epochs (the lowest rung) and (b) compressed to 3 epochs on half the training images (a
cheap search budget: a quarter of the epochs, a subset), and the Spearman and Kendall
rank correlations of accuracy and of MACs between proxy and full run are reported, with
how much of the full front the proxy's front finds.

Everything resumes: a search that exists is resumed (``--resume``) or, when complete,
only read; proxy runs already in ``runs/bench-multi-fidelity/proxies.json`` are skipped.

    python benchmarks/multi_fidelity.py                 # ~75 min on an idle 2-core CPU
    python benchmarks/multi_fidelity.py --seeds 0 --settings nsga2 nsga2+moasha

Writes ``benchmarks/results/multi_fidelity.json`` (rows: setting, seed, hypervolume,
search_train_flops, wall_s, ...; the correlations under ``proxy_correlation``) and
``multi_fidelity.png``, and prints the tables that README quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "bench-multi-fidelity"
SPACE = ROOT / "search_spaces" / "fashion_multi_fidelity.yaml"
REFERENCE = (0.0, 1.1)
SETTINGS: dict[str, dict[str, Any]] = {
    "random": {"sampler": "random", "scheduler": "none", "trials": 16},
    "nsga2": {"sampler": "nsga2", "scheduler": "none", "trials": 16},
    "nsga2+moasha": {"sampler": "nsga2", "scheduler": "moasha", "trials": 32},
    "tpe+moasha": {"sampler": "tpe", "scheduler": "moasha", "trials": 32},
}
PROXY_EPOCHS = 3


def uri() -> str:
    return f"sqlite:///{WORK / 'mlflow.db'}"


def search_name(setting: str, seed: int) -> str:
    return f"mf-{setting.replace('+', '-')}-s{seed}"


def run_search(setting: str, seed: int) -> float:
    """Run (or resume) one search through the command line; its wall time in seconds
    (0 when it was already complete)."""
    from ray import tune

    spec = SETTINGS[setting]
    name = search_name(setting, seed)
    storage = WORK / "ray"
    args = [sys.executable, "-m", "autoprune", "search", str(SPACE), "--name", name,
            "--sampler", spec["sampler"], "--scheduler", spec["scheduler"],
            "--seed", str(seed), "--num-samples", str(spec["trials"]),
            "--tracking-uri", uri(), "--storage-path", str(storage)]
    if tune.Tuner.can_restore(str(storage / name)):
        if finished(name):
            return 0.0
        args.append("--resume")
    start = time.perf_counter()
    log = WORK / f"{name}.log"
    with open(log, "a") as out:
        code = subprocess.call(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise RuntimeError(f"{name}: autoprune search exited with {code} (see {log})")
    return time.perf_counter() - start


def finished(name: str) -> bool:
    """Whether MLflow holds search ``name`` as completed (nothing left to run)."""
    from autoprune.errors import UserError
    from autoprune.search.store import load_search

    try:
        parent = load_search(uri(), name).parent
    except UserError:
        return False
    return parent.data.tags.get("autoprune.search_status") == "completed"


def trajectory(setting: str, seed: int) -> dict[str, Any]:
    """The search as MLflow holds it: hypervolume and compute after each ended trial."""
    from autoprune.search.pareto import hypervolume_2d
    from autoprune.search.store import RunLookup, load_search

    record = load_search(uri(), search_name(setting, seed))
    runs = RunLookup(record.lookup.client, record.lookup.experiment_id,
                     record.lookup.parent_id).children()
    runs = sorted(runs, key=lambda r: r.info.end_time or 0)
    points: list[tuple[float, float]] = []
    flops, curve = 0.0, []
    statuses: dict[str, int] = {}
    for run in runs:
        metrics, status = run.data.metrics, run.data.tags.get("autoprune.status", "")
        statuses[status] = statuses.get(status, 0) + 1
        flops += float(metrics.get("trial_train_flops", metrics.get("train_flops", 0.0)))
        if status == "completed":
            points.append((metrics["accuracy"], metrics["macs_ratio"]))
        curve.append({"search_train_flops": flops,
                      "hypervolume": hypervolume_2d(points, ("max", "min"), REFERENCE)})
    parent = record.parent
    start = parent.info.start_time or 0
    end = max((r.info.end_time or 0) for r in runs) if runs else start
    return {"setting": setting, "seed": seed,
            "hypervolume": curve[-1]["hypervolume"] if curve else 0.0,
            "search_train_flops": flops,
            "parent_search_train_flops": parent.data.metrics.get("search_train_flops"),
            "wall_s": (end - start) / 1000.0, "trials": len(runs), "statuses": statuses,
            "trajectory": curve}


# --- proxies ---------------------------------------------------------------------------


def proxy_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one schedule at a proxy budget (one torch thread; a process of its own)."""
    import tempfile

    import torch

    from autoprune.config import at_budget, parse_train_config
    from autoprune.engine import train
    from autoprune.errors import ConfigError

    torch.set_num_threads(1)
    subset = job["train_subset"]
    try:
        config = parse_train_config(at_budget(job["config"], PROXY_EPOCHS, subset))
    except ConfigError as exc:  # more phases than 3 epochs (cgap): skipped, as moasha does
        return {**{k: job[k] for k in ("key", "run_id", "proxy")}, "skipped": str(exc),
                "accuracy": math.nan, "macs_ratio": math.nan, "train_flops": 0.0}
    with tempfile.TemporaryDirectory(prefix="autoprune-proxy-") as folder:
        summary = train(config, folder, progress=False, resume=False)
    return {**{k: job[k] for k in ("key", "run_id", "proxy")},
            "accuracy": summary["accuracy"], "macs_ratio": summary["macs_ratio"],
            "train_flops": summary["train_flops"]}


def full_schedules(seeds: list[int]) -> list[dict[str, Any]]:
    """The completed full-fidelity trials of the random searches, with their configs."""
    from autoprune.search.pick import replay_config
    from autoprune.search.store import load_search

    out = []
    for seed in seeds:
        record = load_search(uri(), search_name("random", seed))
        for row in record.rows:
            config = replay_config(record.lookup.client, row["run_id"])
            out.append({"run_id": row["run_id"], "config": config,
                        "accuracy": row["accuracy"], "macs_ratio": row["macs_ratio"],
                        "method": row.get("method", "")})
    return out


def run_proxies(schedules: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    cache_file = WORK / "proxies.json"
    done = json.loads(cache_file.read_text()) if cache_file.is_file() else []
    have = {row["key"] for row in done}
    jobs = []
    for s in schedules:
        subset = s["config"]["dataset"].get("train_subset") or 2000
        for proxy, size in (("rung", subset), ("budget", subset // 2)):
            key = f"{s['run_id']}:{proxy}"
            if key not in have:
                jobs.append({"key": key, "run_id": s["run_id"], "proxy": proxy,
                             "config": s["config"], "train_subset": size})
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(proxy_run, jobs):
            done.append(row)
            cache_file.write_text(json.dumps(done, indent=1))
    return done


def correlations(schedules: list[dict[str, Any]], proxies: list[dict[str, Any]]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    from autoprune.search.pareto import hypervolume_2d, non_dominated

    full = {s["run_id"]: s for s in schedules}
    out: dict[str, Any] = {}
    for proxy in ("rung", "budget"):
        rows = [p for p in proxies if p["proxy"] == proxy and p["run_id"] in full]
        pairs = [(full[p["run_id"]], p) for p in rows
                 if all(math.isfinite(v) for v in (p["accuracy"], p["macs_ratio"]))]
        entry: dict[str, Any] = {"schedules": len(pairs),
                                 "skipped": sum(1 for p in rows if p.get("skipped"))}
        for metric in ("accuracy", "macs_ratio"):
            a = [f[metric] for f, _ in pairs]
            b = [p[metric] for _, p in pairs]
            entry[f"spearman_{metric}"] = float(spearmanr(a, b).statistic)
            entry[f"kendall_{metric}"] = float(kendalltau(a, b).statistic)
        modes = ("max", "min")
        full_pts = [(f["accuracy"], f["macs_ratio"]) for f, _ in pairs]
        proxy_pts = [(p["accuracy"], p["macs_ratio"]) for _, p in pairs]
        full_front = set(non_dominated(full_pts, modes))
        proxy_front = set(non_dominated(proxy_pts, modes))
        chosen = [full_pts[i] for i in proxy_front]
        entry.update({
            "full_front_size": len(full_front), "proxy_front_size": len(proxy_front),
            "proxy_front_on_full_front": len(full_front & proxy_front),
            "hypervolume_full_front": hypervolume_2d(full_pts, modes, REFERENCE),
            "hypervolume_of_proxy_front_replayed": hypervolume_2d(chosen, modes, REFERENCE),
            "proxy_flops_over_full": (sum(p["train_flops"] for _, p in pairs)
                                      / max(1.0, sum(_full_flops(f) for f, _ in pairs))),
        })
        out[proxy] = entry
    return out


def _full_flops(schedule: dict[str, Any]) -> float:
    return float(schedule.get("train_flops", 0.0))


# --- report ----------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean final hypervolume per setting, and the compute moasha needs to reach it."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["setting"], []).append(row)
    table = {}
    for setting, group in by.items():
        hv = [r["hypervolume"] for r in group]
        table[setting] = {
            "seeds": len(group),
            "hypervolume_mean": statistics.fmean(hv),
            "hypervolume_std": statistics.pstdev(hv),
            "search_train_flops_mean": statistics.fmean(r["search_train_flops"] for r in group),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in group),
        }
    goal: dict[str, Any] = {}
    if "nsga2" in table:
        target = table["nsga2"]["hypervolume_mean"]
        budget = table["nsga2"]["search_train_flops_mean"]
        for setting, group in by.items():
            if "moasha" not in setting:
                continue
            reached = [_flops_to_reach(r["trajectory"], target) for r in group]
            fractions = [f / budget if f is not None else None for f in reached]
            goal[setting] = {"target_hypervolume": target, "nsga2_flops": budget,
                             "flops_fraction_to_reach": fractions,
                             "seeds_reaching": sum(f is not None for f in fractions)}
    return {"table": table, "goal": goal}


def _flops_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    for point in curve:
        if point["hypervolume"] >= target - 1e-12:
            return point["search_train_flops"]
    return None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"random": "tab:gray", "nsga2": "tab:blue", "nsga2+moasha": "tab:red",
              "tpe+moasha": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    labelled: set[str] = set()
    for row in rows:
        xs = [p["search_train_flops"] / 1e12 for p in row["trajectory"]]
        ys = [p["hypervolume"] for p in row["trajectory"]]
        label = row["setting"] if row["setting"] not in labelled else None
        labelled.add(row["setting"])
        ax.step(xs, ys, where="post", color=colors.get(row["setting"], "black"), alpha=0.8,
                label=label)
    ax.set_xlabel("search training compute so far (TFLOPs, all rungs of all trials)")
    ax.set_ylabel("hypervolume of the full-fidelity front")
    ax.set_title("fashion_multi_fidelity: hypervolume vs compute (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_report(data: dict[str, Any]) -> None:
    print(f"\n{data['setting_text']}\n")
    print("| setting | seeds | trials | hypervolume | search train FLOPs | wall time |")
    print("|---|---|---|---|---|---|")
    for setting, t in data["summary"]["table"].items():
        trials = statistics.fmean(r["trials"] for r in data["rows"] if r["setting"] == setting)
        print(f"| {setting} | {t['seeds']} | {trials:.0f} | {t['hypervolume_mean']:.4f} ± "
              f"{t['hypervolume_std']:.4f} | {t['search_train_flops_mean'] / 1e12:.2f} T | "
              f"{t['wall_s_mean']:.0f} s |")
    for setting, g in data["summary"]["goal"].items():
        shown = ", ".join("not reached" if f is None else f"{f:.2f}"
                          for f in g["flops_fraction_to_reach"])
        print(f"\n{setting}: compute to reach NSGA-II's mean final hypervolume "
              f"({g['target_hypervolume']:.4f}), as a fraction of NSGA-II's compute, per "
              f"seed: {shown}")
    corr = data.get("proxy_correlation")
    if corr:
        print("\nproxies of the random searches' full-fidelity schedules (schedules with more "
              "phases than 3 epochs, cgap's, cannot be compressed and are left out):")
        print("\n| proxy | schedules | Spearman acc | Kendall acc | Spearman MACs | "
              "proxy front on full front | HV of proxy front (replayed) / full | "
              "proxy compute / full |")
        print("|---|---|---|---|---|---|---|---|")
        for name, c in corr.items():
            ratio = c["hypervolume_of_proxy_front_replayed"] / max(c["hypervolume_full_front"],
                                                                    1e-12)
            print(f"| {name} | {c['schedules']} | {c['spearman_accuracy']:.2f} | "
                  f"{c['kendall_accuracy']:.2f} | {c['spearman_macs_ratio']:.2f} | "
                  f"{c['proxy_front_on_full_front']} of {c['proxy_front_size']} "
                  f"(full front: {c['full_front_size']}) | {ratio:.3f} | "
                  f"{c['proxy_flops_over_full']:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["random", "nsga2", "nsga2+moasha"],
                        choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="proxy runs at once")
    parser.add_argument("--no-proxies", action="store_true")
    parser.add_argument("--proxies-only", action="store_true",
                        help="only the proxy runs of finished random searches (MLflow is "
                             "read, not written: safe beside a running benchmark)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.proxies_only:
        schedules = full_schedules(args.seeds)
        proxies = run_proxies(schedules, args.workers)
        print(f"{len(proxies)} proxy runs in {WORK / 'proxies.json'}")
        return 0
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    walls: dict[str, float] = {}
    for seed in args.seeds:
        for setting in args.settings:
            name = search_name(setting, seed)
            print(f"search {name} ...", flush=True)
            walls[name] = run_search(setting, seed)
    rows = [trajectory(s, seed) for seed in args.seeds for s in args.settings]
    data: dict[str, Any] = {
        "setting_text": (
            "fashion_multi_fidelity.yaml: small_resnet, Fashion-MNIST 2,000 training images "
            "(1,200 validation, 10,000 test), 12 epochs a full trial, batch 64, every method "
            "and both baselines; 2 trials at once, 1 CPU thread each; moasha rungs 3 and 12 "
            "epochs, reduction factor 3; hypervolume of (test accuracy, MACs ratio) from "
            f"reference {REFERENCE}; seeds {args.seeds}"),
        "rows": rows,
    }
    data["summary"] = summarize(rows)
    if not args.no_proxies and "random" in args.settings:
        schedules = full_schedules(args.seeds)
        for s in schedules:
            s["train_flops"] = _trial_flops(s["run_id"])
        proxies = run_proxies(schedules, args.workers)
        data["proxy_correlation"] = correlations(schedules, proxies)
    (RESULTS / "multi_fidelity.json").write_text(json.dumps(data, indent=1))
    plot(rows, RESULTS / "multi_fidelity.png")
    print_report(data)
    return 0


def _trial_flops(run_id: str) -> float:
    from mlflow import MlflowClient

    return float(MlflowClient(uri()).get_run(run_id).data.metrics.get("train_flops", 0.0))


if __name__ == "__main__":
    sys.exit(main())

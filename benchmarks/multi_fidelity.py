"""Search strategies against the compute they spend: random, NSGA-II, two-stage, successive
halving, and a search aimed at one budget.

Runs real ``autoprune search`` commands (local Ray, MLflow, the product's own code) on
``search_spaces/fashion_multi_fidelity.yaml`` (small_resnet, 1,000 Fashion-MNIST images,
600 validation images, 8 epochs a full trial, every method; 64 trials a search, NSGA-II
in generations of 16), for each setting and seed:

- ``random``: random sampling, every trial at full fidelity;
- ``nsga2``: NSGA-II, every trial at full fidelity;
- ``nsga2+proxy``: the two-stage search: all 64 trials at 2 epochs on 500 images (the
  schedule rescaled), then the proxy front replayed at 8 epochs on 1,000 images;
- ``nsga2+sh``: synchronous successive halving with MOASHA's ordering: all 64 schedules
  at the lower rung (2 epochs, all 1,000 images), then the best third (21, by
  non-dominated rank, then crowding distance) as fresh full-budget runs once the rung is
  full; the same machinery as the two-stage search with ``replay: {top: 21}``;
- ``nsga2+target``: the two-stage search with ``--target macs_ratio<=0.25``.

Every search chooses on validation accuracy. From MLflow it reads, trial by trial in the
order they ended, the search's cumulative training FLOPs (proxy and full trials) and the
hypervolume of the full-fidelity front so far: objectives (validation accuracy, MACs /
dense MACs), reference point (0, 1.1); ``test_hypervolume`` scores the same front (chosen
on validation) with test accuracy. For the target: the best validation accuracy within
the budget, the test accuracy of that trial, against NSGA-II's at equal compute and at
its end.

Everything resumes: a search that exists is resumed (``--resume``) or, when complete,
only read.

    python benchmarks/multi_fidelity.py                 # ~80 min on an idle 2-core CPU
    python benchmarks/multi_fidelity.py --seeds 0 --settings nsga2 nsga2+proxy

Writes ``benchmarks/results/multi_fidelity.json`` and ``multi_fidelity.png`` and prints the
tables that docs/benchmarks/search-strategies.md quotes.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "bench-multi-fidelity"
SPACE = ROOT / "search_spaces" / "fashion_multi_fidelity.yaml"
REFERENCE = (0.0, 1.1)
TARGET = "macs_ratio<=0.25"
TRIALS = 64
SETTINGS: dict[str, list[str]] = {
    "random": ["--sampler", "random", "--full-fidelity"],
    "nsga2": ["--sampler", "nsga2", "--full-fidelity"],
    "nsga2+proxy": ["--sampler", "nsga2", "--proxy-epochs", "2", "--proxy-train-subset", "500",
                    "--replay", "front"],
    "nsga2+sh": ["--sampler", "nsga2", "--proxy-epochs", "2", "--proxy-train-subset", "1000",
                 "--replay", str(round(TRIALS / 3))],
    "nsga2+target": ["--sampler", "nsga2", "--proxy-epochs", "2", "--proxy-train-subset", "500",
                     "--replay", "front", "--target", TARGET],
}
COLORS = {"random": "tab:gray", "nsga2": "tab:blue", "nsga2+proxy": "tab:red",
          "nsga2+sh": "tab:orange", "nsga2+target": "tab:green"}


def uri() -> str:
    return f"sqlite:///{WORK / 'mlflow.db'}"


def search_name(setting: str, seed: int) -> str:
    return f"mf-{setting.replace('+', '-')}-s{seed}"


def run_search(setting: str, seed: int) -> None:
    """Run (or resume) one search through the command line."""
    from ray import tune

    name = search_name(setting, seed)
    storage = WORK / "ray"
    args = [sys.executable, "-m", "autoprune", "search", str(SPACE), "--name", name,
            *SETTINGS[setting], "--seed", str(seed), "--num-samples", str(TRIALS),
            "--tracking-uri", uri(), "--storage-path", str(storage)]
    if tune.Tuner.can_restore(str(storage / name)):
        if finished(name):
            return
        args.append("--resume")
    log = WORK / f"{name}.log"
    with open(log, "a") as out:
        code = subprocess.call(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise RuntimeError(f"{name}: autoprune search exited with {code} (see {log})")


def finished(name: str) -> bool:
    """Whether MLflow holds search ``name`` as completed (nothing left to run)."""
    from autoprune.errors import UserError
    from autoprune.search.store import load_search

    try:
        parent = load_search(uri(), name).parent
    except UserError:
        return False
    return parent.data.tags.get("autoprune.search_status") == "completed"


def front_scores(points: list[dict[str, float]]) -> tuple[float, float]:
    """Hypervolume of the front chosen on validation accuracy, on validation and on test."""
    from autoprune.search.pareto import hypervolume_2d, non_dominated

    modes = ("max", "min")
    val = [(p["val"], p["macs_ratio"]) for p in points]
    chosen = non_dominated(val, modes)
    test = [(points[i]["test"], points[i]["macs_ratio"]) for i in chosen]
    return (hypervolume_2d([val[i] for i in chosen], modes, REFERENCE),
            hypervolume_2d(test, modes, REFERENCE))


def trajectory(setting: str, seed: int) -> dict[str, Any]:
    """The search as MLflow holds it: hypervolume and compute after each ended trial."""
    from autoprune.search.store import FIDELITY, STATUS, RunLookup, load_search

    record = load_search(uri(), search_name(setting, seed))
    runs = RunLookup(record.lookup.client, record.lookup.experiment_id,
                     record.lookup.parent_id).children()
    runs = sorted(runs, key=lambda r: r.info.end_time or 0)
    points: list[dict[str, float]] = []
    flops, curve = 0.0, []
    counts: dict[str, int] = {}
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        kind = f"{tags.get(FIDELITY, 'full')}:{tags.get(STATUS, '')}"
        counts[kind] = counts.get(kind, 0) + 1
        flops += float(metrics.get("trial_train_flops", metrics.get("train_flops", 0.0)))
        if tags.get(STATUS) == "completed" and tags.get(FIDELITY, "full") == "full":
            points.append({"val": metrics["val_accuracy"], "test": metrics["test_accuracy"],
                           "macs_ratio": metrics["macs_ratio"]})
        hv, test_hv = front_scores(points)
        budget = [p for p in points if p["macs_ratio"] <= 0.25 + 1e-12]
        best = max(budget, key=lambda p: p["val"]) if budget else None
        curve.append({"search_train_flops": flops, "hypervolume": hv, "test_hypervolume": test_hv,
                      "best_in_target_val": best["val"] if best else None,
                      "best_in_target_test": best["test"] if best else None})
    start = record.parent.info.start_time or 0
    end = max((r.info.end_time or 0) for r in runs) if runs else start
    last = curve[-1] if curve else {}
    return {"setting": setting, "seed": seed,
            "hypervolume": last.get("hypervolume", 0.0),
            "test_hypervolume": last.get("test_hypervolume", 0.0),
            "search_train_flops": flops,
            "parent_search_train_flops": record.parent.data.metrics.get("search_train_flops"),
            "wall_s": (end - start) / 1000.0, "trials": counts,
            "full_trials": len(points), "trajectory": curve}


# --- report ----------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per setting, and the three goals of the issue, per seed."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["setting"], []).append(row)
    table = {}
    for setting, group in by.items():
        hv = [r["hypervolume"] for r in group]
        thv = [r["test_hypervolume"] for r in group]
        table[setting] = {
            "seeds": len(group),
            "hypervolume_mean": statistics.fmean(hv), "hypervolume_std": statistics.pstdev(hv),
            "test_hypervolume_mean": statistics.fmean(thv),
            "test_hypervolume_std": statistics.pstdev(thv),
            "search_train_flops_mean": statistics.fmean(r["search_train_flops"] for r in group),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in group),
        }
    nsga2 = {r["seed"]: r for r in by.get("nsga2", [])}
    goals: dict[str, Any] = {}
    for setting in ("nsga2+proxy", "nsga2+sh"):
        per_seed = []
        for r in by.get(setting, []):
            ref = nsga2.get(r["seed"])
            if ref is None:
                continue
            per_seed.append({"seed": r["seed"],
                             "hypervolume_fraction": r["hypervolume"] / ref["hypervolume"],
                             "compute_fraction": r["search_train_flops"]
                             / ref["search_train_flops"]})
        goals[setting] = {"per_seed": per_seed, "goal": ">= 0.98 of nsga2's hypervolume at "
                          "<= 1/3 of its compute, every seed",
                          "met": bool(per_seed) and all(
                              p["hypervolume_fraction"] >= 0.98 and p["compute_fraction"] <= 1 / 3
                              for p in per_seed)}
    random = {r["seed"]: r for r in by.get("random", [])}
    ahead = []
    for seed, r in nsga2.items():
        if seed in random:
            budget = min(r["search_train_flops"], random[seed]["search_train_flops"])
            ahead.append({"seed": seed, "compute": budget,
                          "nsga2": _at(r["trajectory"], budget, "hypervolume"),
                          "random": _at(random[seed]["trajectory"], budget, "hypervolume")})
    goals["nsga2_vs_random"] = {"per_seed": ahead, "goal": "nsga2 ahead of random at equal "
                                "compute", "met": bool(ahead) and all(
                                    a["nsga2"] > a["random"] for a in ahead)}
    targeted = []
    for r in by.get("nsga2+target", []):
        ref = nsga2.get(r["seed"])
        if ref is None:
            continue
        final = r["trajectory"][-1] if r["trajectory"] else {}
        spent = r["search_train_flops"]
        targeted.append({
            "seed": r["seed"], "compute_fraction": spent / ref["search_train_flops"],
            "target_val": final.get("best_in_target_val"),
            "target_test": final.get("best_in_target_test"),
            "nsga2_equal_compute_val": _at(ref["trajectory"], spent, "best_in_target_val"),
            "nsga2_equal_compute_test": _at(ref["trajectory"], spent, "best_in_target_test"),
            "nsga2_final_val": ref["trajectory"][-1]["best_in_target_val"],
            "nsga2_final_test": ref["trajectory"][-1]["best_in_target_test"]})
    goals["nsga2+target"] = {
        "per_seed": targeted, "target": TARGET,
        "goal": "best in-budget validation accuracy >= nsga2's (at its end) at <= 1/2 of its "
                "compute",
        "met": bool(targeted) and all(
            t["target_val"] is not None and t["compute_fraction"] <= 0.5
            and t["target_val"] >= (t["nsga2_final_val"] or 0.0) for t in targeted)}
    return {"table": table, "goals": goals}


def _at(curve: list[dict[str, Any]], flops: float, key: str) -> Any:
    """``key`` of the trajectory once ``flops`` had been spent (the last point within it)."""
    value = None
    for point in curve:
        if point["search_train_flops"] > flops * (1 + 1e-9):
            break
        value = point[key]
    return value


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    labelled: set[str] = set()
    for row in rows:
        xs = [p["search_train_flops"] / 1e12 for p in row["trajectory"]]
        ys = [p["hypervolume"] for p in row["trajectory"]]
        label = row["setting"] if row["setting"] not in labelled else None
        labelled.add(row["setting"])
        ax.step(xs, ys, where="post", color=COLORS.get(row["setting"], "black"), alpha=0.8,
                label=label)
    ax.set_xlabel("search training compute so far (TFLOPs, proxy and full trials)")
    ax.set_ylabel("hypervolume (validation accuracy, MACs ratio)")
    ax.set_title("fashion_multi_fidelity: hypervolume vs compute (one line per seed)")
    ax.set_ylim(bottom=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def print_report(data: dict[str, Any]) -> None:
    print(f"\n{data['setting_text']}\n")
    print("| setting | seeds | hypervolume (val) | test hypervolume | search train FLOPs | "
          "wall time |")
    print("|---|---|---|---|---|---|")
    for setting, t in data["summary"]["table"].items():
        print(f"| {setting} | {t['seeds']} | {t['hypervolume_mean']:.4f} ± "
              f"{t['hypervolume_std']:.4f} | {t['test_hypervolume_mean']:.4f} ± "
              f"{t['test_hypervolume_std']:.4f} | "
              f"{t['search_train_flops_mean'] / 1e12:.1f} T | {t['wall_s_mean']:.0f} s |")
    goals = data["summary"]["goals"]
    for setting in ("nsga2+proxy", "nsga2+sh"):
        g = goals.get(setting)
        if g and g["per_seed"]:
            shown = "; ".join(f"seed {p['seed']}: {p['hypervolume_fraction']:.3f} of the "
                              f"hypervolume for {p['compute_fraction']:.2f} of the compute"
                              for p in g["per_seed"])
            print(f"\n{setting} against nsga2 ({g['goal']}; met: {g['met']}): {shown}")
    g = goals.get("nsga2_vs_random")
    if g and g["per_seed"]:
        shown = "; ".join(f"seed {a['seed']}: {_fmt(a['nsga2'], 4)} vs {_fmt(a['random'], 4)}"
                          for a in g["per_seed"])
        print(f"\nnsga2 vs random at equal compute (met: {g['met']}): {shown}")
    g = goals.get("nsga2+target")
    if g and g["per_seed"]:
        print(f"\nnsga2+target ({g['target']}; {g['goal']}; met: {g['met']}):\n")
        print("| seed | compute / nsga2 | targeted: best val (its test) | nsga2 at equal "
              "compute | nsga2 at its end |")
        print("|---|---|---|---|---|")
        for t in g["per_seed"]:
            print(f"| {t['seed']} | {t['compute_fraction']:.2f} | {_fmt(t['target_val'])} "
                  f"({_fmt(t['target_test'])}) | {_fmt(t['nsga2_equal_compute_val'])} "
                  f"({_fmt(t['nsga2_equal_compute_test'])}) | {_fmt(t['nsga2_final_val'])} "
                  f"({_fmt(t['nsga2_final_test'])}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true",
                        help="read the searches that exist, run nothing")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    done = []
    for seed in args.seeds:
        for setting in args.settings:
            name = search_name(setting, seed)
            if not args.report_only:
                print(f"{time.strftime('%H:%M:%S')} search {name} ...", flush=True)
                run_search(setting, seed)
            if finished(name):
                done.append((setting, seed))
    rows = [trajectory(s, seed) for s, seed in done]
    data: dict[str, Any] = {
        "setting_text": (
            "fashion_multi_fidelity.yaml: small_resnet, Fashion-MNIST 1,000 training images "
            "(600 validation, 10,000 test), 8 epochs a full trial, batch 64, every method and "
            f"both baselines; {TRIALS} trials a search, NSGA-II population 16; 2 trials at "
            "once, 1 CPU thread each; proxy 2 epochs on 500 images (sh: 2 epochs on 1,000, "
            f"top {round(TRIALS / 3)} replayed); hypervolume of (validation accuracy, MACs "
            f"ratio) from reference {REFERENCE}, test hypervolume: the same front scored on "
            f"test accuracy; seeds {sorted({seed for _, seed in done})}"),
        "rows": rows,
    }
    data["summary"] = summarize(rows)
    (RESULTS / "multi_fidelity.json").write_text(json.dumps(data, indent=1))
    plot(rows, RESULTS / "multi_fidelity.png")
    print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

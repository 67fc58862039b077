"""Search efficiency: hypervolume of the Pareto front against trial count, per sampler.

Compares ``nsga2``, ``tpe`` and ``random`` (any of ``nsga2 tpe random gp nsga3``) on the
same small task, the default search space ``search_spaces/quickstart.yaml`` (digits, a
tiny ResNet, every method), over several seeds.

How it runs: Optuna directly, not a Ray Tune search, for speed (no cluster start-up per
run). It uses the search's own pieces: the space's define-by-run sampling
(``DefineByRun``), the same samplers and options (``build_sampler``), the same trial logic
(flat config -> ``parse_train_config`` -> ``engine.train``; final validation accuracy and
MACs as the objectives, as a search chooses; NaN runs told as failed) and the same de-duplication as
``FinalResultSearch`` (an exact repeat is answered from memory and does not count as a
trial). Runs go in parallel over processes, one torch thread each.

Hypervolume: objectives (validation accuracy, MACs / dense MACs), reference point (0, 1.1), so a
dense model adds 0.1 x its accuracy and a model at a tenth of the MACs up to ~1.0 x it.

    python benchmarks/search_efficiency.py                  # 24 trials x 3 seeds, ~10 min
    python benchmarks/search_efficiency.py --trials 40 --seeds 0 1 2 3 --workers 4

Writes ``benchmarks/results/search_efficiency.png`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = (0.0, 1.1)
MAX_REDRAWS = 20


def run_one(space_file: str, sampler_name: str, seed: int, trials: int) -> dict[str, Any]:
    """One search with Optuna: the hypervolume after every trial."""
    import optuna
    import torch

    from autoprune.search.pareto import hypervolume_2d
    from autoprune.search.samplers import build_sampler
    from autoprune.search.sampling import DefineByRun
    from autoprune.search.searcher import schedule_key
    from autoprune.search.space import load_space

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(space_file)
    sampler = build_sampler(sampler_name, space.sampler_options, seed, 2)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    define, known = DefineByRun(space), {}
    points: list[tuple[float, float]] = []
    curve: list[float] = []
    redraws, start = 0, time.perf_counter()
    while len(curve) < trials:
        trial = study.ask()
        flat = define(trial)
        key = schedule_key(flat)
        if key in known and redraws < MAX_REDRAWS:  # as FinalResultSearch: answer, redraw
            redraws += 1
            _tell(study, trial, known[key])
            continue
        redraws = 0
        values = known[key] if key in known else evaluate(space.fixed, flat)
        known[key] = values
        _tell(study, trial, values)
        if values is not None:
            points.append((values[0], values[1]))
        curve.append(hypervolume_2d(points, ("max", "min"), REFERENCE))
    return {"sampler": sampler_name, "seed": seed, "curve": curve,
            "wall_s": time.perf_counter() - start}


def evaluate(fixed: dict[str, Any], flat: dict[str, Any]) -> list[float] | None:
    """The trial logic of the search: (validation accuracy, MACs ratio), None when it
    diverged (the test split is never used to choose)."""
    from autoprune.config import parse_train_config
    from autoprune.engine import TrainingDiverged, train
    from autoprune.search.sampling import train_config_dict

    config = parse_train_config(train_config_dict(fixed, flat))
    with tempfile.TemporaryDirectory(prefix="autoprune-bench-") as out:
        try:
            summary = train(config, out, progress=False, resume=False, measure_test=False)
        except TrainingDiverged:
            return None
    return [float(summary["val_accuracy"]), float(summary["macs_ratio"])]


def _tell(study: Any, trial: Any, values: list[float] | None) -> None:
    from optuna.trial import TrialState

    if values is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, values)


def table(runs: list[dict[str, Any]], samplers: list[str], trials: int) -> str:
    """Markdown: mean +- std hypervolume at a few trial counts, per sampler."""
    marks = sorted({max(1, trials // 4), trials // 2, 3 * trials // 4, trials})
    head = "| sampler | seeds | " + " | ".join(f"HV @ {m}" for m in marks) + " | time / run |"
    lines = [head, "|" + "---|" * (len(marks) + 3)]
    for name in samplers:
        mine = [r for r in runs if r["sampler"] == name]
        cells = []
        for m in marks:
            values = [r["curve"][m - 1] for r in mine]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        wall = statistics.mean(r["wall_s"] for r in mine)
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + f" | {wall:.0f} s |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], samplers: list[str], path: Path) -> None:
    """Mean hypervolume against trial count, with the min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name in samplers:
        curves = [r["curve"] for r in runs if r["sampler"] == name]
        xs = range(1, len(curves[0]) + 1)
        columns = list(zip(*curves))
        ax.plot(xs, [statistics.mean(c) for c in columns], label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)
    ax.set_xlabel("trials")
    ax.set_ylabel(f"hypervolume (validation accuracy, MACs ratio; ref {REFERENCE})")
    ax.set_title("Search efficiency on the quickstart space")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "tpe", "random"])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    args = parser.parse_args()
    jobs = [(args.space, s, seed, args.trials) for s in args.samplers for seed in args.seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(run_one, *zip(*jobs)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(runs, args.samplers, RESULTS / "search_efficiency.png")
    text = (f"Search efficiency: {Path(args.space).name}, {args.trials} trials, seeds "
            f"{args.seeds}, hypervolume of (validation accuracy, MACs ratio) against reference "
            f"{REFERENCE} (higher is better); {time.perf_counter() - start:.0f} s in all.\n\n"
            + table(runs, args.samplers, args.trials) + "\n")
    (RESULTS / "search_efficiency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Every PruningMethod, plus the dense and prune-retrain baselines, on one task.

Same architecture, data, recipe and epoch budget for all; settings follow the papers'
headline configurations (see SETTINGS). For each method, averaged over seeds: test
accuracy, MACs ratio, params ratio and training-FLOPs ratio (all vs the dense
architecture), and wall time.

Default task, sized for a 2-core CPU: Fashion-MNIST (a 5,000-image training subset, the
full 10,000-image test set), CIFAR ResNet-20 on 28x28 inputs, 12 epochs, 2 seeds.

Usage::

    .venv/bin/python benchmarks/seed_methods.py                 # about 20 minutes on 2 cores
    .venv/bin/python benchmarks/seed_methods.py --epochs 30 --subset 60000 --device cuda

The table is printed and written to ``benchmarks/results/seed_methods.md`` (raw runs in
``seed_methods.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from autoprune.config import parse_train_config
from autoprune.engine import train

RESULTS = Path(__file__).parent / "results"


def settings(epochs: int) -> dict[str, dict[str, Any]]:
    """Each method at its paper's headline setting, scaled to ``epochs``."""
    third, half = max(1, epochs // 3), max(1, epochs // 2)
    return {
        "dense": {},
        # Roy et al.: L1, 80% of filters pruned gradually while training.
        "filter": {"criterion": "l1", "target_ratio": 0.8, "start_epoch": 1,
                   "end_epoch": half, "frequency": 1, "ramp": "linear"},
        # The classical baseline, same 80%, fine-tuned for the last third of the budget.
        "prune_retrain": {"criterion": "l1", "target_ratio": 0.8, "retrain_epochs": third},
        # Foldy-Porto et al.: widths follow activation density, resized periodically.
        "activation_density": {"start_epoch": 2, "interval": 2, "aggressiveness": 1.0,
                               "density_batches": 10, "min_channels": 4, "tolerance": 0.05},
        # Guenter & Sideris: balanced trade-offs between accuracy, layers/units, MACs/params.
        "variational": {"strength": 1.0, "layer_vs_unit": 0.5, "compute_vs_params": 0.5},
        # Du et al.: seed at half width, grow for a third of training, prune 60% after.
        "cgap": {"seed_width": 0.5, "growth_interval": 1, "growth_rate": 0.25,
                 "growth_end_epoch": third, "max_width": 1.0, "prune_start_epoch": third + 1,
                 "prune_end_epoch": 2 * third, "prune_ratio": 0.6},
        # Enderich et al.: -60% multiplications (ResNet-50/ImageNet); params to 50%.
        "hfp": {"target_macs_ratio": 0.4, "target_params_ratio": 0.5},
    }


def run_one(method: str, params: dict[str, Any], seed: int, args: argparse.Namespace) -> dict:
    config = parse_train_config({
        "model": args.model,
        "dataset": {"name": args.dataset, "train_subset": args.subset},
        "training": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr,
                     "seed": seed, "device": args.device, "threads": args.threads},
        "method": method,
        "method_params": params,
    })
    out = Path(args.workdir) / f"{method}_seed{seed}"
    s = train(config, out, progress=False, resume=False)
    return {
        "method": method, "seed": seed, "accuracy": s["accuracy"],
        "macs_ratio": s["macs"] / s["dense_macs"], "params_ratio": s["params"] / s["dense_params"],
        "train_flops_ratio": s["train_flops"] / s["dense_train_flops"],
        "wall_time_s": s["wall_time_s"],
    }


def summarise(runs: list[dict], method: str) -> str:
    mine = [r for r in runs if r["method"] == method]

    def cell(key: str, fmt: str) -> str:
        values = [r[key] for r in mine]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), fmt)} ± {format(spread, fmt)}"

    return (f"| {method} | {cell('accuracy', '.4f')} | {cell('macs_ratio', '.3f')} | "
            f"{cell('params_ratio', '.3f')} | {cell('train_flops_ratio', '.3f')} | "
            f"{cell('wall_time_s', '.0f')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(settings(12)))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workdir", default="runs/bench/seed_methods")
    args = p.parse_args()
    table = settings(args.epochs)
    runs = []
    for seed in range(args.seeds):
        for method in args.methods:
            runs.append(run_one(method, table[method], seed, args))
            print(json.dumps(runs[-1]), flush=True)
    header = [
        f"{args.model} on {args.dataset} ({args.subset} training images), {args.epochs} epochs, "
        f"batch {args.batch}, lr {args.lr}, {args.seeds} seeds (mean ± std), "
        f"device {args.device}, threads {args.threads or 'default'}", "",
        "| method | test accuracy | MACs ratio | params ratio | training-FLOPs ratio | "
        "wall time (s) |", "|---|---|---|---|---|---|",
    ]
    lines = header + [summarise(runs, m) for m in args.methods]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "seed_methods.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "seed_methods.json").write_text(json.dumps(
        {"args": vars(args), "settings": table, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()

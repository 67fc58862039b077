"""Every PruningMethod, plus the dense and prune-retrain baselines, on one task.

Same architecture, data, recipe and epoch budget for all. For each method (and variant),
averaged over seeds: test accuracy, MACs ratio, params ratio and training-FLOPs ratio
(all vs the dense architecture), and wall time.

Two profiles:

- ``short`` (default, a quick check): Fashion-MNIST (a 5,000-image training subset, the
  full 10,000-image test set), CIFAR ResNet-20 on 28x28 inputs, 12 epochs, 2 seeds, each
  method at its paper's headline setting. Writes ``results/seed_methods.{json,md}``.
- ``large`` (a real training run): 20,000 training images, 20 epochs, 1 seed; the
  budget-targeting methods (filter, prune-retrain, HFP) at matched final MACs (0.25 of
  dense), both activation-density rules, and the variational ablation (unit gates only,
  layer gates only, both), each variant at the ``strength`` (:data:`VARIATIONAL_STRENGTH`)
  that lands it near the same MACs ratio. Writes
  ``results/seed_methods_large.{json,md,png}``; about two hours on a 2-core CPU with two
  one-thread runs at a time.

Both resume: a row (model, method, variant, seed) already in the JSON is not run again
(``--redo`` runs the selected rows anew). Each run is a fresh process that writes a
checkpoint after every epoch under ``--workdir``; an interrupted run continues from its
last checkpoint when the benchmark is started again with the same settings (``--redo``
starts it over), so an interrupted benchmark loses at most an epoch per run in flight.

Usage::

    .venv/bin/python benchmarks/seed_methods.py                      # short, ~35 min
    .venv/bin/python benchmarks/seed_methods.py --profile large      # ~2 h, resumable
    .venv/bin/python benchmarks/seed_methods.py --profile large --models cifar_resnet20 cifar_vgg11
    .venv/bin/python benchmarks/seed_methods.py --variants activation_density/settle --redo
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MATCHED_MACS = 0.25
"""Final MACs ratio of the budget-targeting methods in the large profile."""
VARIATIONAL_STRENGTH = {"both": 0.2, "unit_only": 0.155, "layer_only": 1.0}
"""``strength`` of each variational variant in the large profile: variational has no size
target, so each strength was set (from calibration runs and the strength-1 rows, never
from accuracy) to land near MACs 0.275 (layer-only pruning of ResNet-20 can only reach
0.186 or 0.303 there). both 0.2 gave 0.303; unit_only 0.17 gave 0.168 and 0.155 gave
0.210, both outside 0.275 +- 0.03 (a lower strength is the next try)."""


def short_settings(epochs: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """``method/variant`` -> (method, params): each at its paper's headline setting."""
    third, half = max(1, epochs // 3), max(1, epochs // 2)
    ad = {"start_epoch": 2, "interval": 2, "aggressiveness": 1.0, "density_batches": 10,
          "min_channels": 4, "tolerance": 0.05}
    return {
        "dense/-": ("dense", {}),
        # Roy et al.: L1, 80% of filters pruned gradually while training.
        "filter/l1": ("filter", {"criterion": "l1", "target_ratio": 0.8, "start_epoch": 1,
                                 "end_epoch": half, "frequency": 1, "ramp": "linear"}),
        # The classical baseline, same 80%, fine-tuned for the last third of the budget.
        "prune_retrain/l1": ("prune_retrain", {"criterion": "l1", "target_ratio": 0.8,
                                               "retrain_epochs": third}),
        # Foldy-Porto et al.: widths follow activation density, resized periodically.
        "activation_density/settle": ("activation_density", {**ad, "rule": "settle"}),
        "activation_density/paper": ("activation_density", {**ad, "rule": "paper"}),
        # Guenter & Sideris: balanced trade-offs between accuracy, layers/units, MACs/params.
        "variational/both": ("variational", {"strength": 1.0, "layer_vs_unit": 0.5,
                                             "compute_vs_params": 0.5}),
        # Du et al.: seed at half width, grow for a third of training, prune 60% after.
        "cgap/-": ("cgap", {"seed_width": 0.5, "growth_interval": 1, "growth_rate": 0.25,
                            "growth_end_epoch": third, "max_width": 1.0,
                            "prune_start_epoch": third + 1, "prune_end_epoch": 2 * third,
                            "prune_ratio": 0.6}),
        # Enderich et al.: -60% multiplications (ResNet-50/ImageNet); params to 50%.
        "hfp/-": ("hfp", {"target_macs_ratio": 0.4, "target_params_ratio": 0.5}),
    }


def large_settings(epochs: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """The short table with the budget methods matched at :data:`MATCHED_MACS` and the
    variational ablation; the longest runs first, so two workers finish together."""
    short = short_settings(epochs)
    half = max(1, epochs // 2)
    keep = 1.0 - MATCHED_MACS ** 0.5  # MACs scale with the square of the kept fraction
    vari = short["variational/both"][1]
    strength = VARIATIONAL_STRENGTH
    table = {
        "dense/-": short["dense/-"],
        "variational/both": ("variational", {**vari, "strength": strength["both"]}),
        "variational/unit_only": ("variational", {**vari, "layer_vs_unit": 0.0,
                                                  "strength": strength["unit_only"]}),
        "variational/layer_only": ("variational", {**vari, "layer_vs_unit": 1.0,
                                                   "strength": strength["layer_only"]}),
        "hfp/-": ("hfp", {"target_macs_ratio": MATCHED_MACS, "target_params_ratio": 0.5}),
        "prune_retrain/l1": ("prune_retrain", {"criterion": "l1", "target_ratio": keep,
                                               "retrain_epochs": max(1, epochs // 3)}),
        "cgap/-": short["cgap/-"],
        "filter/l1": ("filter", {"criterion": "l1", "target_ratio": keep, "start_epoch": 1,
                                 "end_epoch": half, "frequency": 1, "ramp": "linear"}),
        "activation_density/settle": short["activation_density/settle"],
        "activation_density/paper": short["activation_density/paper"],
    }
    return table


PROFILES: dict[str, dict[str, Any]] = {
    "short": {"subset": 5000, "epochs": 12, "seeds": 2, "jobs": 1, "threads": None,
              "models": ["cifar_resnet20"], "table": short_settings, "out": "seed_methods"},
    "large": {"subset": 20000, "epochs": 20, "seeds": 1, "jobs": 2, "threads": 1,
              "models": ["cifar_resnet20"], "table": large_settings,
              "out": "seed_methods_large"},
}


def run_one(model: str, key: str, method: str, params: dict[str, Any], seed: int,
            args: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """One training run, in its own process; returns the result row. With ``resume``, a
    checkpoint of the same run in its directory is continued."""
    from autoprune.config import parse_train_config
    from autoprune.engine import train

    config = parse_train_config({
        "model": model,
        "dataset": {"name": args["dataset"], "train_subset": args["subset"]},
        "training": {"epochs": args["epochs"], "batch_size": args["batch"], "lr": args["lr"],
                     "seed": seed, "device": args["device"], "threads": args["threads"],
                     "precision": args["precision"]},
        "method": method,
        "method_params": params,
    })
    out = Path(args["workdir"]) / f"{model}_{key.replace('/', '_')}_seed{seed}"
    s = train(config, out, progress=False, resume=resume)
    measured = [d for e in s["epochs"] for d in (e.get("densities") or {}).values()
                if d is not None]
    extra = {"density_range": [min(measured), max(measured)]} if measured else {}
    return {
        "model": model, "method": method, "variant": key.split("/", 1)[1], "seed": seed,
        "accuracy": s["accuracy"], "val_accuracy": s["val_accuracy"],
        "macs_ratio": s["macs"] / s["dense_macs"], "params_ratio": s["params"] / s["dense_params"],
        "train_flops_ratio": s["train_flops"] / s["dense_train_flops"],
        "wall_s": s["wall_time_s"], "params": params, **extra,
    }


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return row["model"], row["method"], row["variant"], int(row["seed"])


def load_rows(path: Path, model: str) -> list[dict[str, Any]]:
    """Rows already written; rows of the first format (no model / variant) are upgraded:
    activation_density then had only the paper's rule."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = []
    for r in data.get("runs", []):
        if "variant" not in r:
            variant = {"activation_density": "paper", "filter": "l1", "prune_retrain": "l1",
                       "variational": "both"}.get(r["method"], "-")
            r = {"model": data.get("args", {}).get("model", model), "variant": variant,
                 "wall_s": r.get("wall_time_s"), **r}
            r.pop("wall_time_s", None)
        rows.append(r)
    return rows


def write(path: Path, args: dict[str, Any], table: dict[str, Any], rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": args, "settings": table, "runs": rows}, indent=2))
    os.replace(tmp, path)


def summarise(rows: list[dict[str, Any]], model: str, key: str) -> str | None:
    method, variant = key.split("/", 1)
    mine = [r for r in rows if (r["model"], r["method"], r["variant"]) == (model, method, variant)]
    if not mine:
        return None

    def cell(name: str, fmt: str) -> str:
        values = [r[name] for r in mine]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), fmt)} ± {format(spread, fmt)}"

    knobs = sorted({size_knob(r.get("params", {})) for r in mine})
    return (f"| {method} | {variant} | {', '.join(knobs)} | {len(mine)} | "
            f"{cell('accuracy', '.4f')} | "
            f"{cell('macs_ratio', '.3f')} | {cell('params_ratio', '.3f')} | "
            f"{cell('train_flops_ratio', '.3f')} | {cell('wall_s', '.0f')} |")


SIZE_KNOBS = ("target_macs_ratio", "target_ratio", "strength", "prune_ratio", "aggressiveness")


def size_knob(params: dict[str, Any]) -> str:
    """The parameter that sets a run's final size, as ``name value`` (``-`` for none)."""
    return next((f"{k} {params[k]:g}" for k in SIZE_KNOBS if k in params), "-")


def report(rows: list[dict[str, Any]], args: dict[str, Any], keys: list[str]) -> str:
    lines = []
    for model in args["models"]:
        lines += [
            f"{model} on {args['dataset']} ({args['subset']} training images), "
            f"{args['epochs']} epochs, batch {args['batch']}, lr {args['lr']}, "
            f"device {args['device']}, threads {args['threads'] or 'default'}", "",
            "| method | variant | size set by | seeds | test accuracy | MACs ratio | "
            "params ratio | training-FLOPs ratio | wall time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [line for k in keys if (line := summarise(rows, model, k))]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], models: list[str], path: Path) -> None:
    """Accuracy vs training FLOPs (ratio to dense), one point per method/variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        labels = sorted({(r["method"], r["variant"]) for r in rows if r["model"] == model})
        for method, variant in labels:
            mine = [r for r in rows if (r["model"], r["method"], r["variant"])
                    == (model, method, variant)]
            label = method if variant == "-" else f"{method} ({variant})"
            ax.scatter([r["train_flops_ratio"] for r in mine], [r["accuracy"] for r in mine],
                       label=label, s=36)
        ax.set_xlabel("training FLOPs / dense")
        ax.set_ylabel("test accuracy")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="short")
    p.add_argument("--models", nargs="+", help="default: the profile's (cifar_resnet20)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--subset", type=int, help="training images (default: the profile's)")
    p.add_argument("--epochs", type=int, help="default: the profile's")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, help="default: the profile's")
    p.add_argument("--variants", nargs="+", help="method/variant keys (default: all)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: the profile's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="training.precision of every run (the committed results: fp32)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: the profile's)")
    p.add_argument("--redo", action="store_true", help="run the selected rows again")
    p.add_argument("--results", help="JSON file stem under results/ (default: the profile's)")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="first take the rows of these result files (theirs win), e.g. "
                        "rows rerun into another --results file while this one ran")
    p.add_argument("--workdir", default="runs/bench/seed_methods")
    ns = p.parse_args()
    prof = PROFILES[ns.profile]
    args = {
        "profile": ns.profile, "models": ns.models or prof["models"], "dataset": ns.dataset,
        "subset": ns.subset or prof["subset"], "epochs": ns.epochs or prof["epochs"],
        "batch": ns.batch, "lr": ns.lr, "seeds": ns.seeds or prof["seeds"],
        "jobs": ns.jobs or prof["jobs"], "device": ns.device, "precision": ns.precision,
        "threads": ns.threads or prof["threads"], "workdir": f"{ns.workdir}/{ns.profile}",
    }
    table = prof["table"](args["epochs"])
    keys = ns.variants or list(table)
    unknown = [k for k in keys if k not in table]
    if unknown:
        sys.exit(f"error: unknown variant {unknown[0]!r}; known: {', '.join(table)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = ns.results or prof["out"]
    path = RESULTS / f"{stem}.json"
    rows = load_rows(path, args["models"][0])
    for other in ns.merge:
        theirs = load_rows(Path(other), args["models"][0])
        replaced = {row_key(r) for r in theirs}
        rows = [r for r in rows if row_key(r) not in replaced] + theirs
    todo = [(m, k, s) for s in range(args["seeds"]) for m in args["models"] for k in keys]
    wanted = {(m, *k.split("/", 1), s) for m, k, s in todo}
    if ns.redo:
        rows = [r for r in rows if row_key(r) not in wanted]
    done = {row_key(r) for r in rows}
    todo = [t for t in todo if (t[0], *t[1].split("/", 1), t[2]) not in done]
    print(f"{len(todo)} runs to do, {len(wanted) - len(todo)} already written", flush=True)
    started = time.time()
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(args["jobs"], mp_context=context,
                                     max_tasks_per_child=1) as pool:
        pending = {pool.submit(run_one, m, k, *table[k], s, args, not ns.redo): (m, k, s)
                   for m, k, s in todo}
        for fut in futures.as_completed(pending):
            model, key, seed = pending[fut]
            try:
                row = fut.result()
            except Exception as exc:  # one failed run must not lose the others
                print(f"FAILED {model} {key} seed {seed}: {exc}", flush=True)
                continue
            rows.append(row)
            write(path, args, table, rows)
            print(f"[{time.time() - started:.0f}s] {json.dumps(row)}", flush=True)
    text = report(rows, args, list(table))
    print(text)
    (RESULTS / f"{stem}.md").write_text(text)
    write(path, args, table, rows)
    if ns.profile == "large":
        plot(rows, args["models"], RESULTS / f"{stem}.png")


if __name__ == "__main__":
    main()

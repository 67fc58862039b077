"""What do data-parallel workers give one training? ``training.workers: 2`` against 1.

The same pruning-while-training run (filter pruning, L1, of ``--model`` on a Fashion-MNIST
subset, global batch ``--batch-size``, same lr and seed) is trained, one after the other:

- **1 worker, T threads**: the plain single-process loop on the whole machine
  (``autoprune train``'s default);
- **1 worker, T/2 threads**: the same loop on half the machine;
- **2 workers, T/2 threads each**: ``training.workers: 2``, two Ray Train workers (DDP,
  gloo on CPUs, NCCL on GPUs), each on half of every batch.

Reported per setting: the training's wall time (the engine's ``wall_time_s``: data, steps,
surgery, evaluation; without Ray's start-up), the whole call's wall time (with Ray
starting its workers), time per epoch, the final widths and accuracies, and the ratios
``speedup_2_workers_vs_1`` (2 workers against 1 worker on the whole machine) and
``speedup_2_workers_vs_half`` (against 1 worker on the same share of threads each worker
has). The widths of the 2-worker and 1-worker runs are compared (a weight criterion on the
same global batch: they agree). With ``--device cuda --gpus N`` it compares N workers on
N GPUs against one GPU instead.

Usage::

    .venv/bin/python benchmarks/data_parallel.py [--epochs 3] [--subset 6000] [--seed 0]
    python benchmarks/data_parallel.py --device cuda --gpus 2 --subset 60000

Results: ``benchmarks/results/data_parallel.json`` (``data_parallel_cuda.json`` on GPUs;
``_seed1`` and so on before ``.json`` for another ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def config(args: argparse.Namespace, workers: int, threads: int) -> dict[str, Any]:
    training: dict[str, Any] = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "seed": args.seed,
        "device": args.device, "workers": workers, "threads": threads,
    }
    if workers > 1:
        training["cpu_per_worker"] = threads
        training["gpu_per_worker"] = 1 if args.device == "cuda" else 0
    return {
        "model": args.model,
        "dataset": {"name": "fashion_mnist", "train_subset": args.subset},
        "training": training,
        "method": "filter",
        "method_params": {"criterion": "l1", "target_ratio": 0.5, "start_epoch": 1,
                          "end_epoch": max(1, args.epochs - 1), "frequency": 1},
    }


def run(args: argparse.Namespace, name: str, workers: int, threads: int) -> dict[str, Any]:
    import torch

    from autoprune.config import parse_train_config
    from autoprune.engine import train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix=f"dp-{name}-") as out:
        start = time.perf_counter()
        summary = train(parse_train_config(config(args, workers, threads)), Path(out),
                        progress=False, resume=False)
        call_s = time.perf_counter() - start
    epoch_s = [e["time_s"] + e["method_time_s"] + e["eval_time_s"] for e in summary["epochs"]]
    row = {
        "setting": name, "workers": workers, "threads_per_worker": threads,
        "training_wall_s": summary["wall_time_s"], "call_wall_s": call_s,
        "epoch_s": epoch_s, "train_step_s": [e["time_s"] for e in summary["epochs"]],
        "train_loss": [e["train_loss"] for e in summary["epochs"]],
        "val_accuracy": summary["val_accuracy"], "test_accuracy": summary["test_accuracy"],
        "macs_ratio": summary["macs_ratio"], "train_flops": summary["train_flops"],
        "widths": summary["widths"], "hardware": {
            k: v for k, v in summary["hardware"].items() if k != "cross_rank"},
        "cross_rank_agreed": summary["hardware"].get("cross_rank", {}).get("agreed"),
    }
    print(f"{name:>26}: training {row['training_wall_s']:7.1f} s, whole call "
          f"{call_s:7.1f} s, val {row['val_accuracy']:.4f}, test {row['test_accuracy']:.4f}",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpus", type=int, default=2, help="workers on --device cuda")
    parser.add_argument("--out-json")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    if args.device == "cpu":
        half = max(1, cores // 2)
        plan = [("1 worker, all threads", 1, cores), ("1 worker, half the threads", 1, half),
                ("2 workers, half each", 2, half)]
    else:
        per = max(1, cores // args.gpus)
        plan = [("1 worker, 1 GPU", 1, per), (f"{args.gpus} workers, 1 GPU each", args.gpus,
                                               per)]
    rows = [run(args, name, workers, threads) for name, workers, threads in plan]
    one, parallel = rows[0], rows[-1]
    result: dict[str, Any] = {
        "benchmark": "data_parallel",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": cores, "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {"model": args.model, "dataset": "fashion_mnist", "subset": args.subset,
                     "epochs": args.epochs, "batch_size": args.batch_size,
                     "device": args.device, "seed": args.seed,
                     "method": "filter l1 to 0.5"},
        "rows": rows,
        "speedup_2_workers_vs_1": one["training_wall_s"] / parallel["training_wall_s"],
        "speedup_2_workers_vs_1_whole_call": one["call_wall_s"] / parallel["call_wall_s"],
        "widths_agree_with_1_worker": parallel["widths"] == one["widths"],
    }
    if args.device == "cpu":
        result["speedup_2_workers_vs_half"] = rows[1]["training_wall_s"] / \
            parallel["training_wall_s"]
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("speedup", "widths"))},
                     indent=2))
    default = "data_parallel_cuda.json" if args.device == "cuda" else "data_parallel.json"
    if args.seed:
        default = default.replace(".json", f"_seed{args.seed}.json")
    path = Path(args.out_json) if args.out_json else RESULTS / default
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

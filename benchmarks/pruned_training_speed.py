"""Does physical pruning make training cheaper, and what does the engine cost?

Prints, from one run on one machine:

(a) for a CIFAR ResNet and a CIFAR VGG, pruned (uniform L1, through autoprune's surgery) to
    MACs ratios near 0.5 and 0.25: the training-step time ratio pruned/dense beside the
    MACs ratio. Steps of the dense and pruned networks are timed interleaved (ABAB...),
    and medians compared, so that machine noise hits both alike.
(b) the engine's dense epoch time (``time_s`` of ``autoprune.engine.train``, method
    ``dense``) beside a minimal hand-written PyTorch loop on the same model, data and
    batch size, as an overhead percentage.

Usage::

    .venv/bin/python benchmarks/pruned_training_speed.py            # 28x28, Fashion-MNIST
    .venv/bin/python benchmarks/pruned_training_speed.py --size 32 --steps 30 --device cuda

Results are also written to ``benchmarks/results/pruned_training_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.compute import count_macs_params
from autoprune.config import parse_train_config
from autoprune.data import load_dataset
from autoprune.engine import train
from autoprune.methods.criteria import l1_importance, uniform_plan
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, remove_channels

RESULTS = Path(__file__).parent / "results" / "pruned_training_speed.md"


def prune_to_macs_ratio(model: nn.Module, x: torch.Tensor, target: float) -> nn.Module:
    """A copy of ``model`` pruned uniformly (L1) so its MACs ratio is close to ``target``."""
    dense_macs, _ = count_macs_params(model, x)
    low, high = 0.0, 0.95
    best = model
    for _ in range(12):  # bisection on the uniform filter fraction
        fraction = (low + high) / 2
        pruned = copy.deepcopy(model)
        index = DependencyIndex(pruned, x)
        scores = {k: l1_importance(pruned, g) for k, g in index.groups.items()}
        widths = {k: g.width for k, g in index.groups.items()}
        remove_channels(pruned, uniform_plan(scores, widths, widths, fraction), x, index=index)
        ratio = count_macs_params(pruned, x)[0] / dense_macs
        best = pruned
        if abs(ratio - target) < 0.01:
            break
        low, high = (fraction, high) if ratio > target else (low, fraction)
    return best


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN201
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def timed(step, device: torch.device) -> float:  # noqa: ANN001
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_time_ratios(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, input_size=args.size).to(device)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    dense_macs, _ = count_macs_params(model, x)
    rows = []
    for target in (0.5, 0.25):
        pruned = prune_to_macs_ratio(model, x, target)
        macs_ratio = count_macs_params(pruned, x)[0] / dense_macs
        steps = {"dense": step_fn(model, x, y), "pruned": step_fn(pruned, x, y)}
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for i in range(args.warmup + args.steps):
            for key, step in steps.items():
                t = timed(step, device)
                if i >= args.warmup:
                    times[key].append(t)
        dense_t, pruned_t = (statistics.median(times[k]) for k in ("dense", "pruned"))
        ratio = pruned_t / dense_t
        verdict = "yes" if ratio <= macs_ratio + 0.10 else "no"
        rows.append(f"| {name} | {args.size}x{args.size} | {macs_ratio:.3f} | {ratio:.3f} | "
                    f"{dense_t * 1e3:.1f} | {pruned_t * 1e3:.1f} | {verdict} |")
        print(rows[-1], flush=True)
    return rows


def minimal_epoch(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, batch: int,
                  seed: int) -> float:
    """The plainest PyTorch loop: shuffle, slice, forward, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    order = order.to(x_all.device)
    sync(x_all.device)
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        xb, yb = x_all.index_select(0, idx), y_all.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    sync(x_all.device)
    return time.perf_counter() - t0


def engine_overhead(args: argparse.Namespace, device: torch.device) -> str:
    dataset = "fashion_mnist" if args.size == 28 else "digits"
    config = parse_train_config({
        "model": args.overhead_model,
        "dataset": {"name": dataset, "train_subset": args.subset, "val_fraction": 0.0},
        "training": {"epochs": args.epochs, "batch_size": args.batch, "seed": 0,
                     "device": device.type, "lr_schedule": "constant"},
        "method": "dense",
    })
    # The same samples, model and batch size through the plain loop, before and after.
    data = load_dataset(dataset, train_subset=args.subset, seed=0, batch_size=args.batch,
                        device=device, val_fraction=0.0)
    xs, ys = zip(*data.train)
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    torch.manual_seed(0)
    model = create_model(args.overhead_model, 10, data.in_channels, data.input_size).to(device)
    plain_times = [minimal_epoch(model, x_all, y_all, args.batch, e) for e in range(args.epochs)]
    summary = train(config, Path(args.workdir) / "engine", progress=False, resume=False)
    engine_times = [e["time_s"] for e in summary["epochs"]]
    plain_times += [minimal_epoch(model, x_all, y_all, args.batch, e) for e in range(args.epochs)]
    engine_t, plain_t = min(engine_times), min(plain_times)
    overhead = 100 * (engine_t / plain_t - 1)
    return (f"| {args.overhead_model} | {dataset} ({len(x_all)} samples) | {args.batch} | "
            f"{engine_t:.2f} | {plain_t:.2f} | {overhead:+.1f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=28, help="input side (28: Fashion-MNIST)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per network")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_vgg11"])
    p.add_argument("--overhead-model", default="cifar_resnet20")
    p.add_argument("--subset", type=int, default=5000, help="training samples for part (b)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs for part (b); the fastest epoch of each loop is compared")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default="runs/bench")
    args = p.parse_args()
    device = torch.device(args.device)
    lines = [f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}",
             "", "(a) training-step time, pruned vs dense (median of interleaved steps)", "",
             "| model | input | MACs ratio | time ratio | dense ms/step | pruned ms/step | "
             "time <= MACs + 0.10 |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.models:
        lines += step_time_ratios(name, args, device)
    tail = ["", "(b) engine vs minimal PyTorch loop, dense epoch (best of "
            f"{args.epochs})", "", "| model | data | batch | engine s/epoch | plain s/epoch | "
            "overhead |", "|---|---|---|---|---|---|"]
    print("\n".join(tail), flush=True)
    row = engine_overhead(args, device)
    print(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines + tail + [row]) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()

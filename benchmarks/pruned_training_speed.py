"""Does physical pruning make training cheaper, and what does the engine cost?

Prints, from one run on one machine:

(a) for a CIFAR ResNet and a CIFAR VGG, pruned (uniform L1, through autoprune's surgery) to
    MACs ratios near 0.5 and 0.25: the training-step time ratio pruned/dense beside the
    MACs ratio, for each memory format (``contiguous``, ``channels_last``) and each
    precision of ``--precision`` (``fp32``, ``bf16`` autocast). Steps of the
    dense and pruned networks are timed interleaved (ABAB...), and medians compared, so
    that machine noise hits both alike; the dense step in the first format and precision
    is the reference of the "vs reference" columns, so a layout or a precision that
    speeds up the dense network shows as well.
(w) why a ratio is what it is, convolution by convolution: every convolution of the dense
    and of the pruned (MACs 0.25) network alone, forward and backward at its own input
    shape, summed by input side (one row per stage of a CIFAR ResNet): time ratio beside
    MACs ratio, and the rate each runs at (GFLOP/s), which shows where narrow layers fall
    below the hardware's rate.
(p) where a step's time goes, dense vs pruned at MACs 0.25. On CPU: self CPU time by kind
    of op (convolutions, batch norm, ReLU, additions, the rest), the share of each kind and
    each kind's own time ratio pruned/dense. On CUDA: the GPU's busy time (kernels) per
    step against the step's wall time: a step the GPU spends mostly idle is bound by
    launches, not arithmetic, and pruning cannot make it shorter.
(c) with ``--compile``: what ``torch.compile`` costs (the first, compiling step, with an
    empty Inductor cache) and saves (median step after) on the dense and the pruned (MACs
    0.25) network, in the last memory format. A structural change recompiles, so it pays
    only when the savings over the steps until the next change exceed the compile time.
(b) the engine's dense epoch time (``time_s`` of ``autoprune.engine.train``, method
    ``dense``, the engine's default memory format) beside a minimal hand-written PyTorch
    loop on the same model, data, batch size and layout, as an overhead percentage.

Usage::

    .venv/bin/python benchmarks/pruned_training_speed.py --precision fp32 bf16 \
        --formats channels_last contiguous                            # the docs' CPU run
    .venv/bin/python benchmarks/pruned_training_speed.py --device cuda --batch 4096 \
        --results benchmarks/results/pruned_training_speed_cuda_b4096.md

Steps run in the engine's precision for the device by default (``--precision auto``: bf16
autocast on a GPU that has it or a CPU with AMX, float32 elsewhere). Results are also written to
``benchmarks/results/pruned_training_speed.{md,json}`` (``--results``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.compute import count_macs_params
from autoprune.config import parse_train_config
from autoprune.data import load_dataset
from autoprune.engine import train
from autoprune.engine.hardware import (
    autocast,
    precision_name,
    resolve_memory_format,
    resolve_precision,
)
from autoprune.methods.criteria import l1_importance, uniform_plan
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, remove_channels

RESULTS = Path(__file__).parent / "results" / "pruned_training_speed.md"
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


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


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,  # noqa: ANN201
            fmt: torch.memory_format = torch.contiguous_format, compiled: bool = False,
            dtype: torch.dtype | None = None):
    """One SGD step of a copy of ``model`` laid out in ``fmt`` (through ``torch.compile``
    with ``compiled``), in ``dtype`` autocast as the engine does it (None: float32)."""
    model = copy.deepcopy(model).to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, dtype):
            loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
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


def setup(name: str, args: argparse.Namespace,
          device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The dense network and one random batch of the benchmark's input size."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, input_size=args.size).to(device)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    return model, x, y


_QUARTER: dict[str, tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]] = {}


def dense_and_quarter(name: str, args: argparse.Namespace, device: torch.device,
                      ) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """The dense network, its copy pruned to MACs 0.25, and the batch; built once a run
    and shared by parts (w), (p) and (c)."""
    if name not in _QUARTER:
        model, x, y = setup(name, args, device)
        _QUARTER[name] = (model, prune_to_macs_ratio(model, x, 0.25), x, y)
    return _QUARTER[name]


def step_time_ratios(name: str, args: argparse.Namespace, device: torch.device,
                     out: list[dict]) -> list[str]:
    """Part (a): every (network, memory format, precision) step timed interleaved."""
    model, x, y = setup(name, args, device)
    dense_macs, _ = count_macs_params(model, x)
    settings = [(fmt, prec) for prec in args.precision for fmt in args.formats]
    rows = []
    for target in (0.5, 0.25):
        pruned = prune_to_macs_ratio(model, x, target)
        macs_ratio = count_macs_params(pruned, x)[0] / dense_macs
        steps = {(kind, fmt, prec): step_fn(net, x, y, FORMATS[fmt], dtype=args.dtypes[prec])
                 for kind, net in (("dense", model), ("pruned", pruned))
                 for fmt, prec in settings}
        times: dict[tuple[str, str, str], list[float]] = {k: [] for k in steps}
        for i in range(args.warmup + args.steps):
            for key, step in steps.items():
                t = timed(step, device)
                if i >= args.warmup:
                    times[key].append(t)
        median = {k: statistics.median(v) for k, v in times.items()}
        reference = median[("dense", *settings[0])]
        for fmt, prec in settings:
            dense_t, pruned_t = median[("dense", fmt, prec)], median[("pruned", fmt, prec)]
            ratio = pruned_t / dense_t
            out.append({"model": name, "input": args.size, "memory_format": fmt,
                        "precision": precision_name(args.dtypes[prec]),
                        "macs_ratio": macs_ratio, "time_ratio": ratio,
                        "time_ratio_vs_dense_reference": pruned_t / reference,
                        "dense_ms": dense_t * 1e3, "pruned_ms": pruned_t * 1e3,
                        "dense_vs_reference": dense_t / reference})
            verdict = "yes" if ratio <= macs_ratio + 0.05 else "no"
            rows.append(f"| {name} | {fmt} | {precision_name(args.dtypes[prec])} | "
                        f"{macs_ratio:.3f} | {ratio:.3f} | {dense_t / reference:.3f} | "
                        f"{pruned_t / reference:.3f} | {dense_t * 1e3:.1f} | "
                        f"{pruned_t * 1e3:.1f} | {verdict} |")
            print(rows[-1], flush=True)
    return rows


KINDS = {"convolution": ("convolution",), "batch norm": ("batch_norm",),
         "ReLU": ("threshold_backward", "clamp_min", "relu"), "additions": ("aten::add",)}


def op_shares(step, steps: int) -> dict[str, float]:  # noqa: ANN001
    """Self CPU seconds per step by kind of op (:data:`KINDS`, else ``rest``)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out = dict.fromkeys([*KINDS, "rest"], 0.0)
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = next((k for k, words in KINDS.items() if any(w in event.key for w in words)),
                    "rest")
        out[kind] += event.self_cpu_time_total / 1e6 / steps
    return out


def conv_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Conv2d, torch.Size]]:
    """Every convolution of ``model`` by name, with the shape of its input on ``x``."""
    found: dict[str, tuple[nn.Conv2d, torch.Size]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp, name=name: found.__setitem__(name, (mod, inp[0].shape)))
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def conv_step_ms(conv: nn.Conv2d, shape: torch.Size, fmt: torch.memory_format,
                 dtype: torch.dtype | None, repeats: int) -> float:
    """Median time of one convolution's forward and backward (input and weight gradients)
    at ``shape``, alone."""
    device = conv.weight.device
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_()
    w = conv.weight.detach().clone().contiguous(memory_format=fmt).requires_grad_()

    def run() -> None:
        with autocast(device, dtype):
            out = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        out.float().sum().backward()

    for _ in range(2):
        run()
    times = [timed(run, device) for _ in range(repeats)]
    return statistics.median(times) * 1e3


def width_rows(name: str, args: argparse.Namespace, device: torch.device,
               out: list[dict]) -> list[str]:
    """Per input side: every convolution of the dense and of the pruned (MACs 0.25) network
    timed alone (forward + backward), summed; the rate is 3 x 2 x MACs over that time."""
    model, pruned, x, _ = dense_and_quarter(name, args, device)
    fmt = FORMATS[args.formats[-1]]
    stages: dict[int, dict[str, float]] = {}
    cache: dict[tuple, float] = {}
    for net_kind, net in (("dense", model), ("pruned", pruned)):
        for conv, shape in conv_inputs(net, x).values():
            key = (tuple(shape), tuple(conv.weight.shape), conv.stride, conv.groups)
            if key not in cache:
                cache[key] = conv_step_ms(conv, shape, fmt, args.dtype, args.steps)
            h_out = (shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
            macs = conv.weight.numel() * h_out * h_out * shape[0]
            stage = stages.setdefault(int(shape[-1]), {})
            stage[f"{net_kind}_ms"] = stage.get(f"{net_kind}_ms", 0.0) + cache[key]
            stage[f"{net_kind}_macs"] = stage.get(f"{net_kind}_macs", 0.0) + macs
            stage[f"{net_kind}_widths"] = sorted({*stage.get(f"{net_kind}_widths", []),
                                                  int(conv.weight.shape[0])})
    rows = []
    for side, st in sorted(stages.items(), reverse=True):
        rate = {k: 6 * st[f"{k}_macs"] / (st[f"{k}_ms"] / 1e3) / 1e9 for k in ("dense", "pruned")}
        out.append({"model": name, "input_side": side, "memory_format": args.formats[-1], **st,
                    "dense_gflops": rate["dense"], "pruned_gflops": rate["pruned"]})
        widths = {k: "/".join(map(str, st[f"{k}_widths"])) for k in ("dense", "pruned")}
        rows.append(f"| {name} | {side} | {widths['dense']} | {widths['pruned']} | "
                    f"{st['pruned_macs'] / st['dense_macs']:.3f} | "
                    f"{st['pruned_ms'] / st['dense_ms']:.3f} | {st['dense_ms']:.1f} | "
                    f"{st['pruned_ms']:.1f} | {rate['dense']:.0f} | {rate['pruned']:.0f} |")
    total = {k: sum(st[f"{k}_ms"] for st in stages.values()) for k in ("dense", "pruned")}
    macs = {k: sum(st[f"{k}_macs"] for st in stages.values()) for k in ("dense", "pruned")}
    rows.append(f"| {name} | all | | | {macs['pruned'] / macs['dense']:.3f} | "
                f"{total['pruned'] / total['dense']:.3f} | {total['dense']:.1f} | "
                f"{total['pruned']:.1f} | | |")
    print("\n".join(rows), flush=True)
    return rows


def gpu_busy(step, steps: int) -> dict[str, float]:  # noqa: ANN001
    """Per step on CUDA: wall ms and the GPU's kernel ms (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    device = torch.device("cuda")
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = time.perf_counter() - t0
    kernels = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages()
                  if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"wall_ms": wall / steps * 1e3, "kernel_ms": kernels / 1e3 / steps}


def busy_rows(name: str, args: argparse.Namespace, device: torch.device, out: dict) -> list[str]:
    model, pruned, x, y = dense_and_quarter(name, args, device)
    fmt = FORMATS[args.formats[-1]]
    found = {kind: gpu_busy(step_fn(net, x, y, fmt, dtype=args.dtype), args.profile_steps)
             for kind, net in (("dense", model), ("pruned", pruned))}
    out[name] = {"memory_format": args.formats[-1], **found}
    rows = [f"| {name} | {kind} | {f['wall_ms']:.2f} | {f['kernel_ms']:.2f} | "
            f"{100 * f['kernel_ms'] / f['wall_ms']:.0f}% |" for kind, f in found.items()]
    kernel_ratio = found["pruned"]["kernel_ms"] / max(found["dense"]["kernel_ms"], 1e-9)
    rows.append(f"| {name} | pruned/dense | "
                f"{found['pruned']['wall_ms'] / found['dense']['wall_ms']:.3f} | "
                f"{kernel_ratio:.3f} | |")
    print("\n".join(rows), flush=True)
    return rows


def profile_rows(name: str, args: argparse.Namespace, device: torch.device,
                 out: dict) -> list[str]:
    model, pruned, x, y = dense_and_quarter(name, args, device)
    fmt = FORMATS[args.formats[-1]]
    dense_s = op_shares(step_fn(model, x, y, fmt, dtype=args.dtype), args.profile_steps)
    pruned_s = op_shares(step_fn(pruned, x, y, fmt, dtype=args.dtype), args.profile_steps)
    total_d, total_p = sum(dense_s.values()), sum(pruned_s.values())
    out[name] = {"memory_format": args.formats[-1], "dense_s": dense_s, "pruned_s": pruned_s}
    rows = []
    for kind in dense_s:
        ratio = pruned_s[kind] / dense_s[kind] if dense_s[kind] else float("nan")
        rows.append(f"| {name} | {kind} | {100 * dense_s[kind] / total_d:.1f}% | "
                    f"{100 * pruned_s[kind] / total_p:.1f}% | {ratio:.3f} |")
    rows.append(f"| {name} | all | 100% | 100% | {total_p / total_d:.3f} |")
    print("\n".join(rows), flush=True)
    return rows


def compile_rows(name: str, args: argparse.Namespace, device: torch.device,
                 out: list[dict]) -> list[str]:
    model, pruned, x, y = dense_and_quarter(name, args, device)
    fmt = FORMATS[args.formats[-1]]
    rows = []
    for kind, net in (("dense", model), ("pruned 0.25", pruned)):
        steps = {c: step_fn(net, x, y, fmt, compiled=c, dtype=args.dtype) for c in (False, True)}
        first = {c: timed(step, device) for c, step in steps.items()}
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.steps):
            for c, step in steps.items():
                times[c].append(timed(step, device))
        eager, comp = statistics.median(times[False]), statistics.median(times[True])
        out.append({"model": name, "network": kind, "compile_s": first[True],
                    "eager_ms": eager * 1e3, "compiled_ms": comp * 1e3})
        breakeven = first[True] / max(eager - comp, 1e-9)
        rows.append(f"| {name} | {kind} | {first[True]:.1f} | {eager * 1e3:.1f} | "
                    f"{comp * 1e3:.1f} | {comp / eager:.3f} | "
                    f"{breakeven:.0f} |" if comp < eager else
                    f"| {name} | {kind} | {first[True]:.1f} | {eager * 1e3:.1f} | "
                    f"{comp * 1e3:.1f} | {comp / eager:.3f} | never |")
        print(rows[-1], flush=True)
    return rows


def minimal_epoch(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, batch: int,
                  seed: int, dtype: torch.dtype | None = None) -> float:
    """The plainest PyTorch loop: shuffle, slice, forward, backward, step (in the layout of
    ``x_all``, in ``dtype`` autocast)."""
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
        with autocast(x_all.device, dtype):
            loss = F.cross_entropy(model(xb).float(), yb)
        loss.backward()
        opt.step()
    sync(x_all.device)
    return time.perf_counter() - t0


def engine_overhead(args: argparse.Namespace, device: torch.device) -> str:
    dataset = "fashion_mnist" if args.size == 28 else "digits"
    config = parse_train_config({
        "model": args.overhead_model,
        "dataset": {"name": dataset, "train_subset": args.subset, "val_fraction": 0.0},
        "training": {"epochs": args.epochs, "batch_size": args.batch, "seed": 0,
                     "device": device.type, "lr_schedule": "constant",
                     "precision": args.precision[0]},
        "method": "dense",
    })
    # The same samples, model and batch size through the plain loop, before and after.
    data = load_dataset(dataset, train_subset=args.subset, seed=0, batch_size=args.batch,
                        device=device, val_fraction=0.0)
    xs, ys = zip(*data.train)
    fmt = resolve_memory_format(config.training.memory_format, device)
    x_all, y_all = torch.cat(xs).contiguous(memory_format=fmt), torch.cat(ys)
    torch.manual_seed(0)
    model = create_model(args.overhead_model, 10, data.in_channels, data.input_size).to(device)
    model = model.to(memory_format=fmt)
    plain = [minimal_epoch(model, x_all, y_all, args.batch, e, args.dtype)
             for e in range(args.epochs)]
    summary = train(config, Path(args.workdir) / "engine", progress=False, resume=False)
    engine_times = [e["time_s"] for e in summary["epochs"]]
    plain += [minimal_epoch(model, x_all, y_all, args.batch, e, args.dtype)
              for e in range(args.epochs)]
    engine_t, plain_t = min(engine_times), min(plain)
    overhead = 100 * (engine_t / plain_t - 1)
    return (f"| {args.overhead_model} | {dataset} ({len(x_all)} samples) | {args.batch} | "
            f"{config.training.memory_format} ({fmt}) | {engine_t:.2f} | {plain_t:.2f} | "
            f"{overhead:+.1f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=28, help="input side (28: Fashion-MNIST)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per network")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_vgg11"])
    p.add_argument("--formats", nargs="+", choices=list(FORMATS),
                   default=["contiguous", "channels_last"])
    p.add_argument("--precision", nargs="+", choices=["auto", "fp32", "bf16"],
                   default=["auto"],
                   help="autocast of the steps, as training.precision (auto: bf16 where the "
                        "hardware has bf16 matrix units); part (a) times each, the other "
                        "parts use the first")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (part c; minutes on a CPU)")
    p.add_argument("--overhead-model", default="cifar_resnet20")
    p.add_argument("--subset", type=int, default=5000, help="training samples for part (b)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs for part (b); the fastest epoch of each loop is compared")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default="runs/bench")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="markdown file of the tables; the JSON goes beside it")
    args = p.parse_args()
    if args.compile:  # a cold compile, as a new trial's would be: no cache of earlier runs
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoprune-inductor-")
    device = torch.device(args.device)
    args.dtypes = {prec: resolve_precision(prec, device) for prec in args.precision}
    args.dtype = args.dtypes[args.precision[0]]
    head = (f"device: {device_name(device)} ({torch.get_num_threads()} CPU threads), "
            f"torch {torch.__version__}, batch {args.batch}, input {args.size}x{args.size}; "
            f"parts (w), (p), (c), (b) in {precision_name(args.dtype)}")
    first = f"{args.formats[0]} {precision_name(args.dtype)}"
    lines = [head, "", "(a) training-step time, pruned vs dense (median of interleaved "
             f"steps; reference: the dense {first} step)", "",
             "| model | memory format | precision | MACs ratio | time ratio | "
             "dense vs reference | pruned vs reference | dense ms/step | pruned ms/step | "
             "time <= MACs + 0.05 |", "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    speed: list[dict] = []
    for name in args.models:
        lines += step_time_ratios(name, args, device, speed)
    widths: list[dict] = []
    lines += section([f"(w) convolutions alone, forward + backward, summed by input side, "
                      f"dense vs pruned to MACs 0.25 ({args.formats[-1]}; rate: GFLOP/s)",
                      "| model | input side | dense widths | pruned widths | MACs ratio | "
                      "time ratio | dense ms | pruned ms | dense rate | pruned rate |",
                      "|---|---|---|---|---|---|---|---|---|---|"])
    for name in args.models:
        lines += width_rows(name, args, device, widths)
    profiles: dict = {}
    if device.type == "cpu":
        lines += section([f"(p) where a step's time goes, dense vs pruned to MACs 0.25 "
                          f"({args.formats[-1]}, self CPU time)",
                          "| model | kind of op | share dense | share pruned | pruned/dense |",
                          "|---|---|---|---|---|"])
        for name in args.models:
            lines += profile_rows(name, args, device, profiles)
    else:
        lines += section([f"(p) GPU busy time per step, dense vs pruned to MACs 0.25 "
                          f"({args.formats[-1]}; kernels / wall: under 100% the GPU waits "
                          "for the host)",
                          "| model | network | wall ms/step | kernel ms/step | GPU busy |",
                          "|---|---|---|---|---|"])
        for name in args.models:
            lines += busy_rows(name, args, device, profiles)
    compiled: list[dict] = []
    if args.compile:
        lines += section([f"(c) torch.compile ({args.formats[-1]})",
                          "| model | network | compile s | eager ms/step | compiled ms/step | "
                          "compiled/eager | steps to pay back |", "|---|---|---|---|---|---|---|"])
        lines += compile_rows(args.models[0], args, device, compiled)
    lines += section([f"(b) engine vs minimal PyTorch loop, dense epoch (best of {args.epochs})",
                      "| model | data | batch | memory format | engine s/epoch | "
                      "plain s/epoch | overhead |", "|---|---|---|---|---|---|---|"])
    row = engine_overhead(args, device)
    print(row)
    lines.append(row)
    results = args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    settings = {k: v for k, v in vars(args).items() if k not in ("dtype", "dtypes")}
    settings["results"] = str(args.results)
    results.with_suffix(".json").write_text(json.dumps(
        {"device": head, "args": settings, "speed": speed, "conv_by_side": widths,
         "profile": profiles, "compile": compiled, "engine_overhead_row": row}, indent=2))
    print(f"\nwritten to {results} and {results.with_suffix('.json')}")


def section(head: list[str]) -> list[str]:
    """A table's title and header, printed now: a blank line, the title, a blank line."""
    block = ["", head[0], "", *head[1:]]
    print("\n".join(block), flush=True)
    return block


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


if __name__ == "__main__":
    main()

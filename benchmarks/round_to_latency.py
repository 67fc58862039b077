"""Does keeping pruned widths a multiple of 8 (``round_to: 8``) change latency at equal MACs?

For a CIFAR ResNet and a CIFAR VGG on 28x28 one-channel inputs, the networks are pruned
uniformly (L1, through autoprune's surgery) at a sweep of filter fractions, once as the
plan says (``round_to: 1``, odd widths included) and once with every pruned group's width
rounded up to a multiple of 8 (``round_to: 8``, :meth:`DependencyIndex.round_plan`, what
the engine applies). Each network's median inference latency (eval mode, 5 warm-up runs,
``--repeats`` timed runs, ``--threads`` CPU threads) is measured in PyTorch and
onnxruntime at batch 1 and at batch 128; the two kinds of networks are measured
interleaved so that machine noise hits both alike.

Since rounding keeps a few more channels, the two sweeps do not land on the same MACs:
each ``round_to: 1`` network is compared with the ``round_to: 8`` latency interpolated
(piecewise linearly in MACs) at its MACs. The figure printed per model, runtime and batch
is the median of latency(round_to 8) / latency(round_to 1) at equal MACs: below 1 means
multiples of 8 run faster than their MACs say.

Usage::

    .venv/bin/python benchmarks/round_to_latency.py [--threads 1] [--repeats 20]

Results: ``benchmarks/results/round_to_latency.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.compute import count_macs_params, measure_latency_ms
from autoprune.deploy.onnx_export import onnx_latency_ms, session, to_onnx
from autoprune.methods.criteria import l1_importance, uniform_plan
from autoprune.models import create_model
from autoprune.surgery import DependencyIndex, remove_channels

RESULTS = Path(__file__).parent / "results" / "round_to_latency.json"
FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BATCHES = (1, 128)


def pruned(model: nn.Module, x: torch.Tensor, fraction: float, multiple: int) -> nn.Module:
    """A copy of ``model`` with ``fraction`` of every group's filters removed (L1), the
    kept widths rounded up to a multiple of ``multiple``."""
    net = copy.deepcopy(model)
    index = DependencyIndex(net, x)
    scores = {k: l1_importance(net, g) for k, g in index.groups.items()}
    widths = {k: g.width for k, g in index.groups.items()}
    plan = uniform_plan(scores, widths, widths, fraction)
    remove_channels(net, index.round_plan(plan, multiple), x, index=index)
    return net.eval()


def latencies(net: nn.Module, x: torch.Tensor, repeats: int, threads: int) -> dict[str, float]:
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        sess = session(to_onnx(net, x[:2], Path(folder) / "m.onnx"), threads)
        for batch in BATCHES:
            out[f"pytorch_b{batch}"] = measure_latency_ms(net, x, repeats, batch_size=batch)
            out[f"onnxruntime_b{batch}"] = onnx_latency_ms(sess, x[:batch], repeats)
    return out


def widths(net: nn.Module, x: torch.Tensor) -> list[int]:
    return sorted({g.width for g in DependencyIndex(net, x).groups.values()})


def compare(rows: list[dict], key: str) -> float:
    """Median over round_to-1 networks of latency8(MACs) / latency1, latency8 interpolated
    in MACs (networks outside the round_to-8 MACs range are left out)."""
    eight = sorted((r for r in rows if r["round_to"] == 8), key=lambda r: r["macs"])
    xs = np.array([r["macs"] for r in eight], dtype=float)
    ys = np.array([r[key] for r in eight], dtype=float)
    ratios = [float(np.interp(r["macs"], xs, ys)) / r[key] for r in rows
              if r["round_to"] == 1 and xs[0] <= r["macs"] <= xs[-1]]
    return statistics.median(ratios) if ratios else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_vgg11"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    report: dict = {"threads": args.threads, "repeats": args.repeats, "input": [1, 28, 28],
                    "batches": list(BATCHES), "models": {}}
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_channels=1, input_size=28).eval()
        dense_macs = count_macs_params(model, x[:1])[0]
        rows = []
        for fraction in FRACTIONS:
            for multiple in (1, 8):  # interleaved: the same moment of the machine
                net = pruned(model, x[:2], fraction, multiple)
                macs = count_macs_params(net, x[:1])[0]
                row = {"fraction": fraction, "round_to": multiple, "macs": macs,
                       "macs_ratio": macs / dense_macs, "widths": widths(net, x[:1]),
                       **latencies(net, x, args.repeats, args.threads)}
                rows.append(row)
                print(json.dumps({"model": name, **{k: (round(v, 4) if isinstance(v, float)
                                                        else v) for k, v in row.items()}}),
                      flush=True)
        keys = [f"{rt}_b{b}" for rt in ("pytorch", "onnxruntime") for b in BATCHES]
        summary = {key: compare(rows, key) for key in keys}
        report["models"][name] = {"rows": rows, "latency_ratio_8_vs_1_at_equal_macs": summary}
        print(f"{name}: latency(round_to 8) / latency(round_to 1) at equal MACs: "
              + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

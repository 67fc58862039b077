"""The figures of the benchmark tables that their own scripts do not draw, from the
committed results (no training): the docs show each table with its figure.

- ``seed_methods.png``: the short profile's accuracy against training FLOPs
  (``seed_methods.py`` draws the large profile's itself);
- ``round_to_latency.png``: latency with ``round_to: 8`` over ``round_to: 1`` at equal
  MACs, per model, runtime and batch;
- ``pruned_training_speed.png``: training-step time ratio against MACs ratio, per model,
  memory format and precision, with the line where time falls as fast as MACs;
- ``search_throughput.png``: trials (CPU) and trainings (GPU) per hour against how many
  run at once.

    .venv/bin/python benchmarks/plot_results.py     # rewrites the four PNGs, prints a line each
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, name: str) -> Path:
    """Lay ``fig`` out, write it to ``results/NAME`` and free it."""
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path)
    plt.close(fig)
    return path


def seed_methods_short() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from seed_methods import plot

    data = json.loads((RESULTS / "seed_methods.json").read_text())
    rows = data["runs"]
    models = sorted({r["model"] for r in rows})
    path = RESULTS / "seed_methods.png"
    plot(rows, models, path)
    return path


def round_to_latency() -> Path:
    plt = _plt()
    data = json.loads((RESULTS / "round_to_latency.json").read_text())["models"]
    keys = ["pytorch_b1", "pytorch_b128", "onnxruntime_b1", "onnxruntime_b128"]
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    width = 0.8 / len(data)
    for i, (model, result) in enumerate(sorted(data.items())):
        ratios = result["latency_ratio_8_vs_1_at_equal_macs"]
        xs = [k + (i - (len(data) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [ratios[k] for k in keys], width, label=model)
    ax.axhline(1.0, color="0.3", lw=1, ls="--")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("_b", ", batch ") for k in keys])
    ax.set_ylabel("latency, round_to 8 / round_to 1")
    ax.set_title("Widths in multiples of 8, at equal MACs (below 1: faster)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, "round_to_latency.png")


def pruned_training_speed() -> Path:
    plt = _plt()
    rows = json.loads((RESULTS / "pruned_training_speed.json").read_text())["speed"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    markers = {"cifar_resnet20": "o", "cifar_vgg11": "s"}
    colours = {("contiguous", "fp32"): "tab:blue", ("channels_last", "fp32"): "tab:orange",
               ("contiguous", "bf16"): "tab:green", ("channels_last", "bf16"): "tab:red"}
    for (fmt, precision), colour in colours.items():
        for model, marker in markers.items():
            mine = [r for r in rows if (r["model"], r["memory_format"], r["precision"])
                    == (model, fmt, precision)]
            if mine:
                ax.scatter([r["macs_ratio"] for r in mine], [r["time_ratio"] for r in mine],
                           color=colour, marker=marker, s=40,
                           label=f"{model}, {fmt}, {precision}")
    ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1, label="time ratio = MACs ratio")
    ax.set_xlim(0, 0.6)
    ax.set_xlabel("MACs ratio (pruned / dense)")
    ax.set_ylabel("training-step time ratio")
    ax.set_title("Pruned training steps on this CPU")
    ax.legend(fontsize=6.5, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(plt, fig, "pruned_training_speed.png")


def search_throughput() -> Path:
    plt = _plt()
    cpu = json.loads((RESULTS / "search_throughput.json").read_text())
    gpu = json.loads((RESULTS / "search_throughput_cuda.json").read_text())["gpu_share"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    settings = [("serial", "1 at a time,\n2 threads each"),
                ("concurrent", "2 at a time,\n1 thread each")]
    left.bar([label for _, label in settings],
             [cpu[name]["trials_per_hour"] for name, _ in settings], color="tab:blue")
    left.set_ylabel("trials per hour")
    left.set_title(f"Search on {cpu['cores']} CPU cores")
    counts = sorted(gpu, key=int)
    right.plot([int(k) for k in counts], [gpu[k]["trainings_per_hour"] for k in counts], "o-",
               color="tab:green", label="measured")
    one = gpu[counts[0]]["trainings_per_hour"]
    right.plot([int(k) for k in counts], [one * int(k) for k in counts], "--", color="0.5",
               label="linear in trainings at once")
    right.set_xlabel("trainings at once on one GPU")
    right.set_ylabel("trainings per hour")
    right.set_title("One H200, shared")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(plt, fig, "search_throughput.png")


def main() -> None:
    for draw in (seed_methods_short, round_to_latency, pruned_training_speed,
                 search_throughput):
        print(f"wrote {draw()}")


if __name__ == "__main__":
    main()

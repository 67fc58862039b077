"""``schedule.png``: what a pruning schedule did to one training run, in one picture.

Drawn from ``summary.json`` alone (matplotlib, Agg), so a run's picture can be redrawn
later from its summary: MACs and parameters as fractions of the dense architecture and
validation accuracy over the epochs, with every epoch that removed channels (prune) or
added them (growth) marked; below, a heat map of each channel group's width after every
epoch. Column 0 is the network as training starts (after the method's set-up, e.g.
CGaP's seed width); the last column, ``end``, is the network after the method's final
step (HFP's cut, variational's last removal), when there is one.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEDULE_PNG = "schedule.png"
MAX_LABELLED_GROUPS = 40
"""Above this many channel groups, only every k-th row of the heat map is labelled."""


def schedule_series(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The plotted series: x positions, MACs/params ratios, validation accuracy, events
    (``(epoch, "prune" | "growth")``), group names and the width matrix (rows: groups,
    columns: x positions; NaN where a group no longer exists)."""
    records: Sequence[Mapping[str, Any]] = summary.get("epochs") or []
    dense_macs = float(summary.get("dense_macs") or 0) or math.nan
    dense_params = float(summary.get("dense_params") or 0) or math.nan
    initial: Mapping[str, Any] = summary.get("initial") or {}
    points: list[dict[str, Any]] = []
    if initial:
        points.append({"x": 0, "label": "start", "macs": initial.get("macs"),
                       "params": initial.get("params"), "accuracy": None,
                       "widths": initial.get("widths") or {}})
    for r in records:
        points.append({"x": int(r["epoch"]), "label": str(r["epoch"]), "macs": r.get("macs"),
                       "params": r.get("params"), "accuracy": r.get("accuracy"),
                       "widths": r.get("widths") or {}})
    last = points[-1] if points else None
    final_widths = summary.get("widths") or {}
    changed_at_end = last is not None and (
        summary.get("macs") != last["macs"] or summary.get("params") != last["params"]
        or (final_widths and final_widths != last["widths"]))
    if changed_at_end and last is not None:
        points.append({"x": last["x"] + 1, "label": "end", "macs": summary.get("macs"),
                       "params": summary.get("params"), "accuracy": summary.get("val_accuracy"),
                       "widths": final_widths})
    events: list[tuple[int, str]] = []
    for before, after in zip(points, points[1:]):
        kind = _change(before, after)
        if kind:
            events.append((after["x"], kind))
    groups: list[str] = []
    for p in points:
        groups += [g for g in p["widths"] if g not in groups]
    widths = [[float(p["widths"].get(g, math.nan)) for p in points] for g in groups]
    return {
        "x": [p["x"] for p in points], "labels": [p["label"] for p in points],
        "macs_ratio": [_num(p["macs"]) / dense_macs for p in points],
        "params_ratio": [_num(p["params"]) / dense_params for p in points],
        "accuracy": [_num(p["accuracy"]) for p in points],
        "events": events, "groups": groups, "widths": widths,
    }


def write_schedule_png(summary: Mapping[str, Any], path: Path) -> Path:
    """Draw ``summary``'s schedule into ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = schedule_series(summary)
    config = summary.get("config") or {}
    n_groups = len(s["groups"])
    map_height = 0.6 + 0.16 * min(n_groups, 60) if n_groups else 0.0
    heights = [2.2, 1.6] + ([map_height] if n_groups else [])
    total = sum(heights) + 0.3 * len(heights) + 1.0  # inches: panels, gaps, title, x axis
    fig, axes = plt.subplots(len(heights), 1, figsize=(8, total), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": heights})
    # fixed margins (tight_layout would measure every label: half the time of a picture)
    fig.subplots_adjust(left=0.2, right=0.88, top=1 - 0.45 / total, bottom=0.55 / total,
                        hspace=0.3 * len(heights) / sum(heights))
    compute, accuracy = axes[0], axes[1]
    compute.plot(s["x"], s["macs_ratio"], "o-", ms=3, color="tab:blue", label="MACs / dense")
    compute.plot(s["x"], s["params_ratio"], "s-", ms=3, color="tab:orange",
                 label="params / dense")
    compute.set_ylabel("fraction of dense")
    compute.set_ylim(bottom=0)
    accuracy.plot(s["x"], s["accuracy"], "o-", ms=3, color="tab:green")
    accuracy.set_ylabel("validation accuracy")
    colours = {"prune": "tab:red", "growth": "tab:purple"}
    for ax in (compute, accuracy):
        for epoch, kind in s["events"]:
            ax.axvline(epoch, color=colours[kind], alpha=0.35, lw=1.2, ls="--")
        ax.grid(alpha=0.3)
    for kind, colour in colours.items():  # one legend entry per kind of event that happened
        if any(k == kind for _, k in s["events"]):
            compute.plot([], [], color=colour, ls="--", alpha=0.6, label=kind)
    compute.legend(loc="best", fontsize=7)
    if n_groups:
        _heat_map(fig, axes[2], s)
    last = axes[-1]
    last.set_xticks(s["x"])
    last.set_xticklabels(s["labels"], fontsize=7)
    last.set_xlabel("epoch")
    method = config.get("method", "")
    params = (summary.get("schedule") or {}).get("method_params") or config.get(
        "method_params") or {}
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in params.items())
    title = f"{config.get('model', '')} / {method}" + (f"  ({shown})" if shown else "")
    fig.suptitle(textwrap.shorten(title, 120, placeholder=" ..."), fontsize=9, x=0.54)
    fig.savefig(path)
    plt.close(fig)
    return path


def _heat_map(fig: Any, ax: Any, s: Mapping[str, Any]) -> None:
    import numpy as np

    data = np.ma.masked_invalid(np.array(s["widths"], dtype=float))
    x = np.array(s["x"], dtype=float)
    edges = np.concatenate([x - 0.5, [x[-1] + 0.5]])
    rows = np.arange(len(s["groups"]) + 1) - 0.5
    mesh = ax.pcolormesh(edges, rows, data, cmap="viridis", shading="flat")
    step = max(1, math.ceil(len(s["groups"]) / MAX_LABELLED_GROUPS))
    ax.set_yticks(range(0, len(s["groups"]), step))
    ax.set_yticklabels(s["groups"][::step], fontsize=6)
    ax.invert_yaxis()
    ax.set_ylabel("channel group")
    bar = ax.inset_axes([1.01, 0.0, 0.015, 1.0])  # outside: the x axes above stay aligned
    fig.colorbar(mesh, cax=bar, label="channels")


def _change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """``growth`` if any group gained channels, ``prune`` if any lost some (or a group
    or parameters went away), else None."""
    a, b = before["widths"], after["widths"]
    if any(b.get(g, 0) > w for g, w in a.items()) or (a and any(g not in a for g in b)):
        return "growth"
    if any(b.get(g, 0) < w for g, w in a.items()):
        return "prune"
    pa, pb = _num(before["params"]), _num(after["params"])
    if math.isfinite(pa) and math.isfinite(pb) and pb != pa:
        return "prune" if pb < pa else "growth"
    return None


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["SCHEDULE_PNG", "schedule_series", "write_schedule_png"]

"""Pareto fronts as pure functions, and the three views of a front: CSV, PNG, HTML.

Objectives come with a direction each (``"max"`` or ``"min"``); a row is a mapping that
holds (at least) every objective. Only completed trials should be passed in. In a search's
rows ``accuracy`` is the validation accuracy (what the front is chosen on);
``test_accuracy`` sits beside it in every view and never decides anything.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]

CSV_COLUMNS = ("trial_id", "method", "accuracy", "val_accuracy", "test_accuracy", "macs",
               "params", "train_flops", "latency_ms", "macs_ratio", "epochs", "fidelity",
               "run_id")


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, mode in zip(a, b, modes):
        gx, gy = (x, y) if mode == "max" else (-x, -y)
        if gx < gy:
            return False
        better = better or gx > gy
    return better


def non_dominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (NaN points are never on it)."""
    valid = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    return [i for i in valid
            if not any(dominates(points[j], points[i], modes) for j in valid if j != i)]


def nondominated_ranks(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Front index of every point (0: non-dominated; 1: non-dominated once front 0 is
    removed; ...). Points with a NaN come last, after every front."""
    ranks = [-1] * len(points)
    left = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    level = 0
    while left:
        current = [i for i in left
                   if not any(dominates(points[j], points[i], modes) for j in left if j != i)]
        for i in current:
            ranks[i] = level
        left = [i for i in left if ranks[i] < 0]
        level += 1
    return [level if r < 0 else r for r in ranks]


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance of each point within one front (infinite at the ends of
    every objective): larger means more isolated, so more worth keeping."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for a, b, c in zip(order, order[1:], order[2:]):
            distance[b] += (points[c][k] - points[a][k]) / (high - low)
    return distance


def priority_positions(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Each point's place (0 = best) in one strict order: by non-dominated rank, then by
    crowding distance (larger first), then by the first objective (better first: of the
    two ends of a front, both infinitely crowded, the one best in the first objective
    leads), then by index (the earlier point first). No two points share a place, so at
    most the top ``k`` places are ever promoted."""
    ranks = nondominated_ranks(points, modes)
    crowding = [0.0] * len(points)
    for level in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == level]
        if all(all(math.isfinite(v) for v in points[i]) for i in members):
            for i, d in zip(members, crowding_distances([points[i] for i in members])):
                crowding[i] = d
    sign = 1.0 if modes[0] == "max" else -1.0

    def key(i: int) -> tuple[int, float, float, int]:
        first = points[i][0] if math.isfinite(points[i][0]) else -math.inf * sign
        return (ranks[i], -crowding[i], -sign * first, i)

    order = sorted(range(len(points)), key=key)
    places = [0] * len(points)
    for place, i in enumerate(order):
        places[i] = place
    return places


def hypervolume_2d(
    points: Sequence[Sequence[float]], modes: Sequence[str], reference: Sequence[float]
) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (two objectives).

    Points that do not strictly improve on the reference in both objectives add nothing.
    """
    if len(modes) != 2 or len(reference) != 2:
        raise ValueError("hypervolume_2d needs exactly two objectives")
    sign = [1.0 if m == "min" else -1.0 for m in modes]  # to minimisation
    ref = (reference[0] * sign[0], reference[1] * sign[1])
    pts = [(p[0] * sign[0], p[1] * sign[1]) for p in points if all(math.isfinite(v) for v in p)]
    pts = sorted({p for p in pts if p[0] < ref[0] and p[1] < ref[1]})
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):
        if y >= best_y:
            continue
        next_x = min((q[0] for q in pts[i + 1:] if q[1] < y), default=ref[0])
        area += (next_x - x) * (ref[1] - y)
        best_y = y
    return area


def front(rows: Sequence[Row], objectives: Sequence[str], modes: Sequence[str]) -> list[Row]:
    """The non-dominated rows, sorted by the last objective (usually a cost)."""
    points = [[_num(r.get(o)) for o in objectives] for r in rows]
    chosen = [rows[i] for i in non_dominated(points, modes)]
    return sorted(chosen, key=lambda r: [_num(r.get(o)) for o in reversed(objectives)])


def write_csv(rows: Sequence[Row], path: Path, columns: Sequence[str] = CSV_COLUMNS) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_png(
    rows: Sequence[Row], front_rows: Sequence[Row], x: str, y: str, path: Path, title: str = ""
) -> Path:
    """Scatter of all completed trials with the front as a step line (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([_num(r.get(x)) for r in rows], [_num(r.get(y)) for r in rows], s=22,
               color="0.6", label="completed trials")
    fx = [_num(r.get(x)) for r in front_rows]
    fy = [_num(r.get(y)) for r in front_rows]
    ax.plot(fx, fy, "o-", color="tab:red", drawstyle="steps-post", label="Pareto front")
    for r, px, py in zip(front_rows, fx, fy):
        ax.annotate(str(r.get("method", "")), (px, py), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if x in ("macs", "params", "train_flops") and all(v > 0 for v in fx):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("validation accuracy" if y == "accuracy" else y)
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_html(
    rows: Sequence[Row], front_rows: Sequence[Row], x: str, y: str, path: Path, title: str = "",
    run_url: str = "",
) -> Path:
    """Interactive plotly scatter, self-contained (plotly.js inlined: works offline).

    Hovering a point shows the trial's method, its method parameters and its metrics;
    with ``run_url`` (the start of an MLflow UI's run page, to which the run id is
    appended), clicking a point opens that trial's run in a new tab."""
    import plotly.graph_objects as go

    def hover(r: Row) -> str:
        lines = [f"<b>{r.get('method', '')}</b>"]
        lines += [f"{k}: {_fmt(v)}" for k, v in sorted((r.get("method_params") or {}).items())]
        keys = ("trial_id", "val_accuracy", "test_accuracy", "macs", "params", "train_flops",
                "run_id")
        lines += [f"{k}: {_fmt(r.get(k))}" for k in keys if r.get(k) is not None]
        if run_url and r.get("run_id"):
            lines.append("<i>click: open the run in MLflow</i>")
        return "<br>".join(lines)

    def links(chosen: Sequence[Row]) -> list[str]:
        return [f"{run_url}{r['run_id']}" if run_url and r.get("run_id") else ""
                for r in chosen]

    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[r.get(x) for r in rows], y=[r.get(y) for r in rows], mode="markers",
        name="completed trials", marker={"color": "gray"}, text=[hover(r) for r in rows],
        customdata=links(rows), hoverinfo="text"))
    fig.add_trace(go.Scatter(
        x=[r.get(x) for r in front_rows], y=[r.get(y) for r in front_rows],
        mode="lines+markers", line={"shape": "hv", "color": "crimson"}, name="Pareto front",
        text=[hover(r) for r in front_rows], customdata=links(front_rows), hoverinfo="text"))
    y_title = "validation accuracy" if y == "accuracy" else y
    fig.update_layout(title=title or f"{y} vs {x}", xaxis_title=x, yaxis_title=y_title,
                      template="plotly_white")
    if x in ("macs", "params", "train_flops"):
        fig.update_xaxes(type="log")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, post_script=OPEN_ON_CLICK)
    return path


OPEN_ON_CLICK = """
document.getElementById('{plot_id}').on('plotly_click', function (event) {
  var url = event.points.length ? event.points[0].customdata : '';
  if (url) { window.open(url, '_blank', 'noopener'); }
});
"""
"""A point's ``customdata`` is its run's page: clicking opens it (plotly's ``post_script``)."""


def write_all(
    rows: Sequence[Row], objectives: Sequence[str], modes: Sequence[str], folder: Path,
    title: str = "", run_url: str = "",
) -> list[Path]:
    """``pareto.csv``, ``pareto.png`` and ``pareto.html`` for ``rows`` into ``folder``
    (``run_url``: see :func:`write_html`)."""
    front_rows = front(rows, objectives, modes)
    y = objectives[0]
    x = objectives[1] if len(objectives) > 1 else "macs"
    return [
        write_csv(front_rows, folder / "pareto.csv"),
        write_png(rows, front_rows, x, y, folder / "pareto.png", title),
        write_html(rows, front_rows, x, y, folder / "pareto.html", title, run_url),
    ]


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["crowding_distances", "dominates", "front", "hypervolume_2d", "non_dominated",
           "nondominated_ranks", "priority_positions", "write_all", "write_csv", "write_html",
           "write_png"]

"""Pareto fronts: dominance, the non-dominated set, 2-D hypervolume, the three artifacts."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from autoprune.search.pareto import (
    dominates,
    front,
    hypervolume_2d,
    non_dominated,
    write_all,
)

MAX_MIN = ("max", "min")


def test_dominates_respects_directions() -> None:
    assert dominates((0.9, 10), (0.8, 20), MAX_MIN)
    assert dominates((0.9, 10), (0.9, 20), MAX_MIN)
    assert not dominates((0.9, 10), (0.9, 10), MAX_MIN)  # equal: no one dominates
    assert not dominates((0.9, 30), (0.8, 20), MAX_MIN)  # a trade-off
    assert dominates((1, 1, 1), (2, 1, 1), ("min", "min", "min"))
    assert dominates((5, 5), (1, 1), ("max", "max"))


def test_non_dominated_set() -> None:
    points = [(0.9, 100), (0.8, 50), (0.85, 120), (0.7, 50), (0.95, 400), (math.nan, 1)]
    assert sorted(non_dominated(points, MAX_MIN)) == [0, 1, 4]
    assert non_dominated([], MAX_MIN) == []
    assert sorted(non_dominated([(1, 1), (1, 1)], MAX_MIN)) == [0, 1]  # ties both stay


def test_non_dominated_three_objectives() -> None:
    points = [(0.9, 10, 5), (0.9, 10, 6), (0.8, 5, 9), (0.95, 20, 1)]
    assert sorted(non_dominated(points, ("max", "min", "min"))) == [0, 2, 3]


def test_hypervolume_known_points() -> None:
    # minimise both: staircase of (1,5), (2,3), (4,1) against (5,6) covers 1 + 6 + 5.
    assert hypervolume_2d([(1, 5), (2, 3), (4, 1)], ("min", "min"), (5, 6)) == pytest.approx(12)
    # dominated and out-of-reference points add nothing
    assert hypervolume_2d([(1, 5), (2, 3), (4, 1), (3, 4), (6, 0)], ("min", "min"),
                          (5, 6)) == pytest.approx(12)
    # accuracy (max) vs MACs (min): one point (0.8, 2) against (0, 10) -> 0.8 * 8
    assert hypervolume_2d([(0.8, 2.0)], MAX_MIN, (0.0, 10.0)) == pytest.approx(6.4)
    assert hypervolume_2d([(0.8, 2.0), (0.9, 6.0)], MAX_MIN, (0.0, 10.0)) == pytest.approx(
        0.8 * 4 + 0.9 * 4)
    assert hypervolume_2d([], MAX_MIN, (0.0, 10.0)) == 0.0
    with pytest.raises(ValueError):
        hypervolume_2d([(1, 2, 3)], ("min",) * 3, (1, 1, 1))


def test_front_rows_sorted_by_cost() -> None:
    rows = [{"trial_id": "a", "accuracy": 0.9, "macs": 100},
            {"trial_id": "b", "accuracy": 0.8, "macs": 50},
            {"trial_id": "c", "accuracy": 0.7, "macs": 60}]
    assert [r["trial_id"] for r in front(rows, ("accuracy", "macs"), MAX_MIN)] == ["b", "a"]


def test_write_all_artifacts(tmp_path: Path) -> None:
    rows = [{"trial_id": f"t{i}", "method": "filter", "accuracy": 0.5 + i / 20,
             "macs": 1e5 * (i + 1), "params": 1e3, "run_id": f"r{i}"} for i in range(6)]
    rows.append({"trial_id": "bad", "method": "dense", "accuracy": 0.1, "macs": 1e7})
    paths = write_all(rows, ("accuracy", "macs"), MAX_MIN, tmp_path, "test")
    assert [p.name for p in paths] == ["pareto.csv", "pareto.png", "pareto.html"]
    with open(tmp_path / "pareto.csv") as fh:
        written = list(csv.DictReader(fh))
    assert [r["trial_id"] for r in written] == [f"t{i}" for i in range(6)]
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "pareto.html").read_text()
    assert len(html) > 1_000_000  # plotly.js is inlined: the page works offline
    assert "<script src=\"http" not in html.replace(" ", "")


def test_write_all_without_rows(tmp_path: Path) -> None:
    paths = write_all([], ("accuracy", "macs"), MAX_MIN, tmp_path)
    assert all(p.is_file() for p in paths)


def test_html_points_link_to_their_runs_and_show_method_params(tmp_path: Path) -> None:
    from autoprune.search.store import run_page_prefix

    rows = [{"trial_id": f"t{i}", "method": "filter", "accuracy": 0.5 + i / 20,
             "macs": 1e5 * (i + 1), "run_id": f"run{i}",
             "method_params": {"target_ratio": "0.4", "end_epoch": "3"}} for i in range(3)]
    prefix = run_page_prefix("sqlite:///runs/mlflow.db", "7")
    assert prefix == "http://127.0.0.1:5000/#/experiments/7/runs/"
    assert run_page_prefix("http://head:5000/", "7").startswith("http://head:5000/#/")
    write_all(rows, ("accuracy", "macs"), MAX_MIN, tmp_path, "links", prefix)
    # plotly writes '/', '<' and '>' in its JSON as \uXXXX escapes
    html = re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)),
                  (tmp_path / "pareto.html").read_text())
    assert f"{prefix}run2" in html  # each point's customdata: its run page
    assert "plotly_click" in html and "window.open" in html
    assert "target_ratio: 0.4" in html and "<b>filter</b>" in html

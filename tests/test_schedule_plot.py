"""``schedule.png``: the series drawn from a summary, and the picture itself.

A real training writes the picture in tests/test_deploy.py (``autoprune train``, logged to
MLflow) and tests/test_search_e2e.py (every trial of a search); here, summaries written
by hand, so that every kind of event is checked in milliseconds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autoprune.engine.schedule_plot import schedule_series, write_schedule_png

PNG = b"\x89PNG\r\n\x1a\n"


def summary(records: list[dict[str, Any]], initial: dict[str, Any] | None,
            final: dict[str, Any] | None = None) -> dict[str, Any]:
    last = final or records[-1]
    return {"dense_macs": 100.0, "dense_params": 10.0, "epochs": records,
            "initial": initial, "macs": last["macs"], "params": last["params"],
            "widths": last.get("widths", {}), "val_accuracy": 0.8,
            "config": {"model": "small_cnn", "method": "cgap",
                       "method_params": {"seed_width": 0.5}}}


def record(epoch: int, macs: float, params: float, widths: dict[str, int],
           accuracy: float = 0.5) -> dict[str, Any]:
    return {"epoch": epoch, "macs": macs, "params": params, "widths": widths,
            "accuracy": accuracy}


def test_growth_then_pruning_is_marked_at_the_epochs_it_happened() -> None:
    start = {"macs": 25.0, "params": 2.5, "widths": {"a": 8, "b": 16}}
    records = [record(1, 50, 5, {"a": 12, "b": 24}), record(2, 50, 5, {"a": 12, "b": 24}),
               record(3, 30, 3, {"a": 6, "b": 24}), record(4, 30, 3, {"a": 6, "b": 24})]
    s = schedule_series(summary(records, start))
    assert s["x"] == [0, 1, 2, 3, 4] and s["labels"][0] == "start"
    assert s["events"] == [(1, "growth"), (3, "prune")]
    assert s["macs_ratio"] == [0.25, 0.5, 0.5, 0.3, 0.3]
    assert s["groups"] == ["a", "b"] and s["widths"][0] == [8, 12, 12, 6, 6]
    assert math.isnan(s["accuracy"][0]) and s["accuracy"][1:] == [0.5] * 4


def test_a_final_cut_adds_an_end_column_and_a_removed_group_is_blank() -> None:
    start = {"macs": 100.0, "params": 10.0, "widths": {"a": 8, "b": 16}}
    records = [record(1, 100, 10, {"a": 8, "b": 16}), record(2, 100, 10, {"a": 8, "b": 16})]
    final = {"macs": 40.0, "params": 4.0, "widths": {"a": 4}}  # b went away at the end
    s = schedule_series(summary(records, start, final))
    assert s["labels"] == ["start", "1", "2", "end"] and s["x"][-1] == 3
    assert s["events"] == [(3, "prune")]
    assert s["accuracy"][-1] == 0.8  # the final network's validation accuracy
    assert s["widths"][0][-1] == 4 and math.isnan(s["widths"][1][-1])


def test_a_network_without_channel_groups_still_gets_its_curves(tmp_path: Path) -> None:
    records = [record(e, 100, 10, {}) for e in (1, 2, 3)]
    data = summary(records, {"macs": 100.0, "params": 10.0, "widths": {}})
    s = schedule_series(data)
    assert s["groups"] == [] and s["events"] == []
    path = write_schedule_png(data, tmp_path / "schedule.png")
    assert path.read_bytes()[:8] == PNG


def test_the_picture_is_a_png_with_the_heat_map(tmp_path: Path) -> None:
    start = {"macs": 25.0, "params": 2.5, "widths": {f"layer{i}": 16 for i in range(50)}}
    records = [record(e, 25 - e, 2.5 - e / 10,
                      {f"layer{i}": 16 - e for i in range(50)}) for e in range(1, 6)]
    path = write_schedule_png(summary(records, start), tmp_path / "schedule.png")
    data = path.read_bytes()
    assert data[:8] == PNG
    assert int.from_bytes(data[20:24], "big") > 600  # taller than the curves alone: the map


def test_a_summary_from_before_the_picture_existed_is_drawn_too() -> None:
    """Older summaries have no ``initial`` and no per-epoch widths for every method."""
    records = [record(1, 100, 10, {}), record(2, 60, 6, {})]
    s = schedule_series(summary(records, None))
    assert s["x"] == [1, 2] and s["events"] == [(2, "prune")]

"""Choose a trial for a budget, and show fronts: pure functions over completed-trial rows.

Rows come from :func:`autoprune.search.store.completed_rows`: ``accuracy`` is the
validation accuracy, which is what :func:`choose` chooses on; ``test_accuracy`` is shown,
never used to choose.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune.errors import UserError
from autoprune.search.progress import human
from autoprune.search.target import Target

if TYPE_CHECKING:
    from mlflow import MlflowClient

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_count(text: str | float, flag: str) -> float:
    """``'40M'`` -> 4e7, ``'1.5e6'`` -> 1.5e6; UserError naming ``flag`` otherwise."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmgt]?)\s*", str(text).lower())
    if not match:
        raise UserError(f"{flag} must be a number such as 4e7 or 40M, not {text!r}")
    try:
        return float(match.group(1)) * _SUFFIX[match.group(2)]
    except ValueError:
        raise UserError(f"{flag} must be a number such as 4e7 or 40M, not {text!r}") from None


@dataclass(frozen=True)
class Budget:
    """One constraint: ``metric <= limit`` (or ``accuracy >= limit`` for min-accuracy),
    or the search's whole target (``target``: every bound of it, ``metric`` its first)."""

    flag: str
    metric: str
    limit: float
    target: Target | None = None

    @classmethod
    def from_target(cls, target: Target) -> Budget:
        return cls("--target", target.bounds[0].metric, target.bounds[0].limit, target)

    def describe(self) -> str:
        return f"{self.flag} {self.target}" if self.target else f"{self.flag} {self.limit:g}"

    @classmethod
    def from_args(cls, max_macs: str | None = None, max_macs_ratio: float | None = None,
                  max_params: str | None = None, min_accuracy: float | None = None) -> Budget:
        if max_macs is not None:
            return cls("--max-macs", "macs", parse_count(max_macs, "--max-macs"))
        if max_macs_ratio is not None:
            return cls("--max-macs-ratio", "macs_ratio", float(max_macs_ratio))
        if max_params is not None:
            return cls("--max-params", "params", parse_count(max_params, "--max-params"))
        if min_accuracy is not None:
            return cls("--min-accuracy", "accuracy", float(min_accuracy))
        raise UserError("give one budget: --max-macs, --max-macs-ratio, --max-params "
                        "or --min-accuracy (or search with --target)")

    def fits(self, row: Mapping[str, Any]) -> bool:
        if self.target is not None:
            return self.target.fits(row)
        value = _num(row.get(self.metric))
        if self.metric == "accuracy":
            return value >= self.limit
        return value <= self.limit


def choose(rows: Sequence[Mapping[str, Any]], budget: Budget) -> Mapping[str, Any]:
    """The most accurate completed trial within ``budget`` (ties: fewer MACs), by
    validation accuracy (``accuracy`` of the rows).

    For ``--min-accuracy``: the cheapest in MACs with validation accuracy >= the limit
    (ties: more accurate). UserError naming the budget and the best available when none fits.
    """
    usable = [r for r in rows if math.isfinite(_num(r.get("accuracy")))]
    if not usable:
        raise UserError("the search has no completed trial yet")
    fitting = [r for r in usable if budget.fits(r)]
    if budget.metric == "accuracy":
        def rank(r: Mapping[str, Any]) -> tuple[float, float]:
            return (_num(r.get("macs")), -_num(r.get("accuracy")))
        if fitting:
            return min(fitting, key=rank)
        best = max(usable, key=lambda r: _num(r.get("accuracy")))
        raise UserError(f"no completed trial meets {budget.flag} {budget.limit:g}; the most "
                        f"accurate has accuracy {_num(best.get('accuracy')):.4f} "
                        f"(run {best.get('run_id')})")
    if fitting:
        return max(fitting, key=lambda r: (_num(r.get("accuracy")), -_num(r.get("macs"))))
    best = min(usable, key=lambda r: _num(r.get(budget.metric)))
    raise UserError(f"no completed trial meets {budget.describe()}; the smallest "
                    f"has {budget.metric} {_num(best.get(budget.metric)):.6g} at accuracy "
                    f"{_num(best.get('accuracy')):.4f} (run {best.get('run_id')})")


def replay_config(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The trial's train config (its ``train_config.yaml`` artifact), ready to replay."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory(prefix="autoprune-pick-") as folder:
        try:
            path = client.download_artifacts(run_id, "train_config.yaml", folder)
        except Exception as exc:  # noqa: BLE001 - any store error means: not there
            raise UserError(f"run {run_id} has no train_config.yaml artifact ({exc})") from None
        with open(path) as fh:
            return yaml.safe_load(fh)


def front_table(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> str:
    """A plain-text table of front rows (one line per trial)."""
    columns = ["trial_id", "method", *dict.fromkeys([*objectives, "accuracy", "macs", "params"])]
    columns.insert(columns.index("accuracy") + 1, "test_accuracy")
    columns.append("run_id")
    cells = [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) if rows else "(no completed trials yet)"


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the search store, bound to ``host`` (127.0.0.1 by default)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""Environment for an MLflow server or UI without MLflow 3's job runner (three more Python
processes for GenAI jobs, which autoprune does not use)."""


def ui_env() -> dict[str, str]:
    """The environment ``mlflow ui`` runs in: without the job runner unless the user's
    environment says otherwise."""
    return {**NO_JOB_RUNNER, **os.environ}


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return human(value, "accuracy" if column == "test_accuracy" else column)
    return "" if value is None else str(value)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["Budget", "choose", "front_table", "parse_count", "replay_config", "ui_command"]

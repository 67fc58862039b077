"""Multi-objective asynchronous successive halving, as a Ray Tune TrialScheduler.

Each trial runs its rungs one after the other (:mod:`autoprune.search.trainable`): a
rung is a *complete* training of the trial's schedule compressed to the rung's epochs,
so its result is a finished pruned network whose accuracy, MACs and training FLOPs are
final values, comparable with every other trial's result at that rung. (A truncated run
would not be: halfway through a pruning schedule the network is still dense, or still
growing, and its MACs say nothing about where the schedule ends.)

When a trial reports the end of a lower rung, it is compared with every result recorded
at that rung so far, asynchronously as in ASHA: all points are put in one strict order
by non-dominated rank on the search objectives, then crowding distance (NSGA-II's
order; of a front's two infinitely crowded ends, the one better in the first objective
first), then arrival (an earlier result keeps its place), and the trial continues to the
next rung only if its place is within the top ``ceil(n / reduction_factor)`` of the
``n`` results. Otherwise the TrialScheduler stops
it; the searcher tells Optuna such a trial as *pruned* (never as a complete result) and
MLflow records it with ``autoprune.status=pruned`` and the epochs of its rung.

Rung records are written to ``moasha_rungs.json`` next to Ray's experiment state after
every decision, so ``--resume`` continues with what the search had already learnt (Ray
restores a TrialScheduler as it was pickled when the search started).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from autoprune.search.pareto import priority_positions

logger = logging.getLogger(__name__)
STATE_FILE = "moasha_rungs.json"


class RungRecords:
    """Results seen at each rung, and the promotion rule. Pure: no Ray."""

    def __init__(self, modes: Sequence[str], reduction_factor: float) -> None:
        self.modes = tuple(modes)
        self.reduction_factor = reduction_factor
        self.rungs: dict[int, dict[str, dict[str, Any]]] = {}

    def decide(self, trial_id: str, rung: int, values: Sequence[float]) -> bool:
        """Record ``values`` of ``trial_id`` at ``rung``; whether it goes on to the next.

        A trial's first decision at a rung is final (a retried trial that reports the
        same rung again gets the same answer)."""
        recorded = self.rungs.setdefault(rung, {})
        if trial_id in recorded:
            return bool(recorded[trial_id]["promoted"])
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            promoted = False
        else:
            points = [r["values"] for r in recorded.values() if r["finite"]] + [values]
            place = priority_positions(points, self.modes)[-1]
            promoted = place < math.ceil(len(points) / self.reduction_factor)
        recorded[trial_id] = {"values": values, "promoted": promoted,
                              "finite": all(math.isfinite(v) for v in values)}
        return promoted

    def to_json(self) -> str:
        return json.dumps({str(k): v for k, v in self.rungs.items()})

    def load_json(self, text: str) -> None:
        self.rungs = {int(k): v for k, v in json.loads(text).items()}


class MultiObjectiveASHA(FIFOScheduler):
    """Stops a trial at the end of a lower rung unless it is in the top 1/eta there."""

    def __init__(self, objectives: Sequence[str], modes: Sequence[str], rungs: Sequence[int],
                 reduction_factor: float, state_dir: str | None = None) -> None:
        super().__init__()
        self.objectives = tuple(objectives)
        self.rung_epochs = tuple(rungs)
        self.records = RungRecords(modes, reduction_factor)
        self.state_dir = state_dir
        self._loaded = False
        self.stopped = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = False  # a restored copy reads the records file first
        return state

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not result.get("rung_done") or result.get("is_final"):
            return TrialScheduler.CONTINUE
        self._load()
        rung = int(result["rung"])
        promoted = self.records.decide(trial.trial_id, rung,
                                       [result.get(o, math.nan) for o in self.objectives])
        self._save()
        if promoted:
            return TrialScheduler.CONTINUE
        self.stopped += 1
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        counts = ", ".join(f"rung {k} ({self.rung_epochs[k]} epochs): {len(v)}"
                           for k, v in sorted(self.records.rungs.items()))
        return f"MultiObjectiveASHA: {self.stopped} stopped; {counts or 'no rung results'}"

    # --- persistence ------------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded or self.state_dir is None:
            self._loaded = True
            return
        self._loaded = True
        try:
            fs, path = _file(self.state_dir)
            import pyarrow.fs

            if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(path) as src:
                    self.records.load_json(src.read().decode())
        except (OSError, ValueError) as exc:
            logger.warning("could not read the MOASHA rung records (%s); starting afresh", exc)

    def _save(self) -> None:
        if self.state_dir is None:
            return
        try:
            fs, path = _file(self.state_dir)
            with fs.open_output_stream(path) as out:
                out.write(self.records.to_json().encode())
        except OSError as exc:
            logger.warning("could not write the MOASHA rung records: %s", exc)


def _file(folder: str) -> tuple[Any, str]:
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(folder)
    fs.create_dir(base, recursive=True)
    return fs, f"{base}/{STATE_FILE}"


__all__ = ["STATE_FILE", "MultiObjectiveASHA", "RungRecords"]

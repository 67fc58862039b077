"""One trial of a search, run by Ray Tune: flat config -> train config -> ``engine.train``.

Every epoch is reported to Ray with a checkpoint holding the engine's ``checkpoint.pt``,
so that a trial that fails (or a search that is resumed) continues from its last epoch in
its pruned shape. The final report carries the final objectives (``accuracy`` = test
accuracy) and a checkpoint with ``model.pt``, ``summary.json``, ``schedule.png`` and the
train config YAML, which the driver logs to MLflow even when the trial ran on another node.

With a multi-fidelity TrialScheduler a trial runs *rungs*: complete trainings of its
schedule rescaled to fewer epochs (``min_epochs``, ``min_epochs * eta``, ...), each in a
folder of its own, and last the full budget. The end of a lower rung is reported with
``rung_done=True`` and the rung's final values; the TrialScheduler then stops the trial or
lets it start the next rung from scratch. ``trial_train_flops`` adds up every rung.

Accuracy is chosen on, and reported as, *validation* accuracy: ``accuracy`` in every result
is the validation accuracy (per epoch, at the end of a rung, and final), which the sampler,
the TrialScheduler and the front use. The final result of a full-fidelity trial also
carries ``test_accuracy``, measured once on the test split, for reporting only.

In a two-stage search (a ``fidelity:`` block) a stage-1 trial trains its schedule at the
*proxy* budget (fewer epochs, rescaled as ``autoprune train --epochs`` does, and/or fewer
training images) and never touches the test split; its results say ``fidelity="proxy"``.

A trial whose loss becomes NaN, or whose sampled config is invalid, ends with a final
report marked ``trial_status="failed"`` (not an exception): retrying it would fail again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config import at_budget, dump_yaml, parse_train_config
from autoprune.errors import UserError
from autoprune.search.sampling import train_config_dict

OBJECTIVE_KEYS = ("accuracy", "macs", "params", "train_flops", "latency_ms")
"""Reported every time (NaN where not measured yet): Ray checks that each result has them."""
EPOCH_KEYS = ("accuracy", "macs", "params", "train_flops")
FINAL_EXTRA_KEYS = ("val_accuracy", "test_accuracy", "dense_macs", "dense_params", "macs_ratio",
                    "params_ratio", "dense_train_flops", "train_flops_ratio", "wall_time_s",
                    "test_loss")
CONFIG_FILE = "train_config.yaml"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
STATE_FILE = "trial_state.json"
SCHEDULE_FILE = "schedule.png"
FINAL_FILES = [MODEL_FILE, SUMMARY_FILE, CONFIG_FILE, STATE_FILE, SCHEDULE_FILE]
OPTIONAL_FILES = {SCHEDULE_FILE}
"""Staged when present: a trial checkpointed before pictures were drawn has none."""


def run_trial(config: dict[str, Any], fixed: Mapping[str, Any],
              rungs: Sequence[int] = (), proxy: Mapping[str, Any] | None = None) -> None:
    """Ray Tune function trainable: train one sampled schedule, rung by rung, and report
    as it goes. ``rungs``: the epochs of each rung, the last one full fidelity (empty:
    one rung, the space's own epochs). ``proxy``: ``{"epochs", "train_subset"}`` of a
    two-stage search's first stage: one training at that budget instead."""
    import ray
    from ray import tune

    fidelity = "proxy" if proxy else "full"
    base = {"node_id": ray.get_runtime_context().get_node_id(), "fidelity": fidelity}
    threads = use_cpu_share()
    raw = train_config_dict(fixed, config)
    try:
        plan = proxy_plan(raw, proxy) if proxy else rung_plan(raw, rungs)
    except UserError as exc:
        tune.report(failed_result(base, f"invalid config: {exc}"))
        return
    context = tune.get_context()
    scratch = scratch_dir(context.get_experiment_name(), context.get_trial_id())
    try:
        _train_and_report(plan, scratch, base, threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def rung_plan(raw: Mapping[str, Any], rungs: Sequence[int]) -> list[tuple[int, Any]]:
    """``(rung index, train config)`` of every rung this trial runs. Lower rungs are the
    schedule rescaled to the rung's epochs; a rung the schedule does not fit in (fewer
    epochs than it has phases) is skipped. The last rung is the config as sampled."""
    full = parse_train_config(raw)
    epochs = full.training.epochs
    levels = [r for r in rungs if r < epochs]
    plan: list[tuple[int, Any]] = []
    for index, level in enumerate(levels):
        try:
            plan.append((index, parse_train_config(at_budget(raw, epochs=level))))
        except UserError:
            continue  # too short for this schedule: its first rung comes later
    plan.append((len(levels), full))
    return plan


def proxy_plan(raw: Mapping[str, Any], proxy: Mapping[str, Any]) -> list[tuple[int, Any]]:
    """The one training of a proxy trial: the schedule at the proxy budget. A schedule
    with more phases than the proxy has epochs runs at the fewest epochs that hold its
    phases (still below the full budget where it can): a proxy that cannot run tells the
    sampler nothing."""
    full = parse_train_config(raw)
    subset = proxy.get("train_subset")
    first = int(proxy.get("epochs") or full.training.epochs)
    error: UserError | None = None
    for epochs in range(min(first, full.training.epochs), full.training.epochs + 1):
        try:
            return [(0, parse_train_config(at_budget(raw, epochs=epochs, train_subset=subset)))]
        except UserError as exc:
            error = error or exc
    assert error is not None
    raise error


def scratch_dir(experiment: str, trial_id: str) -> Path:
    """The trial's working folder on this node, emptied first (a killed attempt may have
    left one behind; what must survive is in the Ray checkpoints)."""
    folder = Path(tempfile.gettempdir()) / "autoprune-trials" / experiment / trial_id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@dataclass
class TrialProgress:
    """Where a trial stands across rungs (``trial_state.json`` in every checkpoint)."""

    rung: int = -1
    rung_done: bool = True
    spent_flops: float = 0.0
    """Training FLOPs of the rungs run to their end."""
    epochs_done: int = 0
    """Epochs of the rungs run to their end (offset of the MLflow step)."""

    def write(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self)))


def _train_and_report(plan: list[tuple[int, Any]], out: Path, base: dict[str, Any],
                      threads: int) -> None:
    """Resume from the last Ray checkpoint (if any), train the remaining rungs, report.

    ``out`` is scratch space: what must survive goes into the checkpoints.
    """
    from ray import tune

    from autoprune.engine import TrainingDiverged, train

    progress, summary = restore_trial_dir(out, tune.get_checkpoint())
    measure_test = base["fidelity"] == "full"
    order = [index for index, _ in plan]
    if progress.rung_done and progress.rung == order[-1] and summary is not None:
        info = rung_info(plan, len(plan) - 1)
        with staged_checkpoint(rung_folder(out, progress.rung), FINAL_FILES) as checkpoint:
            tune.report(final_result(summary, base, info, progress), checkpoint=checkpoint)
        return
    position = order.index(progress.rung) if progress.rung in order else -1
    start = position + 1 if progress.rung_done else max(position, 0)
    for i in range(start, len(plan)):
        rung, config = plan[i]
        folder = rung_folder(out, rung)
        info = rung_info(plan, i)

        def on_epoch(record: dict[str, Any], out_dir: Path, info: dict = info,
                     rung: int = rung, before: TrialProgress = progress) -> None:
            state = dataclasses.replace(before, rung=rung, rung_done=False)
            state.write(out_dir)
            with staged_checkpoint(out_dir, [CHECKPOINT_FILE, STATE_FILE]) as checkpoint:
                tune.report(epoch_result(record, base, threads, info, state),
                            checkpoint=checkpoint)

        try:
            summary = train(config, folder, on_epoch=on_epoch, progress=False, resume=True,
                            measure_test=measure_test and i == len(plan) - 1)
        except TrainingDiverged as exc:
            tune.report(failed_result(base, f"TrainingDiverged: {exc}", diverged=True))
            return
        except UserError as exc:
            tune.report(failed_result(base, str(exc)))
            return
        dump_yaml(summary["config"], folder / CONFIG_FILE)
        progress = TrialProgress(rung, True, progress.spent_flops + float(summary["train_flops"]),
                                 progress.epochs_done + config.training.epochs)
        progress.write(folder)
        last = i == len(plan) - 1
        result = (final_result if last else rung_result)(summary, base, info, progress)
        with staged_checkpoint(folder, FINAL_FILES) as checkpoint:
            tune.report(result, checkpoint=checkpoint)


def rung_folder(out: Path, rung: int) -> Path:
    folder = out / f"rung{rung}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rung_info(plan: list[tuple[int, Any]], i: int) -> dict[str, Any]:
    rung, config = plan[i]
    return {"rung": rung, "rung_epochs": config.training.epochs,
            "full_epochs": plan[-1][1].training.epochs}


def use_cpu_share() -> int:
    """Set torch's thread count to the trial's CPU reservation (at least 1)."""
    import torch
    from ray import tune

    resources = tune.get_context().get_trial_resources().required_resources
    threads = max(1, int(resources.get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads


def epoch_result(record: Mapping[str, Any], base: Mapping[str, Any], threads: int,
                 info: Mapping[str, Any], progress: TrialProgress) -> dict:
    """What Ray gets after each epoch (``accuracy`` is the validation accuracy here).
    ``epoch`` counts every epoch the trial trained, over all its rungs."""
    result = {key: float(record[key]) for key in EPOCH_KEYS}
    return {**result, "latency_ms": math.nan, "epoch": progress.epochs_done + int(record["epoch"]),
            "rung_epoch": int(record["epoch"]), **info,
            "trial_train_flops": progress.spent_flops + float(record["train_flops"]),
            "is_final": False, "rung_done": False, "trial_status": "running",
            "threads": threads, **base}


def rung_result(summary: Mapping[str, Any], base: Mapping[str, Any], info: Mapping[str, Any],
                progress: TrialProgress) -> dict[str, Any]:
    """The end of a lower rung: the rung's finished network (``accuracy`` = validation);
    the TrialScheduler decides from it whether the trial goes on."""
    return {**_summary_values(summary), "epoch": progress.epochs_done, **info,
            "epochs": info["rung_epochs"], "trial_train_flops": progress.spent_flops,
            "is_final": False, "rung_done": True, "trial_status": "running", **base}


def final_result(summary: Mapping[str, Any], base: Mapping[str, Any], info: Mapping[str, Any],
                 progress: TrialProgress) -> dict[str, Any]:
    """The trial's last report: final objectives (``accuracy`` = validation accuracy,
    ``test_accuracy`` beside it at full fidelity); ``train_flops`` of the last training,
    ``trial_train_flops`` of all its rungs."""
    return {**_summary_values(summary), "epoch": progress.epochs_done, **info,
            "epochs": info["rung_epochs"], "trial_train_flops": progress.spent_flops,
            "is_final": True, "rung_done": True, "trial_status": "completed", **base}


def _summary_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """A training's summary as a result: ``accuracy`` is its validation accuracy (what the
    search chooses on); ``test_accuracy`` is there only where the test split was used."""
    values = {key: float(summary[key]) for key in (*OBJECTIVE_KEYS, *FINAL_EXTRA_KEYS)
              if summary.get(key) is not None}
    values["accuracy"] = float(summary["val_accuracy"]) if summary.get(
        "val_accuracy") is not None else math.nan
    return values


def failed_result(base: Mapping[str, Any], error: str, diverged: bool = False) -> dict[str, Any]:
    """A final report for a trial that cannot succeed (NaN loss, invalid sampled config)."""
    nan = {key: math.nan for key in OBJECTIVE_KEYS}
    return {**nan, "is_final": True, "trial_status": "failed", "failure": error[:4000],
            "diverged": diverged, **base}


@contextmanager
def staged_checkpoint(folder: Path, names: list[str]) -> Iterator[Any]:
    """A Ray checkpoint holding copies of ``names`` from ``folder``.

    ``tune.report`` persists a checkpoint to the storage path before it returns, so the
    staging copy can go when the ``with`` block ends.
    """
    from ray import tune

    staging = folder / "_staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in names:
            if name in OPTIONAL_FILES and not (folder / name).is_file():
                continue
            shutil.copy2(folder / name, staging / name)
        yield tune.Checkpoint.from_directory(str(staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_trial_dir(out: Path, checkpoint: Any) -> tuple[TrialProgress, Any]:
    """Put the trial's last Ray checkpoint back into its rung's folder under ``out`` so
    that the engine resumes from it in its pruned shape. The Ray checkpoint is the
    authority: whatever an earlier attempt left in ``out`` goes first. Returns where the
    trial stands and, when the checkpoint ends a rung, that rung's summary."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if checkpoint is None:
        return TrialProgress(), None
    with checkpoint.as_directory() as folder:
        files = [item for item in Path(folder).iterdir() if item.is_file()]
        state = next((f for f in files if f.name == STATE_FILE), None)
        progress = (TrialProgress(**json.loads(state.read_text())) if state is not None
                    else TrialProgress(rung=0, rung_done=False))
        target = rung_folder(out, progress.rung)
        for item in files:
            shutil.copy2(item, target / item.name)
    summary = target / SUMMARY_FILE
    if progress.rung_done and summary.is_file():
        return progress, json.loads(summary.read_text())
    return progress, None

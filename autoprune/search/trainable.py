"""One trial of a search, run by Ray Tune: flat config -> train config -> ``engine.train``.

Every epoch is reported to Ray with a checkpoint holding the engine's ``checkpoint.pt``,
so that a trial that fails (or a search that is resumed) continues from its last epoch in
its pruned shape. The final report carries the final objectives (``accuracy`` = test
accuracy) and a checkpoint with ``model.pt``, ``summary.json`` and the train config YAML,
which the driver logs to MLflow even when the trial ran on another node.

A trial whose loss becomes NaN, or whose sampled config is invalid, ends with a final
report marked ``trial_status="failed"`` (not an exception): retrying it would fail again.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoprune.config import dump_yaml, parse_train_config
from autoprune.errors import UserError
from autoprune.search.sampling import train_config_dict

OBJECTIVE_KEYS = ("accuracy", "macs", "params", "train_flops", "latency_ms")
"""Reported every time (NaN where not measured yet): Ray checks that each result has them."""
EPOCH_KEYS = ("accuracy", "macs", "params", "train_flops")
FINAL_EXTRA_KEYS = ("val_accuracy", "dense_macs", "dense_params", "macs_ratio", "params_ratio",
                    "dense_train_flops", "train_flops_ratio", "wall_time_s", "test_loss")
CONFIG_FILE = "train_config.yaml"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


def run_trial(config: dict[str, Any], fixed: Mapping[str, Any]) -> None:
    """Ray Tune function trainable: train one sampled schedule and report as it goes."""
    import ray
    from ray import tune

    base = {"node_id": ray.get_runtime_context().get_node_id()}
    threads = use_cpu_share()
    try:
        train_config = parse_train_config(train_config_dict(fixed, config))
    except UserError as exc:
        tune.report(failed_result(base, f"invalid config: {exc}"))
        return
    context = tune.get_context()
    scratch = scratch_dir(context.get_experiment_name(), context.get_trial_id())
    try:
        _train_and_report(train_config, scratch, base, threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def scratch_dir(experiment: str, trial_id: str) -> Path:
    """The trial's working folder on this node, emptied first (a killed attempt may have
    left one behind; what must survive is in the Ray checkpoints)."""
    folder = Path(tempfile.gettempdir()) / "autoprune-trials" / experiment / trial_id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _train_and_report(train_config: Any, out: Path, base: dict[str, Any], threads: int) -> None:
    """Resume from the last Ray checkpoint (if any), train, report the final result.

    ``out`` is scratch space: what must survive goes into the checkpoints.
    """
    from ray import tune

    from autoprune.engine import TrainingDiverged, train

    summary = restore_trial_dir(out, tune.get_checkpoint())
    if summary is None:
        def on_epoch(record: dict[str, Any], out_dir: Path) -> None:
            with staged_checkpoint(out_dir, [CHECKPOINT_FILE]) as checkpoint:
                tune.report(epoch_result(record, base, threads), checkpoint=checkpoint)

        try:
            summary = train(train_config, out, on_epoch=on_epoch, progress=False, resume=True)
        except TrainingDiverged as exc:
            tune.report(failed_result(base, f"TrainingDiverged: {exc}", diverged=True))
            return
        except UserError as exc:
            tune.report(failed_result(base, str(exc)))
            return
        dump_yaml(summary["config"], out / CONFIG_FILE)
    with staged_checkpoint(out, [MODEL_FILE, SUMMARY_FILE, CONFIG_FILE]) as checkpoint:
        tune.report(final_result(summary, base), checkpoint=checkpoint)


def use_cpu_share() -> int:
    """Set torch's thread count to the trial's CPU reservation (at least 1)."""
    import torch
    from ray import tune

    resources = tune.get_context().get_trial_resources().required_resources
    threads = max(1, int(resources.get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads


def epoch_result(record: Mapping[str, Any], base: Mapping[str, Any], threads: int) -> dict:
    """What Ray gets after each epoch (``accuracy`` is the validation accuracy here)."""
    result = {key: float(record[key]) for key in EPOCH_KEYS}
    return {**result, "latency_ms": math.nan, "epoch": int(record["epoch"]),
            "is_final": False, "trial_status": "running", "threads": threads, **base}


def final_result(summary: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's last report: final objectives (``accuracy`` = test accuracy)."""
    result = {key: float(summary[key]) for key in (*OBJECTIVE_KEYS, *FINAL_EXTRA_KEYS)
              if summary.get(key) is not None}
    return {**result, "epoch": len(summary.get("epochs", [])), "is_final": True,
            "trial_status": "completed", **base}


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
            shutil.copy2(folder / name, staging / name)
        yield tune.Checkpoint.from_directory(str(staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_trial_dir(out: Path, checkpoint: Any) -> dict[str, Any] | None:
    """Put the trial's last Ray checkpoint back into ``out`` so that the engine resumes
    from it in its pruned shape. The Ray checkpoint is the authority: whatever an earlier
    attempt left in ``out`` goes first. Returns the summary when the checkpoint is the
    final one (nothing left to train)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT_FILE, SUMMARY_FILE, MODEL_FILE, CONFIG_FILE):
        (out / name).unlink(missing_ok=True)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        for item in Path(folder).iterdir():
            if item.is_file():
                shutil.copy2(item, out / item.name)
    if (out / SUMMARY_FILE).is_file():
        return json.loads((out / SUMMARY_FILE).read_text())
    return None

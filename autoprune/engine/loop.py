"""The training loop: train from scratch while a PruningMethod reshapes the network.

Read it top to bottom: set up data, model and method; for every epoch, train (calling the
method's hooks), let the method prune or grow, measure, record, checkpoint; then the
method's final cut, the test accuracy, the latency, and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from autoprune.config import TrainConfig, parse_train_config
from autoprune.data import load_config_data
from autoprune.deploy.latency import measure_latency
from autoprune.engine.checkpoint import CHECKPOINT, load_checkpoint, restore, save_checkpoint
from autoprune.engine.context import TrainContext
from autoprune.engine.hardware import (
    apply_memory_format,
    autocast,
    hardware_summary,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from autoprune.engine.optim import build_optimizer, lr_at, set_lr
from autoprune.engine.parallel import Replicas, train_on_workers
from autoprune.engine.schedule_plot import SCHEDULE_PNG, write_schedule_png
from autoprune.errors import ConfigError, TrainingDiverged, UserError
from autoprune.methods import create_method
from autoprune.methods.support import check_method_fits
from autoprune.models import create_model
from autoprune.surgery import save_model

EpochCallback = Callable[[dict[str, Any], Path], None]


def build_model(
    config: TrainConfig, num_classes: int, in_channels: int, input_size: int | tuple[int, int]
) -> nn.Module:
    """The registry model (or the user's network, for an import reference), tagged with
    its build arguments so it can be saved as data."""
    if config.is_reference:
        from autoprune.models.user import build_user_model

        kwargs = {**dict(config.model_params), **dict(config.model_kwargs)}
        return build_user_model(config.model, kwargs, num_classes, in_channels, input_size)
    build = {
        "name": config.model, "num_classes": num_classes,
        "in_channels": in_channels, "input_size": input_size, **dict(config.model_params),
    }
    model = create_model(**build)
    model.autoprune_build = build  # type: ignore[assignment]
    return model


def train(
    config: TrainConfig,
    out_dir: str | Path,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    resume: bool = True,
    measure_test: bool = True,
) -> dict[str, Any]:
    """Run one training (with pruning) to completion and return its summary.

    Writes ``summary.json``, ``model.pt`` and, after every epoch, ``checkpoint.pt`` to
    ``out_dir``. With ``resume`` and a checkpoint there, training continues from it in
    the checkpoint's (pruned) shape. ``on_epoch(record, out_dir)`` is called after each
    epoch's checkpoint is written.

    The final network is evaluated on the validation split (``val_accuracy``: what a search
    chooses on) and, with ``measure_test``, once on the test split (``accuracy`` =
    ``test_accuracy``: what is reported). A search's proxy runs skip the test split.

    With ``training.workers`` > 1 the same loop runs data-parallel on that many Ray Train
    workers (:mod:`autoprune.engine.parallel`); files and callbacks are the same.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.training.workers > 1:
        return train_on_workers(run_training, config, out, on_epoch=on_epoch,
                                progress=progress, resume=resume, measure_test=measure_test)
    return run_training(config, out, on_epoch, progress, resume, measure_test)


def run_training(
    config: TrainConfig,
    out: Path,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    resume: bool = True,
    measure_test: bool = True,
    replicas: Replicas | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """:func:`train` on this process: the whole run, or one worker's share of it
    (``replicas``; only its main worker writes files and calls ``on_epoch``)."""
    tc = config.training
    replicas = replicas or Replicas()
    if tc.threads and replicas.world == 1:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    device = device or resolve_device(tc.device)
    ds = config.dataset
    data = load_config_data(ds, seed=tc.seed, batch_size=tc.batch_size, device=device)
    replicas.shard(data)
    model = build_model(config, data.num_classes, data.in_channels, data.input_size).to(device)
    x0, y0 = next(iter(data.train))
    ctx = TrainContext(model, (x0[:16], y0[:16]), data.train, tc.epochs, device, replicas)
    ctx.memory_format = resolve_memory_format(tc.memory_format, device)
    ctx.autocast_dtype = resolve_precision(tc.precision, device)
    ctx.compile = tc.compile
    dense = {"macs": ctx.macs, "params": ctx.params, "step_flops": ctx.cost.train}

    method_params, rescaled = config.schedule()
    method = create_method(config.method, method_params, tc.epochs)
    ctx.round_to = int(getattr(method.params, "round_to", 1))
    if method.requires:
        ctx.index()  # a network whose channels cannot be followed is refused before training
        if config.is_reference:  # the user's network: measured now, not by the registry
            check_method_fits(ctx.model, ctx.example_input, config.method, method.requires)
    method.setup(ctx)
    initial = {"macs": ctx.macs, "params": ctx.params,
               "widths": ctx.widths() if ctx.prunable else {}}  # what epoch 1 starts from
    groups = getattr(method, "param_groups", lambda m: None)(ctx.model)
    ctx.optimizer = build_optimizer(groups or [{"params": list(ctx.model.parameters())}], tc)

    history: list[dict[str, Any]] = []
    train_flops = 0.0
    start_epoch = 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        checkpoint = load_checkpoint(ckpt_path)
        _check_same_run(checkpoint["progress"].get("config"), config, ckpt_path)
        state = restore(checkpoint, ctx, method)
        start_epoch, history, train_flops = state["epoch"], state["history"], state["train_flops"]
        ctx.extra_flops = state["extra_flops"]
    apply_memory_format(ctx.model, ctx.memory_format)  # after set-up and restore
    ctx.changed = False  # set-up and restore start from fresh statistics
    replicas.sync(ctx.model, ctx.widths() if ctx.prunable else {},
                  f"resume at epoch {start_epoch}" if start_epoch else "set-up")

    wall0 = time.perf_counter() - sum(_epoch_wall(r) for r in history)
    for epoch in range(start_epoch, tc.epochs):
        ctx.epoch = epoch + 1
        set_lr(ctx.optimizer, lr_at(epoch, tc))
        data.train.set_epoch(epoch)
        t0 = time.perf_counter()
        method.on_epoch_start(ctx, ctx.epoch)
        loss_sum, seen = replicas.total(*_train_epoch(ctx, method, config, progress))
        train_flops += ctx.cost.train * seen
        t1 = time.perf_counter()
        event = method.on_epoch_end(ctx, ctx.epoch)
        _refresh_after_change(ctx, tc.bn_recalibration_batches)
        replicas.sync(ctx.model, ctx.widths() if ctx.prunable else {}, f"epoch {ctx.epoch}")
        t2 = time.perf_counter()
        accuracy, val_loss = evaluate(ctx.model, data.val if data.val.num_samples else data.test,
                                      replicas)
        record = {
            "epoch": ctx.epoch, "accuracy": accuracy, "val_loss": val_loss,
            "train_loss": loss_sum / max(seen, 1), "lr": lr_at(epoch, tc),
            "macs": ctx.macs, "params": ctx.params,
            "train_flops": train_flops + ctx.extra_flops,
            "time_s": t1 - t0, "method_time_s": t2 - t1, "eval_time_s": time.perf_counter() - t2,
            "widths": ctx.widths() if ctx.prunable else {},
            **event,
        }
        history.append(record)
        progress_state = {
            "epoch": ctx.epoch, "history": history, "train_flops": train_flops,
            "extra_flops": ctx.extra_flops, "config": json.dumps(config.to_dict()),
        }
        if replicas.is_main:  # one writer; the other workers hold the same state
            save_checkpoint(ckpt_path, ctx, method, progress_state)
            if on_epoch is not None:
                on_epoch(record, out)

    final_event = method.on_train_end(ctx)
    _refresh_after_change(ctx, tc.bn_recalibration_batches)
    replicas.sync(ctx.model, ctx.widths() if ctx.prunable else {}, "final cut")
    val_accuracy = evaluate(ctx.model, data.val, replicas)[0] if data.val.num_samples else None
    test_accuracy, test_loss = (evaluate(ctx.model, data.test, replicas) if measure_test
                                else (None, None))
    if not replicas.is_main:
        return {"status": "completed", "rank": replicas.rank}
    save_model(ctx.model, out / "model.pt", tuple(ctx.example_input.shape[1:]))
    latency = measure_latency(ctx.model, ctx.example_input, tc.latency_runtime,
                              tc.latency_batch_size)
    total_flops = train_flops + ctx.extra_flops
    dense_flops = dense["step_flops"] * data.train.num_samples * tc.epochs
    summary = {
        "status": "completed",
        "accuracy": test_accuracy, "test_accuracy": test_accuracy, "test_loss": test_loss,
        "val_accuracy": val_accuracy,
        "macs": ctx.macs, "params": ctx.params,
        "dense_macs": dense["macs"], "dense_params": dense["params"],
        "macs_ratio": ctx.macs / dense["macs"], "params_ratio": ctx.params / dense["params"],
        "train_flops": total_flops, "dense_train_flops": dense_flops,
        "train_flops_ratio": total_flops / dense_flops,
        "wall_time_s": time.perf_counter() - wall0,
        "latency_ms": latency["ms"], "latency": latency,
        "hardware": {**hardware_summary(ctx.device, ctx.autocast_dtype, ctx.memory_format,
                                        ctx.compiled_steps if ctx.compile else None),
                     **replicas.summary()},
        "widths": ctx.widths() if ctx.prunable else {},
        "final": final_event,
        "initial": initial,
        "epochs": history,
        "config": config.to_dict(),
        "schedule": {
            "schedule_epochs": tc.reference_epochs, "epochs": tc.epochs,
            "method_params": method_params,
            "rescaled": {k: {"written": a, "used": b} for k, (a, b) in rescaled.items()},
        },
        "model_file": "model.pt",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    _draw_schedule(summary, out / SCHEDULE_PNG)
    return summary


def _draw_schedule(summary: dict[str, Any], path: Path) -> None:
    """``schedule.png`` beside the summary; a picture that cannot be drawn never fails a
    finished training (the run says why, and ``summary.json`` holds the same data)."""
    try:
        write_schedule_png(summary, path)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        warnings.warn(f"schedule.png not drawn: {type(exc).__name__}: {exc}", stacklevel=2)


def _train_epoch(
    ctx: TrainContext, method: Any, config: TrainConfig, progress: bool
) -> tuple[float, int]:
    """One pass over the training data; returns (summed loss, samples seen)."""
    model, optimizer = ctx.model, ctx.optimizer
    assert optimizer is not None
    model.train()
    seen = 0
    batches = tqdm(
        ctx.train_data, desc=f"epoch {ctx.epoch}/{ctx.epochs}", leave=False,
        disable=not progress, unit="batch",
    )
    loss_sum = torch.zeros((), device=ctx.device)
    channels_last = ctx.memory_format == torch.channels_last
    for i, (x, y) in enumerate(batches):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, ctx.autocast_dtype):
            logits = ctx.forward(x)
            loss = F.cross_entropy(logits.float(), y,
                                   label_smoothing=config.training.label_smoothing)
        ctx.loss = loss
        extra = method.loss_term(ctx)
        total = loss if extra is None else loss + extra
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        method.after_backward(ctx)
        optimizer.step()
        method.after_step(ctx)
        ctx.step += 1
        loss_sum += total.detach() * x.shape[0]
        seen += x.shape[0]
        if i % 25 == 0:  # a host sync now and then: catch divergence early, show progress
            _check_finite(loss_sum, ctx)
            batches.set_postfix(loss=f"{loss.item():.3f}", macs=f"{ctx.macs / 1e6:.2f}M")
    _check_finite(loss_sum, ctx)
    return loss_sum.item(), seen


def _check_same_run(stored: str | None, config: TrainConfig, path: Path) -> None:
    """A checkpoint resumes only the run that wrote it (same config, e.g. same epochs)."""
    if stored is None:  # written before checkpoints recorded their config
        return
    now = json.loads(json.dumps(config.to_dict()))
    try:  # a checkpoint written before a new setting existed gets that setting's default
        before = json.loads(json.dumps(parse_train_config(json.loads(stored),
                                                          imports=False).to_dict()))
    except ConfigError:
        before = json.loads(stored)
    if before == now:
        return
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    detail = changed[0]
    if isinstance(before.get(detail), dict) and isinstance(now.get(detail), dict):
        keys = sorted(set(before[detail]) | set(now[detail]))
        inner = [k for k in keys if before[detail].get(k) != now[detail].get(k)]
        detail = f"{detail}.{inner[0]}: {before[detail].get(inner[0])!r} -> " \
                 f"{now[detail].get(inner[0])!r}" if inner else detail
    raise UserError(f"{path} is the checkpoint of another run ({detail}); pass --fresh to "
                    "start over, or another --out")


def _refresh_after_change(ctx: TrainContext, batches: int) -> None:
    if ctx.changed:
        ctx.recalibrate_batchnorm(batches)
        ctx.changed = False


def _epoch_wall(record: dict[str, Any]) -> float:
    return record["time_s"] + record["method_time_s"] + record["eval_time_s"]


def _check_finite(loss_sum: torch.Tensor, ctx: TrainContext) -> None:
    if not math.isfinite(loss_sum.item()):
        raise TrainingDiverged(
            f"loss became {loss_sum.item()} at epoch {ctx.epoch}, step {ctx.step}"
        )


@torch.no_grad()
def evaluate(model: nn.Module, source: Any,
             replicas: Replicas | None = None) -> tuple[float, float]:
    """Accuracy (0..1) and mean cross-entropy over a whole split (with ``replicas``: each
    worker's part, added up)."""
    model.eval()
    correct, total, loss = 0.0, 0.0, 0.0
    for x, y in source:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train()
    if replicas is not None:
        correct, total, loss = replicas.total(correct, total, loss)
    return (correct / total, loss / total) if total else (float("nan"), float("nan"))


def _json_default(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


__all__ = ["TrainingDiverged", "build_model", "evaluate", "run_training", "train"]

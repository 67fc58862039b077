"""Compute accounting: inference MACs and parameters, training FLOPs, latency.

Counting is done by existing counters: Torch-Pruning's ``count_ops_and_params`` for
inference MACs and parameters, and ``torch.utils.flop_counter.FlopCounterMode`` for the
FLOPs of a real training step (forward + backward, as autograd runs it). A training step's
FLOPs are measured once per architecture on a small batch, divided by the batch size, and
multiplied by the number of samples actually trained on; the engine re-measures after
every structural change.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class StepCost:
    """FLOPs per training sample of one architecture."""

    train: float
    """Forward + backward of one sample, as in a training step."""
    forward: float
    """Forward only (extra measurement passes some methods make)."""


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Inference multiply-accumulates of one sample, and the number of parameters."""
    macs, params = tp.utils.count_ops_and_params(model, example_input[:1])
    return int(macs), int(params)


def measure_step_cost(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> StepCost:
    """FLOPs per sample of a training step (forward + backward) and of a forward pass.

    Runs on a copy of the model so that batch-norm statistics and gradients of the real
    one are untouched. ``loss_fn(model, x, y)`` lets a method include its own terms
    (gates, regularisers) in the counted step.
    """
    probe = copy.deepcopy(model).train()
    loss_fn = loss_fn or _cross_entropy
    n = inputs.shape[0]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        probe(inputs)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(probe, inputs, targets)
        loss.backward()
    train = counter.get_total_flops()
    return StepCost(train=train / n, forward=forward / n)


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def measure_latency_ms(
    model: nn.Module, example_input: torch.Tensor, repeats: int = 30, warmup: int = 5,
    batch_size: int = 1,
) -> float:
    """Median wall time (ms) of one inference forward pass in eval mode on a batch of
    ``batch_size`` (rows of ``example_input``, repeated as needed), after ``warmup``
    passes, on torch's current thread count (the caller states it)."""
    x = batch_of(example_input, batch_size)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        ms = median_ms(lambda: model(x), repeats, warmup, x.device)
    model.train(was_training)
    return ms


def median_ms(call: Callable[[], object], repeats: int = 30, warmup: int = 5,
              device: torch.device | None = None) -> float:
    """Median wall time of ``call()`` in milliseconds: ``warmup`` calls first, then
    ``repeats`` timed ones. The one latency protocol of autoprune (objective, export)."""
    times = []
    for i in range(warmup + repeats):
        if device is not None:
            _sync(device)
        t0 = time.perf_counter()
        call()
        if device is not None:
            _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def batch_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` rows from ``x``, cycling through them when ``x`` has fewer."""
    if len(x) >= size:
        return x[:size].contiguous()
    reps = -(-size // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:size].contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

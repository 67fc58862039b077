"""The ``latency_ms`` objective: one protocol, in PyTorch or in onnxruntime.

Eval mode, ``WARMUP`` untimed runs, then the median of ``REPEATS`` timed runs at
``batch_size`` on torch's current thread count (a trial's CPU share); onnxruntime gets
the same number of intra-op threads. ``summary.json`` states all of it under ``latency``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from autoprune.compute import batch_of, measure_latency_ms

REPEATS, WARMUP = 30, 5
Runtime = Literal["torch", "onnx"]


def measure_latency(model: nn.Module, example: torch.Tensor, runtime: Runtime = "torch",
                    batch_size: int = 1) -> dict[str, Any]:
    """``{"ms", "runtime", "batch_size", "threads", "repeats", "warmup"}`` of ``model``."""
    threads = torch.get_num_threads()
    if runtime == "torch":
        ms = measure_latency_ms(model, example, REPEATS, WARMUP, batch_size=batch_size)
    else:  # onnxruntime on CPU: export a CPU copy (the model may live on a GPU)
        from autoprune.deploy.onnx_export import onnx_latency_ms, session, to_onnx

        x = batch_of(example.detach().cpu(), batch_size)
        with tempfile.TemporaryDirectory(prefix="autoprune-latency-") as folder:
            path = to_onnx(copy.deepcopy(model).cpu(), x, Path(folder) / "model.onnx")
            ms = onnx_latency_ms(session(path, threads), x, REPEATS, WARMUP)
    return {"ms": ms, "runtime": runtime, "batch_size": batch_size, "threads": threads,
            "repeats": REPEATS, "warmup": WARMUP}

"""ONNX export of a pruned (or grown) network, checked with onnxruntime.

The network is exported with PyTorch's ``torch.export``-based exporter (the default since
PyTorch 2.9) with a dynamic batch dimension: input ``input`` (N, C, H, W), output
``logits`` (N, classes). A network that cannot be exported is refused with the name of
the deepest layer that fails on its own (found by exporting the failing module's children
one by one, with the inputs they saw in an eager forward pass).
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.compute import batch_of, median_ms
from autoprune.errors import UserError
from autoprune.surgery.trace import trace_calls

INPUT, OUTPUT = "input", "logits"
PARITY_TOL = 1e-4
"""Outputs of onnxruntime and PyTorch must agree within ``atol = rtol = 1e-4``."""


class ExportError(UserError):
    """The network (or one of its layers) cannot be exported to ONNX."""


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path`` with a dynamic batch size.

    ``example``: a batch of at least 2 inputs (a batch of 1 would fix the dimension).
    ExportError naming the failing layer when the exporter refuses the network.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = batch_of(example, max(2, len(example)))  # a batch of 1 would fix the dim
    try:
        _export(model, example, path)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        layer = failing_layer(model, example)
        where = f"layer {layer!r} ({type(model.get_submodule(layer)).__name__})" if layer else \
            "the network"
        raise ExportError(f"cannot export {where} to ONNX: {_first_line(exc)}") from None
    return path


def _export(module: nn.Module, args: tuple[Any, ...] | torch.Tensor, path: Path) -> None:
    args = args if isinstance(args, tuple) else (args,)
    dims = tuple({0: torch.export.Dim("batch", min=1, max=1 << 16)}
                 if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    with _quiet():
        torch.onnx.export(module, args, str(path), dynamo=True, verbose=False, report=False,
                          dynamic_shapes=dims, input_names=[INPUT], output_names=[OUTPUT],
                          optimize=True)


@contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, log lines or printed graphs from the exporter: errors are ours."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def failing_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The qualified name of the deepest module whose own export fails ('' when every
    child exports on its own, i.e. the failure is in how the network joins them)."""
    seen = _module_inputs(model, example)

    def fails(name: str) -> bool:
        args = seen.get(name)
        if args is None:
            return False
        with tempfile.TemporaryDirectory(prefix="autoprune-probe-") as folder:
            try:
                _export(model.get_submodule(name), args, Path(folder) / "probe.onnx")
            except Exception:  # noqa: BLE001
                return True
        return False

    return _deepest(model, "", fails)


def _deepest(model: nn.Module, name: str, fails: Callable[[str], bool]) -> str:
    module = model.get_submodule(name) if name else model
    for child, _ in module.named_children():
        full = f"{name}.{child}" if name else child
        if fails(full):
            return _deepest(model, full, fails)
    return name


def _module_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[Any, ...]]:
    """Each submodule's positional inputs during one eager forward pass (first call)."""
    seen: dict[str, tuple[Any, ...]] = {}
    # a network that fails eagerly: we keep what was seen up to the failing layer
    for call in trace_calls(model, example, before=True, eval_mode=False, tolerate_errors=True):
        if call.name not in seen and all(isinstance(a, torch.Tensor) for a in call.inputs):
            seen[call.name] = tuple(a.detach() for a in call.inputs)
    return seen


def session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on ``path`` using ``threads`` intra-op threads (default:
    torch's current thread count, so both runtimes are timed on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess: Any, x: torch.Tensor) -> np.ndarray:
    return sess.run([OUTPUT], {INPUT: x.detach().cpu().numpy().astype(np.float32)})[0]


def parity(model: nn.Module, sess: Any, x: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on ``x``;
    ExportError when they differ by more than ``PARITY_TOL`` (absolute and relative)."""
    with torch.inference_mode():
        expected = model.eval()(x).detach().cpu().numpy()
    got = run_session(sess, x)
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=PARITY_TOL,
                                                      atol=PARITY_TOL):
        raise ExportError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} "
                          f"(more than {PARITY_TOL:g}) on a batch of {len(x)}")
    return diff


def onnx_latency_ms(sess: Any, x: torch.Tensor, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one onnxruntime run on ``x`` (same protocol as PyTorch's)."""
    feed = {INPUT: x.detach().cpu().numpy().astype(np.float32)}
    return median_ms(lambda: sess.run([OUTPUT], feed), repeats, warmup)


def _first_line(exc: BaseException) -> str:
    """The root cause's first line (the exporter wraps it in a generic message)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


__all__ = ["ExportError", "failing_layer", "onnx_latency_ms", "parity", "session", "to_onnx"]

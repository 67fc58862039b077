"""Where and how a training runs: device, mixed precision, memory format.

- ``device``: ``auto`` (CUDA if there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
- ``precision``: ``auto`` trains in bfloat16 autocast where the hardware multiplies
  bfloat16 matrices natively: a CUDA device that supports it, or a CPU with AMX tiles
  (Intel Sapphire Rapids and later, where a ResNet-20 training step takes 0.6 of its
  float32 time); float32 elsewhere (on CPUs without AMX, autocast costs more than it
  saves). ``bf16`` and ``fp32`` force it. bfloat16 has float32's range, so there is no
  loss scaling and every method sees true gradients. Weights, optimiser state, evaluation
  and every count stay float32: FLOPs and latency are accounted as before.
- ``memory_format``: ``auto`` is ``channels_last`` on CUDA (tensor-core convolutions) and
  ``contiguous`` on CPU; re-applied after every surgery, since new tensors come back
  contiguous.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from autoprune.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"training.device is {name!r} but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"training.device {name!r} is not a device: use auto, cpu, cuda or "
                        "cuda:N") from exc


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training steps (None: float32, no autocast)."""
    if name == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if name == "bf16":
            raise UserError("training.precision is 'bf16' but this GPU does not support "
                            "bfloat16; use fp32")
        return None
    native = device.type == "cpu" and cpu_has_amx()
    return torch.bfloat16 if name == "bf16" or native else None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bfloat16 matrix units), as PyTorch detects them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def hardware_summary(device: torch.device, dtype: torch.dtype | None,
                     fmt: torch.memory_format, compiled_steps: int | None) -> dict[str, object]:
    """What a run resolved its hardware settings to (``summary.json``: ``hardware``);
    ``compiled_steps``: None without ``training.compile``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "name": name, "precision": precision_name(dtype),
            "memory_format": "channels_last" if fmt == torch.channels_last else "contiguous",
            "threads": torch.get_num_threads(), "compiled_steps": compiled_steps}


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16`` or ``fp32``: the name of an autocast dtype (None: no autocast)."""
    return "fp32" if dtype is None else "bf16"


def resolve_memory_format(name: str, device: torch.device) -> torch.memory_format:
    if name == "channels_last" or (name == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def apply_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """Lay out every 4-d parameter in ``fmt`` in place (parameters keep their identity, so
    the optimiser keeps them)."""
    if fmt == torch.contiguous_format:
        return
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=fmt):
            p.data = p.data.contiguous(memory_format=fmt)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


__all__ = ["apply_memory_format", "autocast", "cpu_has_amx", "hardware_summary",
           "precision_name", "resolve_device", "resolve_memory_format", "resolve_precision"]

"""Per-epoch checkpoints that carry the current (pruned or grown) architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autoprune.engine.optim import load_optimizer_state_by_name, optimizer_state_by_name
from autoprune.errors import UserError
from autoprune.surgery import architecture_spec, atomic_save
from autoprune.surgery.serialize import apply_spec

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, ctx: Any, method: Any, progress: dict[str, Any]) -> None:
    """Everything needed to continue: shape, weights, optimiser, method state, progress."""
    atomic_save(
        {
            "spec": architecture_spec(ctx.model),
            "model": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
            "optimizer": optimizer_state_by_name(ctx.optimizer, ctx.model),
            "method": method.state_dict(),
            "progress": progress,
            "rng": torch.get_rng_state(),
        },
        path,
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}") from exc


def restore(ckpt: dict[str, Any], ctx: Any, method: Any) -> dict[str, Any]:
    """Reshape ``ctx.model`` to the checkpoint's architecture and reload all state."""
    apply_spec(ctx.model, ckpt["spec"], ckpt["model"])
    ctx.model.load_state_dict(ckpt["model"], strict=True)
    ctx.model.to(ctx.device)
    load_optimizer_state_by_name(ctx.optimizer, ctx.model, _to(ckpt["optimizer"], ctx.device))
    method.load_state_dict(ckpt["method"])
    torch.set_rng_state(ckpt["rng"])
    ctx.structure_changed()
    return ckpt["progress"]


def _to(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device) if obj.dim() > 0 else obj
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj

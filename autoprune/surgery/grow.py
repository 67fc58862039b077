"""Physical growth of channel groups: the inverse of removal, with the function preserved.

Growth splits channels, as in Net2WiderNet (Chen et al., 2016, "Net2Net") and in CGaP's
"reinforcement of important filters": every source channel listed in a plan gets a copy
appended at the end of its dependency group (the same Torch-Pruning group that removal
uses), so every layer coupled to the channel widens together:

- **output side** (conv/linear output rows with bias, batch-norm entries with running
  statistics, depthwise convs, which widen in, out and ``groups`` at once): the copy is
  an exact duplicate of its source, so it computes exactly the source's activation;
- **input side** (conv/linear input columns of every consumer): the source's column is
  duplicated and the original and its copies divide it between them (each gets
  ``w / m`` for a source split into ``m`` channels), so consumers receive the same sum.

The network therefore computes the same function right after growth, in train and eval
mode alike (batch statistics of a copy equal its source's). Copies that stayed exact
would also stay identical under training (same gradients), so symmetry is broken with
*zero-sum noise on the input-side shares*: the ``m`` shares of a source's column get
noise ``e_1..e_m`` (relative to their magnitude, scale ``noise``) minus its mean, so they
sum to ``w`` exactly and the outputs are unchanged up to float rounding, while the copies
receive different gradients from then on. Output-side noise (on the copy's filter) would
change the function through batch norm and ReLU, so none is added there.

Optimiser state: existing elements keep theirs (the halved columns too), new elements
start from zero (:class:`ParamRemap` with ``-1`` sources).

What cannot be grown raises :class:`NotGrowableError` (a :class:`SurgeryError` and a user
error) naming the layer: channels feeding a concatenation, split, slice, expand or the
network output, a flatten of a spatial map larger than 1x1 into a linear layer (or another
reshape), grouped (non-depthwise) convolutions, and layers other than Conv2d, Linear and
batch norm (LayerNorm, GroupNorm, PReLU, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch_pruning import ops

from autoprune.errors import UserError
from autoprune.surgery.graph import DependencyIndex
from autoprune.surgery.optimizer_state import ParamRemap
from autoprune.surgery.remove import SurgeryError

Role = Literal["out", "in", "norm", "depthwise"]

_PASS_THROUGH = (ops._ElementWiseOp, ops._ReshapeOp)
_BLOCKERS: dict[type, str] = {
    ops._ConcatOp: "a concatenation",
    ops._SplitOp: "a split",
    ops._UnbindOp: "an unbind",
    ops._SliceOp: "a slice",
    ops._ExpandOp: "an expand",
    ops._OutputOp: "the network's output",
    ops._CustomizedOp: "a custom operation",
}


class NotGrowableError(SurgeryError, UserError):
    """The architecture cannot be grown: a SurgeryError, and a user error (one line, exit
    code 2 on the command line) since it comes from the choice of model and method."""


@dataclass(frozen=True)
class GrowthEdit:
    """One layer to widen for a group: its name, the module, and which side of it grows."""

    name: str
    module: nn.Module
    role: Role


def growth_edits(model: nn.Module, index: DependencyIndex, key: str) -> list[GrowthEdit]:
    """The layers that widen when group ``key`` grows; SurgeryError if it cannot grow.

    Touches nothing, so it doubles as the up-front growability check.
    """
    if key not in index.groups:
        raise SurgeryError(f"no prunable channel group named {key!r}")
    group = index.groups[key]
    names = {m: n for n, m in model.named_modules()}
    edits: dict[tuple[str, Role], GrowthEdit] = {}
    for dep, idxs in group.group:
        module = dep.target.module
        if module not in names:
            _check_op(module, key)
            continue
        name = names[module]
        role = _role(module, name, index.graph.is_out_channel_pruning_fn(dep.handler), key)
        _check_size(module, name, role, _identity(idxs, group.width), group.width, key)
        edits.setdefault((name, role), GrowthEdit(name, module, role))
    if not any(e.role == "in" for e in edits.values()):
        raise NotGrowableError(
            f"cannot grow channel group {key!r}: no convolution or linear layer consumes it, "
            "so a split channel could not share its outgoing weights"
        )
    return list(edits.values())


def check_growable(model: nn.Module, index: DependencyIndex) -> None:
    """Raise SurgeryError (naming the layer and why) unless every group can grow."""
    for key in index.groups:
        growth_edits(model, index, key)


def _check_op(op: nn.Module, key: str) -> None:
    if isinstance(op, _PASS_THROUGH):
        return
    what = next((v for k, v in _BLOCKERS.items() if isinstance(op, k)), type(op).__name__)
    raise NotGrowableError(
        f"cannot grow the channels of layer {key!r}: they feed {what} "
        f"({type(op).__name__.lstrip('_')}); growth "
        "handles Conv2d, Linear and batch-norm layers joined by element-wise operations"
    )


def _role(module: nn.Module, name: str, is_out: bool, key: str) -> Role:
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "out" if is_out else "in"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        why = f"it is a grouped convolution (groups={module.groups})"
    elif isinstance(module, nn.Linear):
        return "out" if is_out else "in"
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm"
    else:
        why = f"{type(module).__name__} layers are not supported"
    raise NotGrowableError(f"cannot grow channel group {key!r} through layer {name!r}: {why}")


def _channels(module: nn.Module, role: Role) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features if role == "in" else module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels if role == "in" else module.out_channels
    return int(module.num_features)  # type: ignore[arg-type]


def _identity(idxs: Sequence[object], width: int) -> bool:
    """Whether a layer sees the group's channels as its own channels 0..width-1, in order
    (not offset by a concatenation, permuted by a shuffle or spread by a flatten)."""
    return [int(getattr(i, "idx", i)) for i in idxs] == list(range(width))  # type: ignore[call-overload]


def _check_size(
    module: nn.Module, name: str, role: Role, identity: bool, width: int, key: str
) -> None:
    channels = _channels(module, role)
    if channels != width or not identity:
        side = "input" if role == "in" else "output"
        raise NotGrowableError(
            f"cannot grow channel group {key!r}: layer {name!r} does not see its {width} "
            f"channels as its own {channels} {side} channels in order (a flatten of a "
            "spatial map larger than 1x1, a reshape or a shuffle lies between them)"
        )


def grow_channels(
    model: nn.Module,
    index: DependencyIndex,
    plan: Mapping[str, Sequence[int]],
    optimizer: torch.optim.Optimizer | None = None,
    noise: float = 0.0,
) -> int:
    """Split channels: ``plan`` maps a group key to source channel indices, each of which
    gets one copy appended (a source listed twice gets two). Returns the channels added.

    Every group is checked before anything changes. ``noise`` is the relative scale of the
    zero-sum noise on the consumers' shares (see the module docstring); it uses torch's
    global RNG, which checkpoints restore.
    """
    plan = {k: [int(i) for i in v] for k, v in plan.items() if len(v)}
    if not plan:
        return 0
    edits = {key: growth_edits(model, index, key) for key in plan}
    for key, sources in plan.items():
        width = index.groups[key].width
        if min(sources) < 0 or max(sources) >= width:
            raise SurgeryError(f"source channels of group {key!r} must be in [0, {width})")
    remap = ParamRemap(model)
    tags: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, sources in plan.items():
            width = index.groups[key].width
            src = torch.tensor([*range(width), *sources], dtype=torch.long)
            for edit in edits[key]:
                _apply(edit, src, width, tags, noise)
    remap.sources.update({name: tag.reshape(-1) for name, tag in tags.items()})
    remap.rebind(optimizer)
    return sum(len(v) for v in plan.values())


def _apply(
    edit: GrowthEdit, src: torch.Tensor, width: int, tags: dict[str, torch.Tensor], noise: float
) -> None:
    if edit.role == "in":
        weight = _widen(edit.module, "weight", 1, src, width, tags, edit.name)
        _share_columns(weight, src, width, noise)
    else:
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _widen(edit.module, attr, 0, src, width, tags, edit.name)
    _set_width(edit.module, edit.role, len(src))


def _set_width(m: nn.Module, role: Role, n: int) -> None:
    """Update the shape attributes the model file records (see ``surgery/serialize.py``)."""
    if isinstance(m, nn.Linear):
        if role == "in":
            m.in_features = n
        else:
            m.out_features = n
    elif isinstance(m, nn.Conv2d):
        if role in ("in", "depthwise"):
            m.in_channels = n
        if role != "in":
            m.out_channels = n
        if role == "depthwise":
            m.groups = n
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = n


def _widen(
    module: nn.Module, attr: str, dim: int, src: torch.Tensor, width: int,
    tags: dict[str, torch.Tensor], name: str,
) -> torch.Tensor | None:
    """Replace ``module.attr`` by its entries ``src`` along ``dim``; record the sources."""
    old = getattr(module, attr, None)
    if old is None:
        return None
    index = src.to(old.device)
    new = old.detach().index_select(dim, index)
    if not isinstance(old, nn.Parameter):
        setattr(module, attr, new)  # a buffer (batch-norm running statistics)
        return new
    pname = f"{name}.{attr}" if name else attr
    tag = tags.get(pname)
    if tag is None:
        tag = torch.arange(old.numel(), device=old.device).view_as(old)
    tag = tag.index_select(dim, index)
    tag.narrow(dim, width, len(src) - width).fill_(-1)
    tags[pname] = tag
    param = nn.Parameter(new, requires_grad=old.requires_grad)
    setattr(module, attr, param)
    return param.data


def _share_columns(
    weight: torch.Tensor | None, src: torch.Tensor, width: int, noise: float
) -> None:
    """Divide each source column among its copies; add noise that sums to zero over them."""
    assert weight is not None
    index = src.to(weight.device)
    mult = torch.bincount(index, minlength=width).to(weight.dtype)
    shape = [1] * weight.dim()
    shape[1] = -1
    weight.div_(mult[index].view(shape))
    if noise <= 0:
        return
    eps = noise * weight.abs() * torch.randn_like(weight)
    per_source = torch.zeros_like(weight.narrow(1, 0, width)).index_add_(1, index, eps)
    weight.add_(eps - (per_source / mult.view(shape)).index_select(1, index))


__all__ = ["GrowthEdit", "NotGrowableError", "check_growable", "grow_channels", "growth_edits"]

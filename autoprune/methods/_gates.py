"""Gates attached to a network during training: a small module holding their parameters,
forward hooks that apply them, and their upkeep across surgery, checkpoints and resume.

Used by ``variational`` (Bernoulli gates on channels and residual branches) and ``hfp``
(explicit scaling factors on channel groups that have no batch norm).

- :class:`GateBank` is attached to the model as ``model.autoprune_gates``, so its parameters
  are in ``model.parameters()``, in the optimiser and in every checkpoint. An entry is named
  ``<kind>__<structure>`` (dots of the structure's module name written ``__``). Sizes are
  never stored: they are the tensors' shapes, and on ``load_state_dict`` the bank adopts
  exactly the entries the state dict holds, so a checkpoint of a pruned run loads into the
  freshly built dense model the engine sets up on resume.
- Hooks are ``functools.partial`` objects over the bank, so a ``deepcopy`` of the model
  (compute accounting makes one) carries working gates that point at the copy's bank.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from autoprune.surgery import ChannelGroup, ParamRemap

GATES_ATTR = "autoprune_gates"
GATE_GROUP = "autoprune_gates"
"""Marker key of the optimiser param group that holds gate parameters."""
B = TypeVar("B", bound="GateBank")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def entry_name(kind: str, key: str) -> str:
    if "__" in key or "__" in kind:
        raise ValueError(f"cannot name a gate for {key!r}: '__' is reserved")
    return f"{kind}__{key.replace('.', '__')}"


def split_name(name: str) -> tuple[str, str]:
    kind, _, rest = name.partition("__")
    return kind, rest.replace("__", ".")


class GateBank(nn.Module):
    """Gate parameters (and per-gate buffers) keyed by (kind, structure name).

    ``BUFFER_KINDS`` are stored as buffers; every other kind is an ``nn.Parameter``.
    Subclasses define :meth:`gate`, the multiplier a hook applies.
    """

    BUFFER_KINDS: frozenset[str] = frozenset()

    def get(self, kind: str, key: str) -> torch.Tensor | None:
        name = entry_name(kind, key)
        return self._parameters.get(name, self._buffers.get(name))

    def keys(self, kind: str) -> list[str]:
        names = [*self._parameters, *self._buffers]
        return [k for n in names for kd, k in [split_name(n)] if kd == kind]

    def items(self, kind: str) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys(kind):
            value = self.get(kind, key)
            assert value is not None
            yield key, value

    def put(self, kind: str, key: str, value: torch.Tensor) -> None:
        name = entry_name(kind, key)
        if kind in self.BUFFER_KINDS:
            self.register_buffer(name, value.detach())
        else:
            self.register_parameter(name, value if isinstance(value, nn.Parameter)
                                    else nn.Parameter(value.detach().clone()))

    def drop(self, kind: str, key: str) -> None:
        name = entry_name(kind, key)
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)

    def forward(self, x: Any) -> Any:
        """The identity: the bank only holds gates (and this keeps an ``nn.Sequential``
        root, which calls every child in turn, working)."""
        return x

    def gate(self, kind: str, key: str) -> torch.Tensor | None:
        """The multiplier for structure ``key`` in this forward pass (None: leave as is)."""
        return None

    def new_forward(self) -> None:
        """Called before every forward pass of the model (e.g. to draw new samples)."""

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        incoming = {
            k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix) and "." not in k[len(prefix):]
        }
        for name in [*self._parameters, *self._buffers]:
            if name not in incoming:
                self._parameters.pop(name, None)
                self._buffers.pop(name, None)
        for name, value in incoming.items():
            if name not in self._parameters and name not in self._buffers:
                kind, key = split_name(name)
                self.put(kind, key, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _gate_hook(bank: GateBank, kind: str, key: str, _m: nn.Module, _i: Any, out: Any) -> Any:
    z = bank.gate(kind, key)
    if z is None or not torch.is_tensor(out):
        return out
    return out * z.view(1, -1, *([1] * (out.dim() - 2)))


def _pre_forward(bank: GateBank, _m: nn.Module, _i: Any) -> None:
    bank.new_forward()


class GateHooks:
    """The forward hooks that apply a bank's gates; removable all at once."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def attach(
        self, model: nn.Module, bank: GateBank, targets: Iterable[tuple[str, str, str]]
    ) -> None:
        """``targets``: (module name, kind, key): gate (kind, key) multiplies that output."""
        self.remove()
        modules = dict(model.named_modules())
        self.handles.append(model.register_forward_pre_hook(functools.partial(_pre_forward, bank)))
        for name, kind, key in targets:
            hook = functools.partial(_gate_hook, bank, kind, key)
            self.handles.append(modules[name].register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def attach_bank(model: nn.Module, bank: B) -> B:
    device = next(model.parameters()).device
    setattr(model, GATES_ATTR, bank.to(device))
    return bank


def detach_bank(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Take the bank out of the model (and its parameters out of the optimiser)."""
    if hasattr(model, GATES_ATTR):
        remap = ParamRemap(model)
        delattr(model, GATES_ATTR)
        remap.rebind(optimizer)


def gated_modules(model: nn.Module, group: ChannelGroup) -> list[str]:
    """Where a channel group's gate acts: on its norms' outputs, else on its layers' outputs."""
    named = dict(model.named_modules())
    norms = [n for n in group.out_modules if isinstance(named[n], _NORMS)]
    return norms or [
        n for n in group.out_modules if isinstance(named[n], (nn.Conv2d, nn.Linear))
    ]


def resize_entries(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, bank: GateBank,
    keep: Mapping[tuple[str, str], torch.Tensor],
) -> None:
    """Keep elements ``keep[(kind, key)]`` of each entry; optimiser state follows them."""
    remap = ParamRemap(model)
    prefix = _prefix(model, bank)
    for (kind, key), idx in keep.items():
        old = bank.get(kind, key)
        if old is None:
            continue
        idx = idx.to(old.device)
        bank.put(kind, key, old.detach()[idx].clone())
        remap.sources[prefix + entry_name(kind, key)] = idx
    remap.rebind(optimizer)


def drop_entries(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, bank: GateBank,
    entries: Iterable[tuple[str, str]],
) -> None:
    remap = ParamRemap(model)
    for kind, key in entries:
        bank.drop(kind, key)
    remap.rebind(optimizer)


def ensure_in_optimizer(optimizer: torch.optim.Optimizer | None, bank: GateBank) -> None:
    """Put any bank parameter the optimiser lost track of back into the gates' group."""
    if optimizer is None:
        return
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    groups = [g for g in optimizer.param_groups if g.get(GATE_GROUP)] or optimizer.param_groups
    for p in bank.parameters():
        if id(p) not in known:
            groups[0]["params"].append(p)


def split_param_groups(
    model: nn.Module, bank: GateBank, **gate_options: Any
) -> list[dict[str, Any]]:
    """Optimiser param groups: the network's parameters, then the gates' (own options)."""
    gate_ids = {id(p) for p in bank.parameters()}
    rest = [p for p in model.parameters() if id(p) not in gate_ids]
    return [
        {"params": rest},
        {"params": list(bank.parameters()), GATE_GROUP: True, **gate_options},
    ]


def _prefix(model: nn.Module, bank: GateBank) -> str:
    for name, module in model.named_modules():
        if module is bank:
            return f"{name}." if name else ""
    raise ValueError("the gate bank is not attached to the model")

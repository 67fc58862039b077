"""Channel groups of a network, found on Torch-Pruning's dependency graph.

A *channel group* is the set of layers whose channels must be removed together: a
convolution's output channels, the batch norm that follows, the input channels of every
consumer, and, across residual additions, all the layers summed into the same tensor.
Each group is keyed by the name of its root module (the first layer of the group in
tracing order), which is stable across surgery because modules are edited in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError
from autoprune.surgery.trace import trace_calls

ROOT_TYPES = (nn.Conv2d, nn.Linear)


class UnprunableModelError(UserError):
    """Torch-Pruning cannot follow the network's channels (e.g. a channel shuffle): the
    model trains dense but no method may change its structure. A user error (one line,
    exit code 2): it comes from the choice of model and method."""


@dataclass
class ChannelGroup:
    """One prunable dependency group of the current network."""

    key: str
    """Name of the root module; stable across surgery."""
    width: int
    """Current number of channels of the group."""
    group: tp.dependency.Group
    """The Torch-Pruning group with full indices (for importance estimation)."""
    out_modules: list[str]
    """Names of the modules whose output channels belong to the group (convs, norms, linears)."""
    slots: int = 1
    """Number of equal blocks the channels fall into because grouped convolutions use them
    (the least common multiple of their ``groups``); 1 when no grouped convolution does."""
    aligned: bool = False
    """Whether a grouped convolution *consumes* the channels: then the same positions must
    go from every block (its weight holds ``in_channels / groups`` columns shared by
    position); otherwise (a grouped convolution *produces* them) only the same number."""

    def modules_of_type(
        self, model: nn.Module, kind: type | tuple[type, ...]
    ) -> list[nn.Module]:
        """The group's output-side modules of one type (e.g. the ``nn.BatchNorm2d`` ones)."""
        named = dict(model.named_modules())
        return [named[n] for n in self.out_modules if isinstance(named[n], kind)]


def find_classifier(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The layer that produces the logits: the last Conv/Linear run in a forward pass."""
    layers = (nn.Conv2d, nn.Linear)
    executed = trace_calls(model, example_input[:1], lambda _n, m: isinstance(m, layers))
    if not executed:
        raise ValueError("the model has no Conv2d or Linear layer")
    return executed[-1].module


class DependencyIndex:
    """The dependency graph of a model at one moment, and its prunable channel groups.

    Rebuild it (construct a new one) after every structural change: Torch-Pruning's
    graph describes the shapes it traced.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        ignored: list[nn.Module] | None = None,
    ) -> None:
        self.model = model
        self.example_input = example_input[:1]
        self.classifier = find_classifier(model, self.example_input)
        self.ignored = [self.classifier, *(ignored or [])]
        was_training = model.training
        model.eval()
        try:
            self.graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=self.example_input, verbose=False
            )
        except Exception as error:  # Torch-Pruning fails in many ways on what it cannot trace
            raise UnprunableModelError(
                _untraceable_message(model, self.example_input, error)
            ) from None
        finally:
            model.train(was_training)
        self._names = {m: n for n, m in model.named_modules()}
        self.groups: dict[str, ChannelGroup] = {g.key: g for g in self._collect()}

    def _collect(self) -> Iterator[ChannelGroup]:
        for group in self.graph.get_all_groups(
            ignored_layers=self.ignored, root_module_types=ROOT_TYPES
        ):
            out_modules = []
            for dep, _ in group:
                module = dep.target.module
                if self.graph.is_out_channel_pruning_fn(dep.handler) and module in self._names:
                    name = self._names[module]
                    if name not in out_modules:
                        out_modules.append(name)
            root = group[0].dep.target.module
            width = len(group[0].idxs)
            slots, aligned = _grouped_conv_constraint(
                group, width, self.graph.is_out_channel_pruning_fn
            )
            yield ChannelGroup(self._names[root], width, group, out_modules, slots, aligned)

    def pruning_group(self, key: str, idxs: list[int]) -> tp.dependency.Group:
        """The Torch-Pruning group that removes channels ``idxs`` of group ``key``."""
        root = self.groups[key].group[0].dep
        return self.graph.get_pruning_group(root.target.module, root.handler, idxs)

    def conform(self, key: str, idxs: Sequence[int]) -> list[int]:
        """The channels to remove from group ``key`` for a request of ``idxs``.

        Unconstrained groups get ``idxs`` back. A group split into ``slots`` blocks by grouped
        convolutions loses the same number of channels from every block (the request's
        count divided by ``slots``, rounded; at least one channel stays per block). Which
        ones: the requested channels first, then the ones of least L1 norm in the root
        layer; for an ``aligned`` group the same positions in every block, chosen by how
        many blocks asked for each position, ties by least summed L1 norm.
        """
        group = self.groups[key]
        if group.slots == 1:
            return sorted(set(int(i) for i in idxs))
        per = group.width // group.slots
        requested = set(int(i) for i in idxs)
        k = min(per - 1, round(len(requested) / group.slots))
        if k <= 0:
            return []
        root = group.group[0].dep.target.module
        norm = root.weight.detach().abs().flatten(1).sum(1).double().cpu()
        blocks = norm[: per * group.slots].view(group.slots, per)
        asked = torch.zeros(group.slots, per)
        for i in requested:
            asked.view(-1)[i] = 1.0
        if group.aligned:
            # rank positions by votes (descending), then by summed norm (ascending)
            votes, cost = asked.sum(0), blocks.sum(0)
            order = sorted(range(per), key=lambda p: (-float(votes[p]), float(cost[p])))
            chosen = sorted(order[:k])
            return [b * per + p for b in range(group.slots) for p in chosen]
        out: list[int] = []
        for b in range(group.slots):
            order = sorted(range(per), key=lambda p: (-float(asked[b, p]), float(blocks[b, p])))
            out.extend(b * per + p for p in order[:k])
        return sorted(out)


    def round_plan(self, plan: Mapping[str, Sequence[int]], multiple: int
                   ) -> dict[str, list[int]]:
        """``plan`` with each pruned group's kept width rounded *up* to a multiple of
        ``multiple`` (``round_to``): fewer channels go, never more. The channels spared are
        the requested ones of largest L1 norm in the group's root layer. A group whose
        full width is within one multiple is left whole. ``multiple`` 1: ``plan`` as is."""
        if multiple <= 1:
            return {k: list(v) for k, v in plan.items()}
        out: dict[str, list[int]] = {}
        for key, idxs in plan.items():
            width = self.groups[key].width
            requested = sorted(set(int(i) for i in idxs))
            keep = width - len(requested)
            n = width - min(width, -(-keep // multiple) * multiple)
            if n <= 0:
                continue
            root = self.groups[key].group[0].dep.target.module
            norm = root.weight.detach().abs().flatten(1).sum(1).double().cpu()
            out[key] = sorted(sorted(requested, key=lambda i: float(norm[i]))[:n])
        return out


def _grouped_conv_constraint(
    group: tp.dependency.Group, width: int, is_out: Callable[[object], bool]
) -> tuple[int, bool]:
    """``(slots, aligned)`` of a group: see :class:`ChannelGroup`."""
    slots, aligned = 1, False
    for dep, _idxs in group:
        module = dep.target.module
        if not isinstance(module, nn.Conv2d) or module.groups == 1:
            continue
        if module.groups == module.out_channels:  # depthwise: Torch-Pruning prunes it whole
            continue
        slots = math.lcm(slots, module.groups)
        aligned = aligned or not is_out(dep.handler)
    if width % slots:
        slots = width  # cannot happen for shapes PyTorch accepts; keep every block of one
    return slots, aligned


def _untraceable_message(model: nn.Module, example: torch.Tensor, error: Exception) -> str:
    """One line naming the deepest layer whose channels Torch-Pruning cannot follow."""
    name, module = _deepest_failing(model, example, type(error))
    where = f"layer {name!r} ({type(module).__name__})" if name else type(model).__name__
    return (
        f"the channels of {where} cannot be followed for pruning (Torch-Pruning: "
        f"{type(error).__name__}: {str(error).strip() or 'no message'}), e.g. a channel "
        "shuffle or a reshape across channels; train it with method 'dense' or pick another model"
    )


def _deepest_failing(
    model: nn.Module, example: torch.Tensor, kind: type[Exception]
) -> tuple[str, nn.Module]:
    """Descend from the model into the first child whose own trace fails the same way."""
    inputs: dict[nn.Module, tuple[object, ...]] = {}
    try:
        calls = trace_calls(model, example, lambda _n, _m: True, before=True, eval_mode=False)
    except Exception:  # the forward itself may fail; then only the model can be named
        return "", model
    for call in calls:
        inputs.setdefault(call.module, call.inputs)

    def fails(module: nn.Module) -> bool:
        args = inputs.get(module)
        if not args or not all(isinstance(a, torch.Tensor) for a in args):
            return False
        try:
            tp.DependencyGraph().build_dependency(module, example_inputs=list(args), verbose=False)
        except kind:
            return True
        except Exception:
            return False
        return False

    path, node = "", model
    while True:
        child = next(((n, c) for n, c in node.named_children() if fails(c)), None)
        if child is None:
            return path, node
        path = f"{path}.{child[0]}" if path else child[0]
        node = child[1]

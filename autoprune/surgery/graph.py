"""Channel groups of a network, found on Torch-Pruning's dependency graph.

A *channel group* is the set of layers whose channels must be removed together: a
convolution's output channels, the batch norm that follows, the input channels of every
consumer, and, across residual additions, all the layers summed into the same tensor.
Each group is keyed by the name of its root module (the first layer of the group in
tracing order), which is stable across surgery because modules are edited in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

ROOT_TYPES = (nn.Conv2d, nn.Linear)


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

    def modules_of_type(
        self, model: nn.Module, kind: type | tuple[type, ...]
    ) -> list[nn.Module]:
        """The group's output-side modules of one type (e.g. the ``nn.BatchNorm2d`` ones)."""
        named = dict(model.named_modules())
        return [named[n] for n in self.out_modules if isinstance(named[n], kind)]


def find_classifier(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The layer that produces the logits: the last Conv/Linear run in a forward pass."""
    executed: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: executed.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if not executed:
        raise ValueError("the model has no Conv2d or Linear layer")
    return executed[-1]


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
            yield ChannelGroup(self._names[root], width, group, out_modules)

    def pruning_group(self, key: str, idxs: list[int]) -> tp.dependency.Group:
        """The Torch-Pruning group that removes channels ``idxs`` of group ``key``."""
        root = self.groups[key].group[0].dep
        return self.graph.get_pruning_group(root.target.module, root.handler, idxs)

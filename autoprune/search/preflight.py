"""The user's own network, checked once on the machine that starts a search, before Ray.

A registered model's structure is known to the registry, so the space's parse already
refuses a method it cannot take. A network given by import reference (``fixed.model:
mynets:build``) is only known by building it: :func:`check_network` builds it once, on
the data's shapes, and runs the engine's own check (:func:`check_method_fits`) for every
method the space searches. A method the network cannot take, a builder or a dataset
factory that fails, data of the wrong shape: one line, exit 2, before any trial starts,
instead of the same error in every trial of that method.

The dataset factory is called here as a trial calls it (its splits read once): a search
needs the data where it starts as well as where its trials run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from autoprune.config import TrainConfig
    from autoprune.search.space import SearchSpace


def check_network(space: SearchSpace) -> list[str]:
    """Refuse (UserError naming the method and the layer) a searched method the user's
    network cannot take. Returns the methods checked ([] for a registered model)."""
    from autoprune.config import parse_train_config
    from autoprune.methods import get_method
    from autoprune.methods.support import check_method_fits

    config = parse_train_config({**space.fixed, "method": "dense"})
    needs = {m: get_method(m).requires for m in space.methods}
    needs = {m: r for m, r in needs.items() if r}
    if not config.is_reference or not needs:
        return []
    model, example = _build(config)
    for method, requires in needs.items():
        try:
            check_method_fits(model, example, method, requires)
        except UserError as exc:
            raise UserError(f"searched.methods.{method}: {config.model}: {exc} (drop the "
                            "method from the space)") from None
    return list(needs)


def _build(config: TrainConfig) -> tuple[nn.Module, Tensor]:
    """The network as a trial builds it, and one input of the data's shape."""
    import torch

    from autoprune.data._registry import get_dataset
    from autoprune.engine.loop import build_model

    ds = config.dataset
    spec = get_dataset(ds.name)[0] if ds.factory is None else None
    if spec is not None and spec.num_classes:  # shapes known without reading the data
        classes, channels = spec.num_classes, spec.in_channels
        hw: tuple[int, int] = (spec.input_size, spec.input_size)
    else:  # a factory's (or an image folder's) shapes and classes come from its data
        from autoprune.data.factory import load_config_data

        data = load_config_data(ds, seed=config.training.seed, batch_size=2)
        classes, channels, size = data.num_classes, data.in_channels, data.input_size
        hw = (size, size) if isinstance(size, int) else (size[0], size[1])
    size_arg: int | tuple[int, int] = hw[0] if hw[0] == hw[1] else hw
    model = build_model(config, classes, channels, size_arg)
    example = torch.randn(2, channels, *hw, generator=torch.Generator().manual_seed(0))
    return model, example


__all__ = ["check_network"]

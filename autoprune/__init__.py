"""autoprune: search over pruning-while-training schedules for CNNs.

Public entry points::

    import autoprune
    autoprune.list_models(), autoprune.list_datasets(), autoprune.list_methods()
    model = autoprune.load_model("runs/train/model.pt")
    summary = autoprune.train("config.yaml", model=MyNet, dataset=load_data)
    result = autoprune.search("space.yaml", model=MyNet, dataset=load_data)

The Python API lives in :mod:`autoprune.api` (imported when first used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprune.surgery.serialize import load_model, save_model

if TYPE_CHECKING:
    from autoprune.api import SearchResult

__version__ = "0.1.0"


def train(config: Any, model: Any = None, dataset: Any = None, out: Any = None,
          **overrides: Any) -> dict[str, Any]:
    """Train one config with the user's own network and data: :func:`autoprune.api.train`."""
    from autoprune.api import train as _train

    return _train(config, model, dataset, out, **overrides)


def search(space: Any, model: Any = None, dataset: Any = None, name: str | None = None,
           **options: Any) -> SearchResult:
    """Run a search and return its Pareto front: :func:`autoprune.api.search`."""
    from autoprune.api import search as _search

    return _search(space, model, dataset, name, **options)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (CIFAR ResNets/VGGs, small nets, torchvision CNNs)."""
    from autoprune.models import list_models as _list

    return _list(pattern)


def list_datasets() -> list[str]:
    from autoprune.data import list_datasets as _list

    return _list()


def list_methods() -> list[str]:
    from autoprune.methods import list_methods as _list

    return _list()


__all__ = [
    "__version__", "list_datasets", "list_methods", "list_models", "load_model", "save_model",
    "search", "train",
]

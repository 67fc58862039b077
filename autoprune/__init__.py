"""autoprune: search over pruning-while-training schedules for CNNs.

Public entry points::

    import autoprune
    autoprune.list_models(), autoprune.list_datasets(), autoprune.list_methods()
    model = autoprune.load_model("runs/train/model.pt")
"""

from autoprune.surgery.serialize import load_model, save_model

__version__ = "0.1.0"


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
]

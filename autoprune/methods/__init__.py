"""PruningMethods: one module each, registered by name. Importing this package registers all."""

from autoprune.methods import filter as _filter  # noqa: F401  (registers dense, filter, prune_retrain)
from autoprune.methods.base import (
    MethodParams,
    PruningMethod,
    create_method,
    get_method,
    list_methods,
    register_method,
)

__all__ = [
    "MethodParams",
    "PruningMethod",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
]

"""PruningMethods: one module each, registered by name. Importing this package registers all."""

from autoprune.methods import activation_density as _activation_density  # noqa: F401
from autoprune.methods import cgap as _cgap  # noqa: F401
from autoprune.methods import filter as _filter  # noqa: F401  (registers dense, filter, prune_retrain)
from autoprune.methods import hfp as _hfp  # noqa: F401
from autoprune.methods import variational as _variational  # noqa: F401
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

"""Structural surgery: physical removal (and growth) of channels on dependency groups."""

from autoprune.surgery.graph import (
    ChannelGroup,
    DependencyIndex,
    UnprunableModelError,
    find_classifier,
)
from autoprune.surgery.optimizer_state import ParamRemap, gather_flat
from autoprune.surgery.remove import SurgeryError, remove_channels
from autoprune.surgery.serialize import (
    architecture_spec,
    atomic_save,
    load_model,
    removed_identity,
    save_model,
)

__all__ = [
    "ChannelGroup",
    "DependencyIndex",
    "ParamRemap",
    "SurgeryError",
    "UnprunableModelError",
    "architecture_spec",
    "atomic_save",
    "find_classifier",
    "gather_flat",
    "load_model",
    "remove_channels",
    "removed_identity",
    "save_model",
]

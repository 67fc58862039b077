"""The training engine: a loop with named hooks for PruningMethods, and compute accounting."""

from autoprune.engine.context import TrainContext
from autoprune.engine.loop import TrainingDiverged, build_model, evaluate, train

__all__ = ["TrainContext", "TrainingDiverged", "build_model", "evaluate", "train"]

"""The search over PruningSchedules: spaces, trials, the Tuner, Pareto fronts.

Importing this package is cheap: Ray, Optuna and MLflow load with the modules that use them
(``tuner``, ``trainable``, ``searcher``, ``autoprune.tracking``).
"""

from autoprune.search.space import OBJECTIVES, SAMPLERS, SearchSpace, load_space, parse_space

__all__ = ["OBJECTIVES", "SAMPLERS", "SearchSpace", "load_space", "parse_space"]

"""From a search space to trial configs: Optuna define-by-run, then flat -> nested config.

A trial's config is flat, as Ray Tune and Optuna keep it: ``method`` plus
``<method>.<param>`` for that method's parameters and ``training.<key>`` /
``dataset.<key>`` for searched recipe keys. :func:`train_config_dict` merges it into the
space's fixed part to give the nested train config that ``parse_train_config`` reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprune.search.flat import SHARED_SECTIONS, flatten, train_config_dict

if TYPE_CHECKING:
    import optuna

    from autoprune.search.space import ParamSpec, SearchSpace


class DefineByRun:
    """Optuna define-by-run search space for a :class:`SearchSpace`.

    The method is drawn first (``trial.suggest_categorical("method", ...)``), then only
    that method's parameters, named ``<method>.<param>`` so that each method's
    distributions stay apart. A plain class (not a closure) so that Ray can pickle the
    searcher that holds it when it saves the experiment.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.shared = space.shared
        self.methods = dict(space.methods)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest one trial's flat config; fixed values are returned as they are."""
        flat = {spec.name: suggest(trial, spec) for spec in self.shared}
        method = trial.suggest_categorical("method", list(self.methods))
        flat["method"] = method
        flat.update({spec.name: suggest(trial, spec) for spec in self.methods[str(method)]})
        return flat


def suggest(trial: optuna.Trial, spec: ParamSpec) -> Any:
    """One value for ``spec`` from an Optuna trial (fixed specs are not suggested)."""
    if spec.kind == "fixed":
        return spec.value
    if spec.kind == "categorical":
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.kind == "int":
        step = int(spec.step or 1)
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)


__all__ = ["SHARED_SECTIONS", "DefineByRun", "flatten", "suggest", "train_config_dict"]

"""The Python API: what a notebook imports. Every error is a :class:`UserError`.

>>> import autoprune
>>> summary = autoprune.train("config.yaml", model=MyNet, dataset=load_data, epochs=3)
>>> result = autoprune.search("space.yaml", model=MyNet, dataset=load_data, num_samples=8)
>>> result.front[0]["run_id"], result.front[0]["config"]

``model`` is a class or function returning an ``nn.Module`` (it gets ``num_classes``,
``in_channels`` and ``input_size`` where it accepts them, plus ``model_kwargs``);
``dataset`` a function returning ``(train, test)`` or ``(train, val, test)`` datasets of
``(image, int label)``. Both may also be import references (``"mynets:build"``). A
callable that imports back by its module and name is recorded as ``"module:qualname"``
(and its module shipped to Ray workers); one defined in a notebook or ``__main__`` travels
to Ray workers by value (cloudpickle). Imports of torch, Ray and MLflow happen inside the
functions, so ``import autoprune`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

ConfigSource = Mapping[str, Any] | str | Path
SECTIONS = ("training", "dataset", "method_params", "model_kwargs", "model_params")
"""Override keys merged into the config's section rather than replacing it."""


def _read(source: ConfigSource, what: str) -> tuple[dict[str, Any], str, str | None]:
    """(data, YAML text, file path) of a config or space given as a mapping or a file."""
    from autoprune.config import load_yaml

    if isinstance(source, Mapping):
        return _plain_copy(source), "", None
    if isinstance(source, (str, Path)):
        data = load_yaml(source)  # remembers the folder: modules beside it are found
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: a {what} must be a mapping")
        return dict(data), Path(source).read_text(), str(Path(source).resolve())
    raise UserError(f"a {what} is a mapping or the path of a YAML file, not a "
                    f"{type(source).__name__}")


def _plain_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of nested mappings (callables inside are kept, not copied)."""
    return {k: _plain_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _with_code(config: dict[str, Any], model: Any, dataset: Any, for_workers: bool
               ) -> dict[str, Any]:
    """``config`` with ``model``/``dataset`` put in: importable callables by reference
    (for Ray workers), others as they are (a reference kept in this process)."""
    from autoprune.references import importable, reference_of

    def code(value: Any) -> Any:
        if for_workers and callable(value) and not isinstance(value, str) and importable(value):
            return reference_of(value)
        return value

    if model is not None:
        from torch import nn

        if isinstance(model, nn.Module):
            raise UserError("model: pass the class (or a function) that builds the network, "
                            f"not a built {type(model).__name__}: autoprune builds it with "
                            "the data's num_classes and in_channels, and rebuilds it to load")
        config["model"] = code(model)
    if dataset is not None:
        if callable(dataset) and not isinstance(dataset, str) or (
                isinstance(dataset, str) and ":" in dataset):
            section = config.get("dataset")
            kept = {k: v for k, v in (section.items() if isinstance(section, Mapping) else ())
                    if k not in ("name", "data_dir", "download")}
            config["dataset"] = {**kept, "factory": code(dataset)}
        else:
            config["dataset"] = dataset
    return config


def _override(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    if "method" in overrides and overrides["method"] != config.get("method"):
        config["method_params"] = {}  # another method: its own parameters, not merged
    for key, value in overrides.items():
        current = config.get(key)
        if key in SECTIONS and isinstance(value, Mapping):
            base = {"name": current} if isinstance(current, str) else dict(current or {})
            config[key] = {**base, **value}
        else:
            config[key] = value
    return config


def train(
    config: ConfigSource,
    model: Callable[..., Any] | str | None = None,
    dataset: Callable[..., Any] | str | Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    train_subset: int | None = None,
    progress: bool = False,
    resume: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train one config (a mapping or a YAML path) and return its summary (``summary.json``).

    ``model``/``dataset`` replace the config's (see the module docstring). ``overrides``
    replace top-level keys (``method="hfp"``, which also clears the old method's
    parameters); a mapping for ``training``, ``dataset``, ``method_params`` or
    ``model_kwargs`` is merged into that section. ``epochs`` and
    ``train_subset`` replay the schedule at another budget, as ``autoprune train
    --epochs/--train-subset`` do. ``out`` defaults to ``runs/train/<config name>``.
    """
    from autoprune.config import at_budget, parse_train_config
    from autoprune.engine import TrainingDiverged
    from autoprune.engine import train as run

    data, _text, path = _read(config, "train config")
    data = _override(_with_code(data, model, dataset, for_workers=False), overrides)
    parsed = parse_train_config(at_budget(data, epochs, train_subset))
    name = Path(path).stem if path else "api"
    folder = Path(out) if out is not None else Path("runs/train") / name
    try:
        return run(parsed, folder, progress=progress, resume=resume)
    except TrainingDiverged as exc:
        raise UserError(f"training diverged: {exc}; lower training.lr (now "
                        f"{parsed.training.lr:g})") from None


@dataclass
class SearchResult:
    """A finished search: its name, where it is tracked, and its Pareto front.

    ``front``: one row per non-dominated completed trial (``run_id``, ``trial_id``,
    ``method``, the objectives, ``val_accuracy``/``test_accuracy``, ... and ``config``,
    the trial's train config, replayable with :func:`train`)."""

    name: str
    tracking_uri: str
    objectives: tuple[str, ...]
    front: list[dict[str, Any]] = field(default_factory=list)
    trials: int = 0
    errored: int = 0


SPACE_OPTIONS = ("num_samples", "sampler", "seed", "max_concurrent", "max_failures")
STAGE_OPTIONS = ("proxy_epochs", "proxy_train_subset", "replay", "full_fidelity")


def search(
    space: ConfigSource,
    model: Callable[..., Any] | str | None = None,
    dataset: Callable[..., Any] | str | Mapping[str, Any] | None = None,
    name: str | None = None,
    **options: Any,
) -> SearchResult:
    """Run a search (a space mapping or YAML path) to its end and return its front.

    ``model``/``dataset`` replace the space's ``fixed`` ones. ``options``: ``num_samples``,
    ``sampler``, ``seed``, ``max_concurrent``, ``max_failures``, ``scheduler`` (``none`` or
    ``moasha``), ``target`` (``"macs_ratio<=0.25"``), ``proxy_epochs``,
    ``proxy_train_subset``, ``replay`` (``"front"`` or K), ``full_fidelity`` (as the
    command line's flags of those names), ``tracking_uri``, ``storage_path`` (default
    ``runs/ray``), ``address``, ``resume``. ``name`` defaults to the space's ``name``, else
    the file name, else ``api-search``.
    """
    import dataclasses
    import re

    from autoprune.search.fidelity import override_two_stage
    from autoprune.search.space import parse_space, validate_settings
    from autoprune.search.store import check_server, resolve_tracking_uri
    from autoprune.search.target import parse_target
    from autoprune.search.tuner import SearchRequest, run_search

    known = (*SPACE_OPTIONS, "scheduler", "tracking_uri", "storage_path", "address", "resume",
             *STAGE_OPTIONS, "target")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"search(): unknown option {unknown[0]!r}; allowed: {', '.join(known)}")
    data, text, path = _read(space, "search space")
    fixed = data.get("fixed")
    if isinstance(fixed, Mapping):
        data["fixed"] = _with_code(dict(fixed), model, dataset, for_workers=True)
    parsed = parse_space(data, source=text)
    parsed = dataclasses.replace(parsed, **{k: options[k] for k in SPACE_OPTIONS
                                            if options.get(k) is not None})
    if options.get("scheduler") is not None:
        parsed = dataclasses.replace(parsed, scheduler=dataclasses.replace(
            parsed.scheduler, name=options["scheduler"]))
    parsed = dataclasses.replace(parsed, fidelity=override_two_stage(
        parsed.fidelity, options.get("proxy_epochs"), options.get("proxy_train_subset"),
        options.get("replay"), bool(options.get("full_fidelity"))))
    if options.get("target") is not None:
        parsed = dataclasses.replace(parsed, target=parse_target(options["target"], "target"))
    validate_settings(parsed)
    name = name or parsed.name or (Path(path).stem if path else "api-search")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"search name {name!r}: use letters, digits, '_', '-' and '.' only")
    uri = resolve_tracking_uri(options.get("tracking_uri"))
    check_server(uri)
    storage = str(options.get("storage_path") or "runs/ray")
    request = SearchRequest(
        space=parsed, space_file=path or "<python>", name=name, tracking_uri=uri,
        storage_path=storage if "://" in storage else str(Path(storage).resolve()),
        address=options.get("address"), resume=bool(options.get("resume", False)))
    outcome = run_search(request)
    return _result(name, uri, outcome)


def _result(name: str, uri: str, outcome: Any) -> SearchResult:
    from autoprune.search.pareto import front
    from autoprune.search.pick import replay_config
    from autoprune.search.store import load_search

    record = load_search(uri, name)
    rows = [dict(row) for row in front(record.rows, record.objectives, record.modes)]
    for row in rows:
        try:
            row["config"] = replay_config(record.lookup.client, row["run_id"])
        except UserError:
            row["config"] = None
    return SearchResult(name, uri, tuple(record.objectives), rows,
                        int(getattr(outcome, "trials", 0)), int(getattr(outcome, "errored", 0)))


def load_model(path: str | Path, map_location: str = "cpu", *, trust: Any = (),
               factory: Callable[..., Any] | None = None) -> Any:
    """:func:`autoprune.surgery.serialize.load_model`: a saved network in its pruned shape;
    the user's own network only with ``trust=["module"]`` or ``factory=builder``."""
    from autoprune.surgery.serialize import load_model as _load

    return _load(path, map_location, trust=trust, factory=factory)


__all__ = ["SearchResult", "load_model", "search", "train"]

"""What ``autoprune export`` exports: a network and the inputs it was trained on.

A source is a ``model.pt`` (or the folder holding one), a trial's MLflow run id
(``runs:/<id>`` too), or a registry URI (``models:/NAME@alias``, ``models:/NAME/<version>``,
``models:/m-<id>``). Registry and run sources lead back to the trial's run, whose
``model.pt`` and ``train_config.yaml`` artifacts give the network in its pruned shape and
the dataset it was trained on.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError

_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Source:
    model: nn.Module
    label: str
    config: dict[str, Any] | None
    """The train config the network came from (None: unknown)."""
    run_id: str | None = None
    trust: tuple[str, ...] = ()
    """Modules of the user's own code the caller allows (network, dataset factory)."""

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.model, "autoprune_input_shape", None)
        return tuple(shape) if shape else None


def resolve(source: str, tracking_uri: str | None, trust: tuple[str, ...] = ()) -> Source:
    """Load ``source`` (see the module docstring); UserError naming it when it is none.
    ``trust``: modules whose code may rebuild the user's own network (and call its
    dataset factory), as :func:`autoprune.load_model` takes them."""
    path = Path(source)
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    if path.is_file():
        return _from_file(path, trust)
    if source.startswith("models:/"):
        client = _client(tracking_uri)
        return _from_run(client, _registry_run(client, source), source, trust)
    run_id = source[len("runs:/"):].split("/", 1)[0] if source.startswith("runs:/") else source
    if _RUN_ID.fullmatch(run_id):
        client = _client(tracking_uri)
        return _from_run(client, run_id, source, trust)
    raise UserError(f"{source!r} is not a model file, a run id or a models:/ URI")


def _from_file(path: Path, trust: tuple[str, ...]) -> Source:
    from autoprune.surgery.serialize import load_model

    return Source(load_model(path, trust=trust), str(path), _config_beside(path), None, trust)


def _config_beside(path: Path) -> dict[str, Any] | None:
    import json

    import yaml

    config = path.with_name("train_config.yaml")
    if config.is_file():
        data = yaml.safe_load(config.read_text())
        return data if isinstance(data, dict) else None
    summary = path.with_name("summary.json")
    if summary.is_file():
        data = json.loads(summary.read_text()).get("config")
        return data if isinstance(data, dict) else None
    return None


def _client(tracking_uri: str | None) -> Any:
    from autoprune.search.store import open_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri} (pass --tracking-uri)")
    return open_client(uri)


def _registry_run(client: Any, uri: str) -> str:
    """The run id behind ``models:/NAME@alias``, ``models:/NAME/<version>``, ``models:/m-..``."""
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/"):]
    try:
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            run_id = client.get_logged_model(rest).source_run_id
        elif "@" in rest:
            name, alias = rest.split("@", 1)
            run_id = client.get_model_version_by_alias(name, alias).run_id
        elif re.fullmatch(r"[^/]+/\d+", rest):
            name, version = rest.split("/")
            run_id = client.get_model_version(name, version).run_id
        else:
            raise UserError(f"{uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or "
                            "models:/m-<id>")
    except MlflowException as exc:
        raise UserError(f"{uri}: {' '.join(str(exc.message).split())[:300]}") from None
    if not run_id:
        raise UserError(f"{uri} was not logged from a run: nothing to find its model.pt in")
    return str(run_id)


def _from_run(client: Any, run_id: str, label: str, trust: tuple[str, ...]) -> Source:
    import yaml

    from autoprune.surgery.serialize import load_model

    with tempfile.TemporaryDirectory(prefix="autoprune-export-") as folder:
        try:
            model_file = client.download_artifacts(run_id, "model.pt", folder)
        except Exception as exc:  # noqa: BLE001 - any store error means: not there
            raise UserError(f"run {run_id} has no model.pt artifact "
                            f"({' '.join(str(exc).split())[:200]})") from None
        model = load_model(model_file, trust=trust)
        try:
            config = yaml.safe_load(Path(client.download_artifacts(
                run_id, "train_config.yaml", folder)).read_text())
        except Exception:  # noqa: BLE001 - the network alone is enough
            config = None
    return Source(model, label, config if isinstance(config, dict) else None, run_id, trust)


def sample_inputs(source: Source, count: int, input_shape: tuple[int, ...] | None = None
                  ) -> tuple[torch.Tensor, str]:
    """``count`` test-split inputs of the source's dataset, normalised as in training, and
    a description; random normal inputs of the recorded shape when the data is not here."""
    if source.config is not None:
        try:
            return _test_batch(source.config, count, source.trust)
        except UserError:
            pass
    shape = input_shape or source.input_shape
    if not shape:
        raise UserError(f"{source.label}: neither its dataset nor its input shape is known; "
                        "give --input-shape C,H,W")
    generator = torch.Generator().manual_seed(0)
    return torch.randn((count, *shape), generator=generator), f"random {list(shape)}"


def _test_batch(config: dict[str, Any], count: int, trust: tuple[str, ...]
                ) -> tuple[torch.Tensor, str]:
    """A test batch of the config's data. A dataset factory is called only when the caller
    trusts its module: a config found beside a model file imports nothing by itself."""
    import dataclasses

    from autoprune.config import parse_train_config
    from autoprune.data import load_config_data
    from autoprune.references import is_trusted

    parsed = parse_train_config(config, imports=False)
    ds = dataclasses.replace(parsed.dataset, download=False, train_subset=None)
    if ds.factory is not None and not is_trusted(ds.factory, trust):
        raise UserError(f"dataset factory {ds.factory!r} is not trusted")
    data = load_config_data(ds, seed=parsed.training.seed, batch_size=count,
                            eval_batch_size=count)
    x, _ = next(iter(data.test))
    return x[:count].cpu(), f"{len(x[:count])} test images of {ds.name}"


__all__ = ["Source", "resolve", "sample_inputs"]

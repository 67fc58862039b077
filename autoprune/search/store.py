"""The MLflow side of a search without Ray: connection, run lookups, completed-trial rows.

Shared by the driver's tracking callback and by ``autoprune pareto`` / ``pick`` (which
must not need Ray). Tag names and layout are the contract in DESIGN.md.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

ROLE, STATUS, TRIAL_ID, NODE_ID, METHOD = (
    "autoprune.role", "autoprune.status", "autoprune.trial_id", "autoprune.node_id",
    "autoprune.method")
FIDELITY, PROXY_RUN_ID, TARGET = ("autoprune.fidelity", "autoprune.proxy_run_id",
                                  "autoprune.target")
PARENT = "mlflow.parentRunId"
DEFAULT_DB = Path("runs") / "mlflow.db"
ROW_METRICS = ("accuracy", "macs", "params", "train_flops", "latency_ms", "macs_ratio",
               "params_ratio", "dense_macs", "dense_params", "train_flops_ratio", "val_accuracy",
               "test_accuracy", "epochs", "trial_train_flops")


TRACKING_ENV = "MLFLOW_TRACKING_URI"
"""MLflow's own variable: where results go when no --tracking-uri is given."""
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                    "file")


def resolve_tracking_uri(uri: str | None) -> str:
    """Where results go, as MLflow itself decides it: ``uri`` (the --tracking-uri flag),
    else the ``MLFLOW_TRACKING_URI`` environment variable, else the embedded default
    ``sqlite:///<cwd>/runs/mlflow.db``. Relative SQLite paths are made absolute; a scheme
    MLflow cannot track to is a UserError naming the ones it can."""
    where = "--tracking-uri"
    if uri is None and os.environ.get(TRACKING_ENV, "").strip():
        uri, where = os.environ[TRACKING_ENV].strip(), TRACKING_ENV
    if uri is None:
        return f"sqlite:///{DEFAULT_DB.resolve()}"
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise UserError(f"{where} {uri!r}: not a tracking store MLflow supports (use "
                        "sqlite:///PATH, http(s)://HOST:PORT of an MLflow server, or a "
                        "postgresql://, mysql:// or mssql:// database URL)")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def open_client(uri: str) -> MlflowClient:
    """An MLflow client for ``uri`` (a SQLite file's folder is created), quietly."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # after the import: mlflow sets its level on import
        logging.getLogger(name).setLevel(logging.WARNING)

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    check_server(uri)
    return MlflowClient(tracking_uri=uri)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, on an ``http(s)://`` tracking server that is not there
    (MLflow itself would retry for minutes)."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {reason} "
                        "(start it, or check --tracking-uri)") from None


def artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live next to the database (not in the cwd's mlruns/)."""
    if not uri.startswith("sqlite:///"):
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / slug)


def get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name))
    if experiment.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} is deleted: restore it or pick another --name")
    return str(experiment.experiment_id)


@dataclass
class RunLookup:
    """Finds a search's runs in one experiment (the parent, its trial children)."""

    client: MlflowClient
    experiment_id: str
    parent_id: str = ""

    def parent(self) -> Run | None:
        runs = self._search(f"tags.`{ROLE}` = 'search'", order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def children(self) -> list[Run]:
        query = f"tags.`{ROLE}` = 'trial'"
        if self.parent_id:
            query += f" and tags.`{PARENT}` = '{self.parent_id}'"
        return self._search(query)

    def child(self, trial_id: str) -> Run | None:
        runs = self._search(f"tags.`{ROLE}` = 'trial' and tags.`{TRIAL_ID}` = '{trial_id}'")
        return runs[0] if runs else None

    def _search(self, query: str, order_by: list[str] | None = None) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000,
                                           order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def run_row(run: Run) -> dict[str, Any]:
    """One child run as a flat row: ids, method, status, fidelity and the final metric
    values. ``accuracy`` is the validation accuracy the search chose on and
    ``test_accuracy`` the test accuracy reported beside it. A trial logged before searches
    chose on validation (no ``test_accuracy`` metric) logged its test accuracy as
    ``accuracy`` and its last epoch's validation accuracy as ``val_accuracy``: it is read
    that way, and marked ``legacy``."""
    tags, metrics = run.data.tags, run.data.metrics
    row: dict[str, Any] = {
        "trial_id": tags.get(TRIAL_ID, ""), "method": run.data.params.get("method", ""),
        "status": tags.get(STATUS, ""), "run_id": run.info.run_id,
        "fidelity": tags.get(FIDELITY, "full"),
    }
    row.update({key: metrics[key] for key in ROW_METRICS if key in metrics})
    row["method_params"] = {k.split(".", 1)[1]: v for k, v in run.data.params.items()
                            if k.startswith("method_params.")}
    if "test_accuracy" not in metrics and "accuracy" in metrics and tags.get(
            FIDELITY, "full") == "full":
        row["legacy"] = "val_accuracy" if "val_accuracy" in metrics else "test_accuracy"
        row["test_accuracy"] = metrics["accuracy"]
        row["accuracy"] = metrics.get("val_accuracy", metrics["accuracy"])
    elif "val_accuracy" not in row and "accuracy" in metrics:
        row["val_accuracy"] = metrics["accuracy"]
    return row


def run_page_prefix(uri: str, experiment_id: str) -> str:
    """Where a run of this experiment opens in the MLflow UI, up to its run id: the
    server's own pages for an ``http(s)://`` tracking URI, otherwise the UI that
    ``autoprune ui`` serves on this machine (127.0.0.1:5000)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/"


def completed_rows(lookup: RunLookup, runs: list[Run] | None = None,
                   fidelity: str = "full") -> list[dict[str, Any]]:
    """Rows of the completed trials at ``fidelity``: by default full fidelity only (not
    the proxy trials of a two-stage search, nor trials stopped at a lower rung, which are
    ``pruned``), the only ones that may enter a front."""
    runs = lookup.children() if runs is None else runs
    rows = [run_row(r) for r in runs if r.data.tags.get(STATUS) == "completed"
            and r.data.tags.get(FIDELITY, "full") == fidelity]
    return sorted(rows, key=lambda r: str(r["trial_id"]))


def search_compute(runs: list[Run]) -> dict[str, float]:
    """The parent run's summary metrics: ``search_train_flops`` (every rung of every
    trial and, in a two-stage search, every proxy trial, as far as each trained) and trial
    counts by status (``trials_proxy``: stage-1 trials; the others count full-fidelity
    trials)."""
    statuses = [r.data.tags.get(STATUS, "") if r.data.tags.get(FIDELITY, "full") == "full"
                else r.data.tags.get(FIDELITY, "") for r in runs]
    flops = sum(float(r.data.metrics.get("trial_train_flops", r.data.metrics.get(
        "train_flops", 0.0))) for r in runs)
    kinds = ("completed", "pruned", "failed", *(("proxy",) if "proxy" in statuses else ()))
    return {"search_train_flops": flops,
            **{f"trials_{s}": float(statuses.count(s)) for s in kinds}}


@dataclass
class SearchRecord:
    """A finished (or running) search as MLflow holds it."""

    lookup: RunLookup
    parent: Run
    objectives: tuple[str, ...]
    modes: tuple[str, ...]
    rows: list[dict[str, Any]]

    @property
    def target(self) -> str | None:
        """The budget the search aimed at (``--target``), if any."""
        return self.parent.data.tags.get(TARGET) or None

    def legacy_note(self) -> str | None:
        """What is missing from a search logged before searches chose on validation
        accuracy (see :func:`run_row`), in one line; None for a current one."""
        kinds = {r["legacy"] for r in self.rows if r.get("legacy")}
        if not kinds:
            return None
        if "test_accuracy" in kinds:
            return ("note: this search was logged before autoprune chose on validation "
                    "accuracy and some of its trials have none: for those, accuracy is "
                    "their test accuracy")
        return ("note: this search was logged before autoprune chose on validation accuracy: "
                "accuracy is each trial's last-epoch validation accuracy (measured before a "
                "method's final step, if it had one), test_accuracy what it logged")


def load_search(uri: str | None, name: str) -> SearchRecord:
    """The search ``name`` from the store at ``uri`` (UserError when there is none)."""
    from autoprune.search.space import OBJECTIVES

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri} (run a search first, or pass --tracking-uri)")
    client = open_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = [e.name for e in client.search_experiments() if e.name != "Default"]
        raise UserError(f"no search named {name!r} in {uri} (found: {', '.join(names) or 'none'})")
    lookup = RunLookup(client, str(experiment.experiment_id))
    parent = lookup.parent()
    if parent is None:
        raise UserError(f"experiment {name!r} has no search run (autoprune.role=search)")
    lookup.parent_id = parent.info.run_id
    text = parent.data.params.get("objectives", "accuracy,macs")
    objectives = tuple(o for o in text.split(",") if o in OBJECTIVES) or ("accuracy", "macs")
    modes = tuple(OBJECTIVES[o] for o in objectives)
    return SearchRecord(lookup, parent, objectives, modes, completed_rows(lookup))


__all__ = ["RunLookup", "SearchRecord", "artifact_location", "check_server", "completed_rows",
           "get_or_create_experiment", "load_search", "open_client", "resolve_tracking_uri",
           "run_row", "search_compute", "run_page_prefix"]

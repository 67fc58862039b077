"""MLflow calls that survive a tracking server going away for a while.

The search driver's MLflow client is wrapped in a :class:`ResilientClient`:

- a call that fails on a connection error (server down, restarting, SQLite locked) is
  retried with exponential backoff for up to ``AUTOPRUNE_MLFLOW_RETRY_S`` seconds
  (default 600);
- a *write* (tags, metrics, params, artifacts, run status) that still fails is kept in a
  local spool folder (``AUTOPRUNE_SPOOL_DIR``, default ``runs/mlflow-spool/<search>``),
  one JSON line per call (artifacts copied next to it), and the user is told where;
- the spool is replayed, in order, as soon as the server answers again: before the next
  write, every ``REPLAY_EVERY_S`` seconds during the search, at its end, and when the
  search is resumed (``--resume``). Nothing is lost while the spool folder exists.

Reads (looking runs up) cannot be spooled: if the server stays away longer than the
retry window they fail, the search stops, and ``autoprune search ... --resume`` continues
it once the server is back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mlflow import MlflowClient

RETRY_ENV, SPOOL_ENV = "AUTOPRUNE_MLFLOW_RETRY_S", "AUTOPRUNE_SPOOL_DIR"
REPLAY_EVERY_S = 15.0
SPOOL_FILE = "calls.jsonl"
WRITES = frozenset({"set_tag", "log_batch", "set_terminated", "update_run", "log_artifacts",
                    "log_text", "log_param", "log_metric", "set_experiment_tag"})
_TRANSIENT = ("max retries exceeded", "connection refused", "connection reset",
              "connection aborted", "failed with exception", "database is locked",
              "temporarily unavailable", "remote end closed", "bad gateway",
              "service unavailable")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like the server (or the store) being away, not a bad call."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc).lower()
    return any(word in text for word in _TRANSIENT)


def default_spool_dir(name: str) -> Path:
    root = os.environ.get(SPOOL_ENV)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return Path(root) if root else Path("runs") / "mlflow-spool" / slug


class ResilientClient:
    """A proxy of ``MlflowClient``: retries transient failures; spools failed writes."""

    def __init__(self, client: MlflowClient, spool_dir: str | Path,
                 retry_s: float | None = None, out: Any = None) -> None:
        self._client = client
        self.spool_dir = Path(spool_dir).resolve()
        self.retry_s = float(os.environ.get(RETRY_ENV, 600)) if retry_s is None else retry_s
        self._out = out
        self._last_replay = 0.0
        self._told = False
        self._retrying = False

    # --- the proxy ------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (unpickling, copying): no recursion
            raise AttributeError(name)
        target = getattr(self._client, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in WRITES and self.pending():
                self.replay()
                if self.pending():  # keep the order: behind what is already waiting
                    self._spool(name, args, kwargs)
                    return None
            try:
                return self._retry(target, args, kwargs)
            except Exception as exc:
                if name not in WRITES or not is_transient(exc):
                    raise
                self._spool(name, args, kwargs)
                return None

        return call

    def _retry(self, target: Any, args: Any, kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                value = target(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                if not self._retrying:
                    self._retrying = True
                    print(f"warning: MLflow does not answer ({_first_line(exc)}); retrying "
                          f"for up to {self.retry_s:.0f} s", file=self._out or sys.stderr,
                          flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                if self._retrying:
                    self._retrying = False
                    print("MLflow answers again", file=self._out or sys.stderr, flush=True)
                return value

    # --- the spool ------------------------------------------------------------------------

    @property
    def spool_file(self) -> Path:
        return self.spool_dir / SPOOL_FILE

    def pending(self) -> int:
        """How many calls wait in the spool."""
        if not self.spool_file.is_file():
            return 0
        return sum(1 for line in self.spool_file.read_text().splitlines() if line.strip())

    def _spool(self, name: str, args: Any, kwargs: Any) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        args = list(args)
        if name == "log_artifacts":  # the folder is temporary: keep a copy
            copy = self.spool_dir / "artifacts" / f"{time.time_ns()}"
            shutil.copytree(args[1] if len(args) > 1 else kwargs.pop("local_dir"), copy)
            args = [args[0], str(copy), *args[2:]]
        line = json.dumps({"call": name, "args": _encode(args), "kwargs": _encode(kwargs)})
        with self.spool_file.open("a") as fh:
            fh.write(line + "\n")
        if not self._told:
            self._told = True
            print(f"warning: the MLflow tracking server does not answer; logging goes to "
                  f"{self.spool_dir} until it is back (it is sent then, or when the search "
                  "is resumed with --resume)", file=self._out or sys.stderr, flush=True)

    def replay(self, force: bool = False) -> int:
        """Send the spooled calls, in order, once each; returns how many are still waiting.

        One quick try (no retry window): an unreachable server leaves the spool as it is.
        """
        if not self.spool_file.is_file():
            return 0
        self._last_replay = time.monotonic()
        lines = [line for line in self.spool_file.read_text().splitlines() if line.strip()]
        done = 0
        try:
            for line in lines:
                item = json.loads(line)
                getattr(self._client, item["call"])(*_decode(item["args"]),
                                                    **_decode(item["kwargs"]))
                done += 1
        except Exception as exc:
            if not is_transient(exc):
                raise
        rest = lines[done:]
        if rest:
            self.spool_file.write_text("".join(f"{line}\n" for line in rest))
            return len(rest)
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        if self._told:
            print("MLflow is reachable again: every spooled call was sent",
                  file=self._out or sys.stderr, flush=True)
        self._told = False
        return 0

    def replay_if_due(self) -> None:
        if time.monotonic() - self._last_replay > REPLAY_EVERY_S and self.spool_file.is_file():
            self.replay()

    def finish(self, uri: str) -> None:
        """At the end of a search: one more replay; tell the user what is still kept."""
        left = self.replay()
        if left:
            print(f"warning: {left} MLflow calls could not reach {uri}; they are kept in "
                  f"{self.spool_dir}: rerun the search with --resume (same flags) once the "
                  "server is back to send them", file=self._out or sys.stderr, flush=True)


def resilient(client: MlflowClient, name: str) -> MlflowClient:
    """``client`` wrapped in a :class:`ResilientClient` spooling under the search's name."""
    return cast("MlflowClient", ResilientClient(client, default_spool_dir(name)))


def replay(client: Any) -> None:
    if isinstance(client, ResilientClient):
        client.replay()


def replay_if_due(client: Any) -> None:
    if isinstance(client, ResilientClient):
        client.replay_if_due()


def finish(client: Any, uri: str) -> None:
    if isinstance(client, ResilientClient):
        client.finish(uri)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _encode(value: Any) -> Any:
    """JSON for call arguments, MLflow entities (Metric, Param, RunTag) included."""
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, Metric):
        return {"__metric__": [value.key, value.value, value.timestamp, value.step]}
    if isinstance(value, Param):
        return {"__param__": [value.key, value.value]}
    if isinstance(value, RunTag):
        return {"__tag__": [value.key, value.value]}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, dict):
        if "__metric__" in value:
            return Metric(*value["__metric__"])
        if "__param__" in value:
            return Param(*value["__param__"])
        if "__tag__" in value:
            return RunTag(*value["__tag__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


__all__ = ["ResilientClient", "default_spool_dir", "finish", "is_transient", "replay",
           "replay_if_due",
           "resilient"]

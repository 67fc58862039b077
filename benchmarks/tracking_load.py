"""Does the search driver's MLflow logging keep up with a cluster-sized search?

The driver of ``autoprune search`` logs to MLflow through one Ray Tune callback,
:class:`autoprune.tracking.callback.TrackingCallback`, which writes through the retrying,
spooling client of :mod:`autoprune.tracking.spool`. This benchmark drives that callback,
unchanged, with a simulated search and no training: trial objects carrying what Ray's
``Trial`` gives a callback (``trial_id``, ``config``, ``status``, ``last_result``,
``checkpoint``, ``get_error``), results shaped as :mod:`autoprune.search.trainable`
reports them (per epoch: ``accuracy``, ``macs``, ``params``, ``train_flops`` plus
``trial_train_flops`` and ``rung``: six logged metrics; at the end: the final objectives
and a real Ray checkpoint holding ``model.pt`` of a real ``small_cnn``, ``summary.json``,
``train_config.yaml`` and ``trial_state.json``), and the callback's hooks called in the
order Ray's driver calls them, with many trials in flight and their results interleaved.
The first ``--models`` completed trials also log their network as an MLflow model (the
callback's own ``TrialLog._log_network``); for the others the benchmark switches that off
(``TrialLog.tracking_uri = ""``) so that the run keeps ``model.pt`` only.

Parts (``--parts``):

- ``postgres``: one search against an MLflow server (``mlflow server --serve-artifacts
  --artifacts-destination ...`` after ``mlflow db upgrade``) on a throw-away PostgreSQL
  cluster this script starts (``initdb`` in a temporary folder, its own port on
  127.0.0.1, trust authentication; as root, PostgreSQL runs as the ``postgres`` user);
- ``sqlite``: the same search against the embedded default, ``sqlite:///.../mlflow.db``;
- ``restart``: the PostgreSQL-backed server is killed (SIGKILL) mid-search and started
  again ``--down-s`` seconds later. MLflow's own HTTP retries are off
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``) and ``AUTOPRUNE_MLFLOW_RETRY_S`` is small, so
  the outage reaches autoprune's retry and spool. A hook that raises (a *read*, which
  cannot be spooled) ends the driver as it would end ``autoprune search``; the benchmark
  then does what ``autoprune search --resume`` does (the callback pickled and restored as
  ``Tuner.restore`` does, ``setup``, the running trials started again) and counts it;
- ``sweep``: several searches at once, each a process of its own with its own callback
  and experiment, all writing to one SQLite file, at each concurrency of ``--sweep``:
  where SQLite's single writer shows. The concurrency at which a search fails or the
  per-epoch p95 passes one second is reported as SQLite's limit. ``--sweep-stores
  postgres`` runs the same levels against the server, to tell the store from the CPU.

After each search the store is read directly (SQL on the SQLite file or on PostgreSQL):
every expected metric value (run, key, step, value) must be there exactly once:
``lost`` counts expected values missing, ``duplicated`` values stored more often than
logged, ``unexpected`` values nobody logged. Child runs per trial, artifacts on disk and
logged models are checked too. Latency: the wall time of each ``on_trial_result`` call
for an epoch result (what the Ray driver waits for per epoch), p50/p95/p99/max.

Usage::

    .venv/bin/python benchmarks/tracking_load.py --trials 100 --epochs 10 --models 10  # quick
    .venv/bin/python benchmarks/tracking_load.py                # 1,000 x 50 x 6, all parts
    .venv/bin/python benchmarks/tracking_load.py --parts sweep  # one part, merged into the JSON
    .venv/bin/python benchmarks/tracking_load.py --report-only  # the table from the JSON

Results: ``benchmarks/results/tracking_load.json`` (each part replaces its own entry).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "tracking_load.json"
PYTHON = sys.executable
MLFLOW_BIN = str(Path(sys.executable).with_name("mlflow"))
PARTS = ("postgres", "sqlite", "restart", "restart_default", "sweep")
P95_LIMIT_S = 1.0

FIXED = {"model": "small_cnn", "dataset": {"name": "digits"},
         "training": {"epochs": 50, "batch_size": 64, "lr": 0.05, "seed": 0}}
METHODS = ("filter", "cgap", "hfp", "activation_density")
INPUT_SHAPE = (1, 8, 8)  # digits


# --- the simulated search ------------------------------------------------------------------

class SimTrial:
    """What Ray's ``Trial`` offers a callback, and nothing more."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config = trial_id, config
        self.status = "PENDING"
        self.last_result: dict[str, Any] = {}
        self.checkpoint: Any = None
        self.error_file: str | None = None

    def get_error(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"SimTrial({self.trial_id})"


def trial_config(index: int) -> dict[str, Any]:
    rng = random.Random(index)
    method = METHODS[index % len(METHODS)]
    return {"method": method, f"{method}.target_ratio": round(rng.uniform(0.2, 0.9), 4)}


def epoch_values(index: int, epoch: int, epochs: int) -> dict[str, float]:
    """The six logged metrics of one epoch (distinct per trial and epoch, exact floats)."""
    base = (index * 0.6180339887) % 1.0
    frac = epoch / epochs
    macs = float(1_000_000 - 1000 * index - 10 * epoch)
    return {"accuracy": round(0.1 + 0.8 * frac * (0.5 + 0.5 * base), 6),
            "macs": macs, "params": float(60_000 - 7 * index - epoch),
            "train_flops": 3.0 * macs * 1797 * epoch,
            "trial_train_flops": 3.0 * macs * 1797 * epoch, "rung": 0.0}


def final_values(index: int, epochs: int) -> dict[str, float]:
    """What the trial's last report logs (OBJECTIVE_KEYS, FINAL_EXTRA_KEYS, progress)."""
    last = epoch_values(index, epochs, epochs)
    val = round(last["accuracy"] + 0.0005, 6)
    return {"accuracy": val, "macs": last["macs"], "params": last["params"],
            "train_flops": last["train_flops"], "latency_ms": round(0.2 + index * 1e-4, 6),
            "val_accuracy": val, "test_accuracy": round(val - 0.01, 6),
            "dense_macs": 1_000_000.0, "dense_params": 60_000.0,
            "macs_ratio": last["macs"] / 1_000_000.0,
            "params_ratio": last["params"] / 60_000.0,
            "dense_train_flops": 3.0 * 1_000_000 * 1797 * epochs,
            "train_flops_ratio": last["macs"] / 1_000_000.0,
            "wall_time_s": round(10.0 + index * 0.01, 4), "test_loss": round(1.0 - val, 6),
            "epochs": float(epochs), "rung": 0.0,
            "trial_train_flops": last["trial_train_flops"]}


def expected_metrics(index: int, epochs: int) -> Counter:
    want: Counter = Counter()
    for epoch in range(1, epochs + 1):
        for key, value in epoch_values(index, epoch, epochs).items():
            want[(key, epoch, value)] += 1
    for key, value in final_values(index, epochs).items():
        want[(key, epochs, value)] += 1
    return want


RAY_KEYS = {"time_this_iter_s": 0.5, "done": False, "pid": 4242, "hostname": "node-a",
            "node_ip": "10.0.0.2", "config": {}, "experiment_tag": "x"}


def epoch_result(trial: SimTrial, index: int, epoch: int, epochs: int) -> dict[str, Any]:
    """One epoch's report, as trainable.epoch_result builds it (plus Ray's own keys)."""
    values = epoch_values(index, epoch, epochs)
    return {**{k: values[k] for k in ("accuracy", "macs", "params", "train_flops")},
            "latency_ms": math.nan, "epoch": epoch, "rung_epoch": epoch, "rung": 0,
            "rung_epochs": epochs, "full_epochs": epochs,
            "trial_train_flops": values["trial_train_flops"], "is_final": False,
            "rung_done": False, "trial_status": "running", "threads": 1,
            "node_id": f"node-{index % 4}", "fidelity": "full", **RAY_KEYS,
            "training_iteration": epoch, "trial_id": trial.trial_id,
            "timestamp": int(time.time()), "time_total_s": 0.5 * epoch}


def final_result(trial: SimTrial, index: int, epochs: int) -> dict[str, Any]:
    values = final_values(index, epochs)
    return {**values, "rung": 0, "epoch": epochs, "rung_epochs": epochs,
            "full_epochs": epochs, "is_final": True, "rung_done": True,
            "trial_status": "completed", "node_id": f"node-{index % 4}", "fidelity": "full",
            **RAY_KEYS, "training_iteration": epochs + 1, "trial_id": trial.trial_id,
            "timestamp": int(time.time()), "time_total_s": 0.5 * epochs}


def model_file(folder: Path) -> Path:
    """A real small_cnn (digits' input shape) in autoprune's model.pt format."""
    import torch

    from autoprune.config import parse_train_config
    from autoprune.engine.loop import build_model
    from autoprune.surgery.serialize import save_model

    torch.manual_seed(0)
    path = folder / "model.pt"
    model = build_model(parse_train_config(FIXED), 10, INPUT_SHAPE[0], INPUT_SHAPE[1])
    save_model(model, path, INPUT_SHAPE)
    return path


def final_checkpoint(root: Path, model: Path, trial: SimTrial, index: int, epochs: int) -> Any:
    """The trial's final Ray checkpoint: model.pt, summary.json, config, state."""
    from ray.tune import Checkpoint

    folder = root / trial.trial_id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "model.pt")
    (folder / "summary.json").write_text(json.dumps(
        {**final_values(index, epochs), "config": {**FIXED, **trial.config}}, indent=1))
    (folder / "train_config.yaml").write_text(
        f"model: small_cnn\ndataset: {{name: digits}}\nmethod: {trial.config['method']}\n")
    (folder / "trial_state.json").write_text(json.dumps(
        {"rung": 0, "rung_done": True, "spent_flops": 1.0, "epochs_done": epochs}))
    return Checkpoint.from_directory(str(folder))


class Driver:
    """Calls the callback's hooks as Ray's TuneController does, timing each call."""

    def __init__(self, args: argparse.Namespace) -> None:
        from autoprune.tracking.callback import TrackingCallback

        self.args = args
        fixed = {**FIXED, "training": {**FIXED["training"], "epochs": args.epochs}}
        self.cb = TrackingCallback(
            args.uri, args.name, ("accuracy", "macs"), ("max", "min"), fixed,
            {"sampler": "nsga2", "objectives": "accuracy,macs", "num_samples": args.trials},
            f"name: load\nnum_samples: {args.trials}\n")
        self.trials: list[SimTrial] = []
        self.epoch_s: list[float] = []
        self.hook_s: Counter = Counter()
        self.hook_n: Counter = Counter()
        self.crashes: list[dict[str, Any]] = []
        self.events = 0
        self.kill_sent = False
        self.max_spooled = 0

    def call(self, hook: str, *args: Any) -> float:
        started = time.perf_counter()
        getattr(self.cb, hook)(*args)
        took = time.perf_counter() - started
        self.hook_s[hook] += took
        self.hook_n[hook] += 1
        return took

    def start_trial(self, trial: SimTrial, index: int) -> None:
        trial.status = "RUNNING"
        self.call("on_trial_start", self.events, self.trials, trial)
        if index >= self.args.models:  # only the first --models trials log their network
            self.cb._trials[trial.trial_id].tracking_uri = ""

    def run(self) -> dict[str, Any]:
        args = self.args
        rng = random.Random(args.seed)
        scratch = Path(tempfile.mkdtemp(prefix="tracking-load-ckpt-"))
        model = model_file(scratch)
        from ray.tune import Checkpoint

        (scratch / "epoch").mkdir()
        (scratch / "epoch" / "checkpoint.pt").write_bytes(b"\0" * 1024)
        epoch_ckpt = Checkpoint.from_directory(str(scratch / "epoch"))
        queue = list(range(args.trials))
        active: dict[str, tuple[SimTrial, int, int]] = {}  # id -> (trial, index, next epoch)
        wall0 = time.perf_counter()
        self.guard(lambda: self.call("setup", None, args.trials, args.trials))
        while queue or active:
            while queue and len(active) < args.in_flight:
                index = queue.pop(0)
                trial = SimTrial(f"{args.name[:12]}_{index:05d}", trial_config(index))
                self.trials.append(trial)
                active[trial.trial_id] = (trial, index, 1)
                self.guard(lambda t=trial, i=index: self.start_trial(t, i), active)
            trial, index, epoch = active[rng.choice(sorted(active))]
            self.events += 1
            if args.resume_on_error and self.events % 5 == 0:  # how much waits in the spool
                pending = getattr(self.cb.client, "pending", None)
                self.max_spooled = max(self.max_spooled, pending() if pending else 0)
            if args.kill_at and self.events == args.kill_at and not self.kill_sent:
                Path(args.kill_file).write_text(str(time.time()))  # the parent kills the server
                self.kill_sent = True
            if epoch <= args.epochs:
                result = epoch_result(trial, index, epoch, args.epochs)
                trial.last_result = result

                def report(t: SimTrial = trial, r: dict = result) -> None:
                    self.epoch_s.append(self.call("on_trial_result", self.events, self.trials,
                                                  t, r))
                    self.call("on_checkpoint", self.events, self.trials, t, epoch_ckpt)

                self.guard(report, active)
                active[trial.trial_id] = (trial, index, epoch + 1)
            else:  # the final report, its checkpoint, the end of the trial
                result = final_result(trial, index, args.epochs)
                trial.last_result = result
                checkpoint = final_checkpoint(scratch, model, trial, index, args.epochs)

                def finish(t: SimTrial = trial, r: dict = result, c: Any = checkpoint) -> None:
                    self.call("on_trial_result", self.events, self.trials, t, r)
                    self.call("on_checkpoint", self.events, self.trials, t, c)
                    t.checkpoint, t.status = c, "TERMINATED"
                    self.call("on_trial_complete", self.events, self.trials, t)

                self.guard(finish, active)
                del active[trial.trial_id]
                shutil.rmtree(scratch / trial.trial_id, ignore_errors=True)
            self.guard(lambda: self.call("on_step_end", self.events, self.trials), active)
        self.guard(lambda: self.call("on_experiment_end", self.trials))
        wall = time.perf_counter() - wall0
        shutil.rmtree(scratch, ignore_errors=True)
        return {"wall_s": wall, "epoch_s": self.epoch_s, "events": self.events,
                "hook_s": dict(self.hook_s), "hook_calls": dict(self.hook_n),
                "crashes": self.crashes, "experiment_id": str(self.cb.experiment_id),
                "max_spooled_calls": self.max_spooled}

    def guard(self, step: Any, active: dict | None = None) -> None:
        """Run one driver step. A hook that raises ends ``autoprune search``; with
        ``--resume-on-error`` the benchmark then resumes it as ``--resume`` would."""
        try:
            step()
            return
        except Exception as exc:  # noqa: BLE001 - recorded, then re-raised or resumed
            if not self.args.resume_on_error or len(self.crashes) >= 5:
                raise
            self.crashes.append({"at_event": self.events,
                                 "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        waited = wait_healthy(self.args.uri, 300)
        self.crashes[-1]["waited_for_server_s"] = round(waited, 2)
        self.cb = pickle.loads(pickle.dumps(self.cb))  # what Tuner.restore gets back
        self.call("setup", None, self.args.trials, self.args.trials)
        for trial, index, _ in (active or {}).values():  # Ray starts its trials again
            self.start_trial(trial, index)
        step()  # the step that failed, again (Ray reports from the last checkpoint)


def wait_healthy(uri: str, timeout: float) -> float:
    started = time.monotonic()
    if not uri.startswith("http"):
        return 0.0
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{uri} not healthy after {timeout} s")


def worker(args: argparse.Namespace) -> int:
    """One search in this process (a part's search, or one search of the sweep)."""
    out: dict[str, Any] = {"name": args.name}
    try:
        out.update(Driver(args).run())
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the search failed: that is a result
        import traceback

        traceback.print_exc()
        out.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:500]}")
    Path(args.out).write_text(json.dumps(out))
    return 0


# --- the stores ----------------------------------------------------------------------------

def tests_module(name: str) -> Any:
    """A helper module of the tests (``tests/_processes.py``, ``tests/_postgres.py``): the
    suite's own ways to find ports and to run PostgreSQL."""
    folder = str(ROOT / "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def free_port() -> int:
    return int(tests_module("_processes").free_port())


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    tests_module("_processes").wait_for_port(port, timeout, process=proc)


class Stack:
    """The processes this benchmark started, stopped by their own process ids."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        with open(self.folder / f"{name}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen([str(a) for a in argv], stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=self.folder)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # its own session: the server and its workers
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.kill(proc, signal.SIGTERM if proc is not self.procs[0] else signal.SIGINT)


class Postgres:
    """A throw-away PostgreSQL cluster: initdb in a temporary folder, trust auth,
    127.0.0.1 only (as root: run as ``postgres``)."""

    def __init__(self, stack: Stack) -> None:
        _postgres = tests_module("_postgres")  # the test fixture's way to run PostgreSQL
        self.bindir, self.stack = _postgres.bindir(), stack
        self.folder, as_owner = _postgres.owned_folder("tracking-load-pg-")
        self.port = free_port()
        subprocess.run(_postgres.initdb_argv(as_owner, self.folder / "data"), check=True,
                       capture_output=True, timeout=300)
        self.proc = stack.start("postgres", _postgres.server_argv(
            as_owner, self.folder, self.port,
            {"max_connections": "300", "shared_buffers": "256MB"}))
        wait_port(self.port, 120, self.proc)
        time.sleep(1.0)

    def createdb(self, name: str) -> str:
        subprocess.run([self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "mlflow", name], check=True, capture_output=True, timeout=120)
        return f"postgresql://mlflow@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on a PostgreSQL database with proxied artifacts."""

    def __init__(self, stack: Stack, db_uri: str, artifacts: Path, workers: int) -> None:
        self.stack, self.db_uri, self.artifacts, self.workers = stack, db_uri, artifacts, workers
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        subprocess.run([MLFLOW_BIN, "db", "upgrade", db_uri], check=True, capture_output=True,
                       timeout=600)
        self.upgrade_s = time.perf_counter() - started
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> float:
        started = time.perf_counter()
        self.proc = self.stack.start(f"mlflow-{self.port}", [
            MLFLOW_BIN, "server", "--backend-store-uri", self.db_uri, "--serve-artifacts",
            "--artifacts-destination", self.artifacts, "--host", "127.0.0.1",
            "--port", self.port, "--workers", self.workers])
        wait_port(self.port, 180, self.proc)
        wait_healthy(self.uri, 180)
        return time.perf_counter() - started

    def kill(self) -> None:
        assert self.proc is not None
        self.stack.kill(self.proc, signal.SIGKILL)


# --- checking the store --------------------------------------------------------------------

def connect(store: dict[str, Any]) -> tuple[Any, str]:
    if store["kind"] == "sqlite":
        import sqlite3

        return sqlite3.connect(store["db_path"], timeout=120), "?"
    import psycopg

    return psycopg.connect(store["db_uri"]), "%s"


def verify(store: dict[str, Any], name: str, trials: int, epochs: int,
           models: int) -> dict[str, Any]:
    """Every expected metric value of every trial in the store exactly once?"""
    from mlflow.entities import LoggedModelStatus

    started = time.perf_counter()
    db, mark = connect(store)
    try:
        def rows(sql: str, *params: Any) -> list[tuple]:
            return list(db.execute(sql.replace("?", mark), params).fetchall())

        found = rows("SELECT experiment_id FROM experiments WHERE name = ?", name)
        if not found:
            return {"error": f"experiment {name!r} not in the store"}
        exp = found[0][0]
        runs = rows("SELECT r.run_uuid, t.value, r.status, r.artifact_uri FROM runs r "
                    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'autoprune.trial_id' "
                    "WHERE r.experiment_id = ?", exp)
        status = dict(rows("SELECT t.run_uuid, t.value FROM tags t JOIN runs r ON "
                           "r.run_uuid = t.run_uuid WHERE r.experiment_id = ? AND "
                           "t.key = 'autoprune.status'", exp))
        stored: dict[str, Counter] = {}
        for run, key, step, value, count in rows(
                "SELECT m.run_uuid, m.key, m.step, m.value, COUNT(*) FROM metrics m JOIN runs r "
                "ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ? "
                "GROUP BY m.run_uuid, m.key, m.step, m.value", exp):
            stored.setdefault(run, Counter())[(key, int(step), float(value))] += int(count)
        ready = LoggedModelStatus.READY.to_int()
        model_runs = {r[0] for r in rows(
            "SELECT source_run_id FROM logged_models WHERE experiment_id = ? AND name = 'model' "
            "AND status = ?", exp, ready)}
        model_tags = {r[0] for r in rows(
            "SELECT t.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid WHERE "
            "r.experiment_id = ? AND t.key = 'autoprune.model_uri'", exp)}
        model_errors = rows(
            "SELECT t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid WHERE "
            "r.experiment_id = ? AND t.key = 'autoprune.model_error'", exp)
        parents = rows("SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = "
                       "r.run_uuid AND t.key = 'autoprune.search_status' "
                       "WHERE r.experiment_id = ?", exp)
    finally:
        db.close()
    by_trial: dict[str, list[tuple]] = {}
    for run in runs:
        by_trial.setdefault(run[1], []).append(run)
    lost = duplicated = unexpected = expected_total = stored_total = 0
    missing_runs = duplicate_runs = not_completed = artifacts_missing = 0
    prefix = name[:12]
    for index in range(trials):
        want = expected_metrics(index, epochs)
        expected_total += sum(want.values())
        found_runs = by_trial.get(f"{prefix}_{index:05d}", [])
        if not found_runs:
            missing_runs += 1
            lost += sum(want.values())
            continue
        duplicate_runs += len(found_runs) - 1
        got: Counter = Counter()
        for run in found_runs:
            got.update(stored.get(run[0], Counter()))
        stored_total += sum(got.values())
        for item, n in want.items():
            lost += max(0, n - got.get(item, 0))
            duplicated += max(0, got.get(item, 0) - n)
        unexpected += sum(n for item, n in got.items() if item not in want)
        run = found_runs[0]
        if status.get(run[0]) != "completed" or run[2] != "FINISHED":
            not_completed += 1
        folder = artifact_folder(store, run[3])
        if not all((folder / f).is_file() for f in ("model.pt", "summary.json")):
            artifacts_missing += 1
    child_ids = {r[0] for r in runs}
    want_models = {by_trial[f"{prefix}_{i:05d}"][0][0] for i in range(min(models, trials))
                   if by_trial.get(f"{prefix}_{i:05d}")}
    return {
        "values_expected": expected_total, "values_stored": stored_total,
        "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
        "runs_expected": trials, "runs_found": len(child_ids), "runs_missing": missing_runs,
        "runs_duplicated": duplicate_runs, "runs_not_completed": not_completed,
        "artifacts_missing": artifacts_missing,
        "models_expected": len(want_models), "models_logged": len(model_runs & want_models),
        "models_tagged": len(model_tags & want_models), "model_errors": len(model_errors),
        "model_error_examples": sorted({e[0][:160] for e in model_errors})[:3],
        "parent_runs": [list(p) for p in parents], "verify_s": time.perf_counter() - started,
    }


def artifact_folder(store: dict[str, Any], uri: str) -> Path:
    if uri.startswith("mlflow-artifacts:"):
        return Path(store["artifacts"]) / uri.split(":", 1)[1].lstrip("/")
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return Path(uri)


# --- running searches ------------------------------------------------------------------------

def latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(math.ceil(p * len(ordered))) - 1)]

    return {"n": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * pct(0.95), "p99_ms": 1000 * pct(0.99),
            "max_ms": 1000 * ordered[-1], "mean_ms": 1000 * statistics.fmean(ordered)}


def worker_argv(args: argparse.Namespace, uri: str, name: str, out: Path, trials: int,
                epochs: int, in_flight: int, models: int, **extra: Any) -> list[str]:
    argv = [PYTHON, str(Path(__file__).resolve()), "--worker", "--uri", uri, "--name", name,
            "--out", str(out), "--trials", str(trials), "--epochs", str(epochs),
            "--in-flight", str(in_flight), "--models", str(models), "--seed", str(args.seed)]
    for key, value in extra.items():
        if value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def worker_env(spool: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "AUTOPRUNE_SPOOL_DIR": str(spool), "PYTHONPATH": str(ROOT),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "RAY_DEDUP_LOGS": "0"}
    env.update(extra)
    return env


def stderr_counts(text: str) -> dict[str, int]:
    return {"retry_warnings": text.count("retrying for up to"),
            "spool_warnings": text.count("logging goes to"),
            "replayed_messages": text.count("every spooled call was sent"),
            "left_in_spool_warnings": text.count("could not reach")}


def one_search(args: argparse.Namespace, store: dict[str, Any], name: str, work: Path,
               env_extra: dict[str, str] | None = None, on_kill: Any = None,
               **extra: Any) -> dict[str, Any]:
    """A full-size search in a process of its own, then the store checked."""
    out, spool = work / f"{name}.json", work / f"spool-{name}"
    log = work / f"{name}.stderr"
    started = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            worker_argv(args, store["uri"], name, out, args.trials, args.epochs,
                        args.in_flight, args.models, **extra),
            env=worker_env(spool, **(env_extra or {})), stdout=err, stderr=subprocess.STDOUT,
            cwd=work)
        kill_file = extra.get("kill_file")
        while proc.poll() is None:
            if kill_file and on_kill and Path(kill_file).is_file():
                on_kill()
                on_kill = None
            time.sleep(0.2)
    process_wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if not out.is_file():
        return {"ok": False, "error": "the worker wrote no result", "stderr_tail": text[-3000:]}
    raw = json.loads(out.read_text())
    result: dict[str, Any] = {
        "ok": raw.get("ok", False), "error": raw.get("error"),
        "trials": args.trials, "epochs": args.epochs, "in_flight": args.in_flight,
        "wall_s": raw.get("wall_s"), "process_wall_s": process_wall,
        "epoch_log": latency(raw.get("epoch_s", [])),
        "hook_total_s": {k: round(v, 3) for k, v in raw.get("hook_s", {}).items()},
        "hook_calls": raw.get("hook_calls", {}), "crashes": raw.get("crashes", []),
        "max_spooled_calls": raw.get("max_spooled_calls", 0),
        "spool_left": spool_pending(spool), **stderr_counts(text)}
    if not result["ok"]:
        result["stderr_tail"] = text[-3000:]
    result["verify"] = verify(store, name, args.trials, args.epochs, args.models)
    return result


def spool_pending(spool: Path) -> int:
    total = 0
    for path in spool.rglob("calls.jsonl") if spool.exists() else []:
        total += sum(1 for line in path.read_text().splitlines() if line.strip())
    return total


def sqlite_store(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    from autoprune.search.store import open_client

    open_client(uri).search_experiments()  # creates the schema once, before any writer
    return {"kind": "sqlite", "uri": uri, "db_path": str(db),
            "artifacts": str(folder / "mlartifacts")}


def part_postgres(args: argparse.Namespace, stack: Stack, pg: Postgres,
                  work: Path) -> dict[str, Any]:
    db_uri = pg.createdb("load")
    server = MlflowServer(stack, db_uri, work / "pg-artifacts", args.server_workers)
    store = {"kind": "postgres", "uri": server.uri, "db_uri": db_uri,
             "artifacts": str(work / "pg-artifacts")}
    result = one_search(args, store, "load-postgres", work)
    result["store"] = {"uri": "mlflow server (PostgreSQL, proxied artifacts)",
                       "server_workers": args.server_workers,
                       "db_upgrade_s": round(server.upgrade_s, 2)}
    server.kill()
    return result


def part_sqlite(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    store = sqlite_store(work / "sqlite")
    result = one_search(args, store, "load-sqlite", work)
    result["store"] = {"uri": "sqlite:///.../mlflow.db (no server)",
                       "db_bytes": Path(store["db_path"]).stat().st_size}
    return result


def part_restart(args: argparse.Namespace, stack: Stack, pg: Postgres,
                 work: Path, defaults: bool = False) -> dict[str, Any]:
    """The server killed and restarted mid-search. ``defaults``: with autoprune's and
    MLflow's default retries (the outage is waited out) instead of a short window."""
    name = "restartdef" if defaults else "restart"
    db_uri = pg.createdb(name)
    server = MlflowServer(stack, db_uri, work / "restart-artifacts", args.server_workers)
    store = {"kind": "postgres", "uri": server.uri, "db_uri": db_uri,
             "artifacts": str(work / "restart-artifacts")}
    kill_file = work / "kill-now"
    total_events = args.trials * (args.epochs + 1)
    kill_at = max(1, int(total_events * args.kill_fraction))
    outage: dict[str, Any] = {}

    def restart_later() -> None:
        time.sleep(args.down_s)
        outage["restart_s"] = round(server.start(), 2)
        outage["back_after_s"] = round(time.time() - outage["killed_at"], 2)

    def on_kill() -> None:
        server.kill()
        outage["killed_at"] = time.time()
        outage["killed_at_event"] = kill_at
        thread = threading.Thread(target=restart_later, daemon=True)
        thread.start()
        outage["thread"] = thread

    env = {} if defaults else {"AUTOPRUNE_MLFLOW_RETRY_S": str(args.retry_s),
                               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = one_search(args, store, f"load-{name}", work, env_extra=env,
                        on_kill=on_kill, kill_at=kill_at, kill_file=str(kill_file),
                        resume_on_error=True)
    thread = outage.pop("thread", None)
    if thread is not None:
        thread.join()
    outage.pop("killed_at", None)
    result["outage"] = {**outage, "down_s": args.down_s, "total_events": total_events,
                        "retry_s": "default (600)" if defaults else args.retry_s,
                        "mlflow_http_request_max_retries": "default" if defaults else 0}
    server.kill()
    return result


def sweep_level(args: argparse.Namespace, store: dict[str, Any], level: int, work: Path,
                tag: str) -> dict[str, Any]:
    folder = work / f"sweep-{tag}-{level}"
    folder.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + 10_000  # replaced once every worker has imported
    procs = []
    names = [f"sweep-{tag}-{level}-{i}" for i in range(level)]
    go = folder / "start_at"
    for name in names:
        out = folder / f"{name}.json"
        argv = worker_argv(args, store["uri"], name, out, args.sweep_trials, args.sweep_epochs,
                           args.sweep_in_flight, 0, start_at_file=str(go))
        with open(folder / f"{name}.stderr", "wb") as err:  # the child keeps its own copy
            procs.append((name, out, subprocess.Popen(
                argv, env=worker_env(folder / f"spool-{name}"), stdout=err,
                stderr=subprocess.STDOUT, cwd=folder)))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not all(
            (folder / f"{n}.json.ready").is_file() or p.poll() is not None
            for n, _, p in procs):
        time.sleep(0.2)
    start_at = time.time() + 1.0
    go.write_text(str(start_at))
    for _, _, proc in procs:
        proc.wait()
    searches, epoch_s, errors, walls = [], [], [], []
    counts: Counter = Counter()
    lost = duplicated = unexpected = 0
    for name, out, _ in procs:
        text = (folder / f"{name}.stderr").read_text(errors="replace")
        counts.update(stderr_counts(text))
        if not out.is_file():
            errors.append(f"{name}: no result ({text[-300:]})")
            continue
        raw = json.loads(out.read_text())
        if not raw.get("ok"):
            errors.append(f"{name}: {raw.get('error')}")
        epoch_s += raw.get("epoch_s", [])
        if raw.get("wall_s"):
            walls.append(raw["wall_s"])
        check = verify(store, name, args.sweep_trials, args.sweep_epochs, 0)
        lost += check.get("lost", 0)
        duplicated += check.get("duplicated", 0)
        unexpected += check.get("unexpected", 0)
        searches.append({"name": name, "ok": raw.get("ok"), "wall_s": raw.get("wall_s"),
                         "epoch_log": latency(raw.get("epoch_s", [])),
                         "lost": check.get("lost"), "duplicated": check.get("duplicated")})
    stats = latency(epoch_s)
    return {"concurrency": level, "searches_failed": len(errors), "errors": errors[:5],
            "epoch_log": stats, "wall_s_max": max(walls) if walls else None,
            "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
            **dict(counts), "searches": searches,
            "keeps_up": not errors and stats.get("p95_ms", 1e9) <= 1000 * P95_LIMIT_S}


def part_sweep(args: argparse.Namespace, stack: Stack, pg: Postgres | None,
               work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"trials_per_search": args.sweep_trials,
                           "epochs": args.sweep_epochs, "in_flight": args.sweep_in_flight,
                           "p95_limit_s": P95_LIMIT_S}
    for tag in args.sweep_stores:
        if tag == "sqlite":
            store = sqlite_store(work / "sweep-sqlite")
        else:
            assert pg is not None
            db_uri = pg.createdb("sweep")
            server = MlflowServer(stack, db_uri, work / "sweep-artifacts", args.server_workers)
            store = {"kind": "postgres", "uri": server.uri, "db_uri": db_uri,
                     "artifacts": str(work / "sweep-artifacts")}
        levels, limit = [], None
        load, started = os.getloadavg()[0], time.perf_counter()
        for level in args.sweep:
            print(f"  sweep {tag}: {level} searches at once", flush=True)
            row = sweep_level(args, store, level, work, tag)
            levels.append(row)
            print(f"    p95 {row['epoch_log'].get('p95_ms', float('nan')):.0f} ms, "
                  f"failed {row['searches_failed']}, lost {row['lost']}, "
                  f"duplicated {row['duplicated']}", flush=True)
            if not row["keeps_up"]:
                limit = level
                break
        out[tag] = {"levels": levels, "limit": limit,
                    "last_keeping_up": max((r["concurrency"] for r in levels if r["keeps_up"]),
                                           default=None),
                    "load_average_before": round(load, 2),
                    "wall_s": round(time.perf_counter() - started, 1)}
        if tag != "sqlite":
            server.kill()
    return out


# --- the report ------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(data: dict[str, Any]) -> str:
    lines = [f"tracking load ({data.get('measured_at', '?')}, {data.get('machine', {})})", ""]
    head = (f"{'store':<22}{'trials x epochs':>16}{'in flight':>10}{'wall s':>9}"
            f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'values':>10}{'lost':>6}{'dup':>5}"
            f"{'models':>8}{'ok':>4}")
    lines += [head, "-" * len(head)]
    for key, label in (("postgres", "PostgreSQL server"), ("sqlite", "SQLite (default)"),
                       ("restart", "server restarted"),
                       ("restart_default", "restarted, def. retry")):
        row = data.get("parts", {}).get(key)
        if not row:
            continue
        v, lat = row.get("verify", {}), row.get("epoch_log", {})
        lines.append(
            f"{label:<22}{row['trials']:>8,} x {row['epochs']:<5}{row['in_flight']:>10}"
            f"{fmt(row.get('wall_s')):>9}{fmt(lat.get('p50_ms'), 1):>9}"
            f"{fmt(lat.get('p95_ms'), 1):>9}{fmt(lat.get('p99_ms'), 1):>9}"
            f"{fmt(v.get('values_expected')):>10}{fmt(v.get('lost')):>6}"
            f"{fmt(v.get('duplicated')):>5}"
            f"{fmt(v.get('models_logged')) + '/' + fmt(v.get('models_expected')):>8}"
            f"{'yes' if row.get('ok') else 'NO':>4}")
    for key in ("restart", "restart_default"):
        restart = data.get("parts", {}).get(key)
        if not restart:
            continue
        o = restart.get("outage", {})
        lines += ["", f"{key}: server killed at event {fmt(o.get('killed_at_event'))} of "
                  f"{fmt(o.get('total_events'))}, answering again after "
                  f"{fmt(o.get('back_after_s'), 1)} s (AUTOPRUNE_MLFLOW_RETRY_S="
                  f"{o.get('retry_s')}); calls spooled at most {restart.get('max_spooled_calls')}, "
                  f"left in spool "
                  f"{restart.get('spool_left')}; driver stops resumed: "
                  f"{len(restart.get('crashes', []))}; unexpected "
                  f"{restart.get('verify', {}).get('unexpected')}, duplicate runs "
                  f"{restart.get('verify', {}).get('runs_duplicated')}"]
    sweep = data.get("parts", {}).get("sweep")
    if sweep:
        lines += ["", f"concurrent searches on one store ({sweep['trials_per_search']} trials x "
                  f"{sweep['epochs']} epochs each, {sweep['in_flight']} in flight each)"]
        head = (f"{'store':<10}{'searches':>9}{'p50 ms':>9}{'p95 ms':>10}{'max ms':>10}"
                f"{'failed':>8}{'lost':>6}{'dup':>5}{'retry warn':>11}{'keeps up':>9}")
        lines += [head, "-" * len(head)]
        for tag in ("sqlite", "postgres"):
            for row in sweep.get(tag, {}).get("levels", []):
                lat = row["epoch_log"]
                lines.append(
                    f"{tag:<10}{row['concurrency']:>9}{fmt(lat.get('p50_ms'), 1):>9}"
                    f"{fmt(lat.get('p95_ms'), 1):>10}{fmt(lat.get('max_ms'), 0):>10}"
                    f"{row['searches_failed']:>8}{row['lost']:>6}{row['duplicated']:>5}"
                    f"{row.get('retry_warnings', 0):>11}{'yes' if row['keeps_up'] else 'NO':>9}")
            if tag in sweep and sweep[tag]["limit"] is None:
                lines.append(f"  {tag}: keeps up at every concurrency tried (p95 <= "
                             f"{P95_LIMIT_S:.0f} s, no failed search)")
            elif tag in sweep:
                lines.append(f"  {tag}: stops keeping up at {fmt(sweep[tag]['limit'])} "
                             f"concurrent searches (last that kept up: "
                             f"{fmt(sweep[tag]['last_keeping_up'])})")
    return "\n".join(lines)


def save_part(path: Path, data: dict[str, Any], part: str, result: dict[str, Any]) -> None:
    """Write this part into the JSON, keeping the parts another run wrote meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({k: v for k, v in data.items() if k != "parts"})
    parts = current.setdefault("parts", {})
    if part == "sweep":  # one store's sweep keeps the other store's
        result = {**parts.get("sweep", {}), **result}
    parts[part] = result
    path.write_text(json.dumps(current, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--models", type=int, default=100,
                        help="the first N trials log their network as an MLflow model")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--restart-trials", type=int, default=None,
                        help="trials of the restart variant (default: --trials)")
    parser.add_argument("--restart-epochs", type=int, default=None,
                        help="epochs of the restart variant (default: --epochs)")
    parser.add_argument("--restart-models", type=int, default=10)
    parser.add_argument("--kill-fraction", type=float, default=0.4)
    parser.add_argument("--down-s", type=float, default=5.0)
    parser.add_argument("--retry-s", type=float, default=2.0)
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sweep-stores", nargs="+", default=["sqlite"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--sweep-trials", type=int, default=40)
    parser.add_argument("--sweep-epochs", type=int, default=20)
    parser.add_argument("--sweep-in-flight", type=int, default=8)
    parser.add_argument("--server-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out-json", default=str(RESULTS))
    # one search in this process (used by the parts)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kill-file", help=argparse.SUPPRESS)
    parser.add_argument("--resume-on-error", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.start_at_file:
            import ray.tune  # noqa: F401  - imports done before the common start

            import autoprune.tracking.callback  # noqa: F401

            Path(args.out + ".ready").write_text("1")
            go = Path(args.start_at_file)
            while not go.is_file():
                time.sleep(0.05)
            start_at = float(go.read_text() or 0)
            while time.time() < start_at:
                time.sleep(0.02)
        return worker(args)
    path = Path(args.out_json)
    data = json.loads(path.read_text()) if path.is_file() else {}
    if args.report_only:
        print(report(data))
        return 0
    work = Path(tempfile.mkdtemp(prefix="tracking-load-"))
    stack = Stack(work)
    pg: Postgres | None = None
    import mlflow

    data.setdefault("parts", {})
    data.update(benchmark="tracking_load", measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
                machine={"cpus": os.cpu_count(), "python": platform.python_version(),
                         "mlflow": mlflow.__version__, "platform": platform.platform()})
    try:
        needs_pg = any(p in args.parts for p in ("postgres", "restart", "restart_default")) or (
            "sweep" in args.parts and "postgres" in args.sweep_stores)
        if needs_pg:
            pg = Postgres(stack)
        for part in args.parts:
            load = os.getloadavg()[0]
            print(f"{part} (load average {load:.1f})", flush=True)
            started = time.perf_counter()
            if part == "postgres":
                result = part_postgres(args, stack, pg, work)  # type: ignore[arg-type]
            elif part == "sqlite":
                result = part_sqlite(args, work)
            elif part in ("restart", "restart_default"):
                full = (args.trials, args.epochs, args.models)
                args.trials = args.restart_trials or args.trials
                args.epochs = args.restart_epochs or args.epochs
                args.models = min(args.models, args.restart_models)
                try:
                    result = part_restart(args, stack, pg, work,  # type: ignore[arg-type]
                                          defaults=part == "restart_default")
                finally:
                    args.trials, args.epochs, args.models = full
            else:
                result = part_sweep(args, stack, pg, work)
            result["load_average_before"] = round(load, 2)
            result["part_wall_s"] = round(time.perf_counter() - started, 1)
            data["parts"][part] = result
            save_part(path, data, part, result)
            print(report({"parts": {part: result}}).split("\n", 2)[2], flush=True)
    finally:
        stack.stop_all()
        if pg is not None:
            pg.cleanup()
        if not os.environ.get("TRACKING_LOAD_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faults during a search, staged for real: a trial's Ray worker killed with SIGKILL, the
MLflow tracking server killed and restarted mid-search; plus the safety defaults.

The searches use the test process's shared local Ray (``ray_session`` in conftest.py); the
drivers that are killed run as subprocesses that join it with ``--address``.
Related coverage elsewhere (not repeated here):

- a NaN/inf loss: ``tests/test_engine.py`` (``TrainingDiverged``) and
  ``tests/test_search_e2e.py::test_failing_trials_do_not_stop_the_search`` (failed,
  ``autoprune.diverged=true``, never on the front);
- the driver killed with SIGKILL, then ``--resume``: here, in
  ``test_spooled_results_reach_mlflow_once_after_a_crash_and_resume`` (with the tracking
  server down as well), in stage 2 of a two-stage search in ``tests/test_search_e2e.py``
  and in a MOASHA search in ``tests/test_search_moasha.py``;
- bad input: ``tests/test_bad_input.py``; a Ray node lost: the last test of
  ``tests/test_cluster_e2e.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from _mlflow import mlflow_server
from _processes import Processes, descendants, free_port, wait_for_port

from autoprune.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPACE: dict[str, Any] = {
    "num_samples": 1, "sampler": "random", "seed": 0, "max_concurrent": 1,
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 6, "batch_size": 8, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {"filter": {"target_ratio": 0.5, "end_epoch": 2}}},
}


# --- helpers ---------------------------------------------------------------------------------

def search(folder: Path, space: dict[str, Any], name: str, uri: str | None = None,
           *flags: str) -> tuple[int, str]:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    uri = uri or f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["search", str(path), "--name", name, "--tracking-uri", uri,
                 "--storage-path", str(folder / "ray"), *flags])
    return code, uri


def results(folder: Path, name: str) -> list[dict[str, Any]]:
    """Ray's record of every result of the search's (only) trial, across restarts."""
    files = list((folder / "ray" / name).glob("trial_*/result.json"))
    if not files:
        return []
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def trial_workers() -> list[int]:
    """This process's Ray workers that run a trial (``ray::ImplicitFunc...``)."""
    out = []
    for pid in descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                out.append(pid)
        except OSError:
            continue
    return out


def kill_after_epochs(folder: Path, name: str, epochs: int, killed: list[int]) -> None:
    """SIGKILL the trial's worker once Ray holds ``epochs`` epochs (and their checkpoints)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len(results(folder, name)) >= epochs and (
                list((folder / "ray" / name).glob("trial_*/checkpoint_*"))):
            for pid in trial_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        time.sleep(0.05)


def the_child(uri: str, name: str) -> Any:
    from autoprune.search.store import RunLookup, open_client

    client = open_client(uri)
    (child,) = RunLookup(client, client.get_experiment_by_name(name).experiment_id).children()
    return client, child


# --- 1. a trial that crashes mid-run ------------------------------------------------------

@pytest.mark.slow
def test_crashed_trial_without_retries_is_failed_with_its_error(ray_session: str,
                                                                tmp_path: Path) -> None:
    killed: list[int] = []
    watcher = threading.Thread(target=kill_after_epochs, args=(tmp_path, "nore", 2, killed))
    watcher.start()
    code, uri = search(tmp_path, SPACE, "nore", None, "--max-failures", "0")
    watcher.join()
    assert killed, "the trial was not killed mid-run"
    assert code == 0  # the search itself ends normally: one trial failed
    client, child = the_child(uri, "nore")
    tags = child.data.tags
    assert tags["autoprune.status"] == "failed" and child.info.status == "FAILED"
    assert tags["autoprune.error"] and tags["autoprune.diverged"] == "false"
    error = Path(client.download_artifacts(child.info.run_id, "error.txt", str(tmp_path)))
    assert re.search(r"died|exit|killed|lost", error.read_text(), re.I), error.read_text()
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "accuracy"))
    assert steps[:2] == [1, 2] and len(steps) < 6  # what it did before the crash is kept


@pytest.mark.slow
def test_retried_trial_resumes_from_its_checkpoint_in_its_pruned_shape(
        ray_session: str, tmp_path: Path) -> None:
    killed: list[int] = []
    watcher = threading.Thread(target=kill_after_epochs, args=(tmp_path, "retry", 2, killed))
    watcher.start()
    space = {**SPACE, "max_failures": 1}  # retries from the space file
    code, uri = search(tmp_path, space, "retry")
    watcher.join()
    assert code == 0 and killed, "the trial was not killed mid-run"
    rows = results(tmp_path, "retry")
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, [(r["epoch"], r["iterations_since_restore"]) for r in rows]
    before, first = rows[restarts[1] - 1], rows[restarts[1]]
    assert first["epoch"] > 1 and first["epoch"] == before["epoch"] + 1  # not from scratch
    final = rows[-1]
    assert final["is_final"] and final["trial_status"] == "completed"
    # Pruning ended at epoch 2: the retry starts in the pruned shape, not the dense one.
    assert first["macs"] == before["macs"] < final["dense_macs"]
    assert final["macs"] == before["macs"]
    client, child = the_child(uri, "retry")
    assert child.data.tags["autoprune.status"] == "completed"
    assert child.data.tags["autoprune.retries"] == "1"
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "accuracy"))
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # every epoch once, plus the final value


# --- 5. the MLflow tracking server goes away mid-search ------------------------------------

@pytest.mark.slow
def test_tracking_server_restarted_mid_search_loses_nothing(
        ray_session: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # MLflow's own HTTP retries off: the outage is ridden out by autoprune's retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("AUTOPRUNE_SPOOL_DIR", str(tmp_path / "spool"))
    procs = Processes(tmp_path / "logs", paths=[str(tmp_path)])
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    space = {**SPACE, "num_samples": 2}
    space["fixed"] = {**SPACE["fixed"], "training": {**SPACE["fixed"]["training"],
                                                     "epochs": 4, "batch_size": 16}}
    outage: dict[str, float] = {}

    def kill_and_restart() -> None:
        deadline = time.monotonic() + 240
        while len(results(tmp_path, "outage")) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(procs.started[0].popen.pid, signal.SIGKILL)
        procs.started[0].popen.wait()
        outage["down"] = time.monotonic()
        time.sleep(4)  # epochs are reported meanwhile; the driver must hold on to them
        mlflow_server(procs, tmp_path, port, "server2")
        outage["up"] = time.monotonic()

    try:
        mlflow_server(procs, tmp_path, port, "server1")
        watcher = threading.Thread(target=kill_and_restart)
        watcher.start()
        code, _ = search(tmp_path, space, "outage", uri)
        watcher.join()
        assert code == 0 and "up" in outage
        err = capsys.readouterr().err
        assert "MLflow does not answer" in err and "MLflow answers again" in err, err
        from autoprune.search.store import RunLookup, open_client

        client = open_client(uri)
        lookup = RunLookup(client, client.get_experiment_by_name("outage").experiment_id)
        children = lookup.children()
        ids = [c.data.tags["autoprune.trial_id"] for c in children]
        assert len(ids) == 2 == len(set(ids))
        for child in children:
            assert child.data.tags["autoprune.status"] == "completed"
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "macs"))
            assert steps == [1, 2, 3, 4, 4], steps
            assert "model.pt" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert lookup.parent().data.tags["autoprune.search_status"] == "completed"
        assert not (tmp_path / "spool").exists()  # nothing left behind unsent
    finally:
        assert procs.stop_all() == []


@pytest.mark.slow
def test_spooled_results_reach_mlflow_once_after_a_crash_and_resume(ray_session: str,
                                                                   tmp_path: Path) -> None:
    """The server goes down mid-search, results pile up in the spool, the driver is killed;
    the server comes back, ``--resume`` sends the spool: every epoch of every trial is in
    MLflow exactly once, nothing is left in the spool, and the trial completed before the
    kill keeps its run (it is not trained again). Both drivers join the test's Ray
    (``--address``) as drivers join a cluster: the killed one's trials end with it."""
    from autoprune.search.store import RunLookup, open_client

    procs = Processes(tmp_path / "logs", paths=[str(tmp_path)])
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    space = {**SPACE, "num_samples": 3}
    space["fixed"] = {**SPACE["fixed"], "training": {**SPACE["fixed"]["training"],
                                                     "epochs": 4, "batch_size": 16}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    spool = tmp_path / "spool"
    env = {"AUTOPRUNE_SPOOL_DIR": str(spool), "AUTOPRUNE_MLFLOW_RETRY_S": "2",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    argv = [sys.executable, "-m", "autoprune", "search", str(tmp_path / "space.yaml"),
            "--name", "spooled", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
            "--address", ray_session]

    def trial_lines() -> list[int]:
        files = sorted((tmp_path / "ray" / "spooled").glob("trial_*/result.json"))
        return [len(f.read_text().splitlines()) for f in files]

    def completed() -> dict[str, str]:
        client = open_client(uri)
        experiment = client.get_experiment_by_name("spooled")
        children = RunLookup(client, experiment.experiment_id).children() if experiment else []
        return {c.data.tags["autoprune.trial_id"]: c.info.run_id for c in children
                if c.data.tags.get("autoprune.status") == "completed"}

    try:
        server = mlflow_server(procs, tmp_path, port, "server1")
        first = procs.start("search1", argv, env=env)
        deadline = time.monotonic() + 240
        while not (len(trial_lines()) >= 2 and trial_lines()[1] >= 1):  # trial 2 is training
            assert first.popen.poll() is None and time.monotonic() < deadline, first.tail()
            time.sleep(0.1)
        while not (before := completed()):  # trial 1's end is logged
            assert time.monotonic() < deadline, first.tail()
            time.sleep(0.2)
        os.killpg(server.popen.pid, signal.SIGKILL)
        server.popen.wait()
        while not any(spool.rglob("*")):  # writes outlive the 2 s retry window: spooled
            assert time.monotonic() < deadline, first.tail()
            time.sleep(0.2)
        settle = time.monotonic() + 2  # more results go to the spool (or the driver stops)
        while first.popen.poll() is None and time.monotonic() < settle:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait()
        assert any(spool.rglob("*")), "the spool was emptied without a server"
        mlflow_server(procs, tmp_path, port, "server2")
        code, output = procs.run("search2", [*argv, "--resume"], env=env, timeout=300)
        assert code == 0, output
        client = open_client(uri)
        lookup = RunLookup(client, client.get_experiment_by_name("spooled").experiment_id)
        children = lookup.children()
        ids = [c.data.tags["autoprune.trial_id"] for c in children]
        assert len(ids) == 3 == len(set(ids)), ids
        for child in children:
            assert child.data.tags["autoprune.status"] == "completed"
            for key in ("accuracy", "macs"):
                steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
                assert steps == [1, 2, 3, 4, 4], (key, steps)  # every epoch once, plus final
        assert before.items() <= completed().items()  # the same run, not a rerun
        assert not spool.exists()  # everything was sent
        assert main(argv[3:]) == 2  # the name is taken now: no silent second search
    finally:
        assert procs.stop_all() == []


def test_unsent_calls_are_spooled_locally_and_replayed(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A server that stays away past the retry window: writes are kept in the spool folder,
    the user is told where, and they are sent in order once a store answers."""
    from mlflow.entities import Metric

    from autoprune.search.store import open_client
    from autoprune.tracking.spool import ResilientClient

    store = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = store.create_run(store.create_experiment("x")).info.run_id
    from mlflow import MlflowClient

    down = MlflowClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        client = ResilientClient(down, tmp_path / "spool", retry_s=1.0)
        client.set_tag(run_id, "autoprune.status", "running")
        folder = tmp_path / "art"
        folder.mkdir()
        (folder / "note.txt").write_text("kept")
        client.log_artifacts(run_id, str(folder))
        client.log_batch(run_id, metrics=[Metric("macs", 5.0, 1, 1), Metric("macs", 4.0, 2, 2)])
        client.set_terminated(run_id, "FINISHED")
        with pytest.raises(Exception):  # noqa: B017 - a read cannot be spooled
            client.get_run(run_id)
        assert client.pending() == 4
        err = capsys.readouterr().err
        assert err.count("logging goes to") == 1 and str(tmp_path / "spool") in err
        assert "MLflow does not answer" in err
        client.finish("http://down")
        assert "4 MLflow calls could not reach http://down" in capsys.readouterr().err
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    # The server is "back": the same spool, replayed into a client that answers.
    client._client = store
    assert client.replay() == 0 and not (tmp_path / "spool").exists()
    run = store.get_run(run_id)
    assert run.data.tags["autoprune.status"] == "running" and run.info.status == "FINISHED"
    assert [m.value for m in store.get_metric_history(run_id, "macs")] == [5.0, 4.0]
    assert [a.path for a in store.list_artifacts(run_id)] == ["note.txt"]


# --- 7. safety defaults -------------------------------------------------------------------

def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


@pytest.mark.slow
def test_ui_listens_on_localhost_only(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs", paths=[str(tmp_path)])
    port = free_port()
    try:
        proc = procs.start("ui", [sys.executable, "-m", "autoprune", "ui", "--tracking-uri",
                                  f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
                           cwd=tmp_path)
        wait_for_port(port, 120, process=proc.popen)
        assert _listening(port) == {"127.0.0.1"}, _listening(port)
    finally:
        assert procs.stop_all() == []


def _package_sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted((ROOT / "autoprune").rglob("*.py"))]


def test_no_unsafe_loading_in_the_package() -> None:
    """Model files load as tensors only; YAML is loaded safely; nothing is unpickled."""
    bad = []
    for path, text in _package_sources():
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start():text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                bad.append(f"{path.name}: {call}")
        for pattern in (r"yaml\.load\(", r"yaml\.unsafe_load", r"yaml\.full_load",
                        r"pickle\.loads?\(", r"cloudpickle\.loads?\(", r"Loader=yaml\.Loader",
                        r"UnsafeLoader", r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
            bad += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
    assert bad == []


def test_nothing_listens_beyond_localhost_by_default() -> None:
    """Every ``--host`` default in the command line is 127.0.0.1, and no code in the
    package names the all-interfaces address."""
    from autoprune.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore
        for action in sub._actions:
            if "--host" in action.option_strings:
                assert action.default == "127.0.0.1", name
    for path, text in _package_sources():
        assert "0.0.0.0" not in text and "'::'" not in text, path.name


def test_model_files_refuse_pickled_code(tmp_path: Path) -> None:
    """A ``model.pt`` that carries a pickled object is refused, not executed."""
    import torch

    import autoprune

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"anything": Payload()}, tmp_path / "model.pt")
    with pytest.raises(Exception):  # noqa: B017 - whichever error: it must not run
        autoprune.load_model(tmp_path / "model.pt")
    assert not (tmp_path / "pwned").exists()
    for loader in ("load_train_config",):
        (tmp_path / "evil.yaml").write_text(
            f"!!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
        from autoprune import config

        with pytest.raises(Exception):  # noqa: B017
            getattr(config, loader)(tmp_path / "evil.yaml")
        assert not (tmp_path / "pwned").exists()



# --- 2. an infinite loss (NaN: tests/test_engine.py, tests/test_search_e2e.py) --------------

@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_infinite_loss_is_diverged_too(value: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from autoprune.config import parse_train_config
    from autoprune.engine import TrainingDiverged, train
    from autoprune.methods import PruningMethod
    from autoprune.methods import base as methods_base
    from autoprune.search.trainable import failed_result

    class InfAtEpoch2(PruningMethod):
        name = "test_inf_at_epoch_2"

        def loss_term(self, ctx: Any) -> Any:
            return torch.tensor(float(value)) if ctx.epoch == 2 else None

    monkeypatch.setitem(methods_base._METHODS, InfAtEpoch2.name, InfAtEpoch2)
    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 200},
        "training": {"epochs": 3, "batch_size": 50}, "method": InfAtEpoch2.name})
    with pytest.raises(TrainingDiverged, match=r"loss became .*inf at epoch 2") as caught:
        train(config, tmp_path, progress=False)
    assert not (tmp_path / "summary.json").exists()  # never "completed"
    # What the trainable reports for it: failed and diverged, no objective values.
    result = failed_result({}, f"TrainingDiverged: {caught.value}", diverged=True)
    assert result["trial_status"] == "failed" and result["diverged"] is True
    assert all(v != v for v in (result["accuracy"], result["macs"]))  # NaN: off any front

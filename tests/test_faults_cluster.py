"""A Ray worker node lost mid-trial: its trial is rescheduled on the remaining node, from
its last checkpoint, and the search completes.

Two Ray nodes on loopback (``ray start --head`` and ``ray start --address``, one CPU each,
free ports, temp dirs of the test's own: separate from tests/test_cluster_e2e.py), the
search driver as a real ``autoprune search --address`` process; once a trial reports from
the worker node, that node's raylet is killed with SIGKILL, by process id. Everything the
test started is stopped by process id at the end, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from _processes import Processes, descendants, free_ports

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TRIALS = 3
SPACE: dict[str, Any] = {
    "num_samples": TRIALS, "sampler": "random", "seed": 0, "max_failures": 2,
    "resources": {"cpu": 1},
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 4, "batch_size": 8, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {"filter": {"target_ratio": {"low": 0.3, "high": 0.7},
                                        "end_epoch": 2}}},
}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _raylet(temp_dir: Path) -> int | None:
    """The raylet of the node started with ``--temp-dir temp_dir``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = _cmdline(int(entry))
            if "/raylet " in cmd.split(" --", 1)[0] + " " and str(temp_dir) in cmd:
                return int(entry)
    return None


def _results(storage: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in storage.glob("lost/trial_*/result.json"):
        lines = path.read_text().splitlines()
        out[path.parent.name] = [json.loads(line) for line in lines if line.strip()]
    return out


def test_lost_worker_node_reschedules_its_trial(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="apf-", dir="/tmp"))  # Ray's sockets: short paths
    procs = Processes(tmp_path / "logs", paths=[str(short)])
    gcs, head_agent, worker_agent = free_ports(3)
    storage = short / "shared"
    (tmp_path / "lost.yaml").write_text(yaml.safe_dump(SPACE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")
           and k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
              "--min-worker-port", "0", "--max-worker-port", "0"]
    try:
        procs.run("head", [BIN / "ray", "start", "--head", "--port", str(gcs),
                           "--include-dashboard=false", "--temp-dir", short / "head",
                           "--dashboard-agent-listen-port", str(head_agent), *common],
                  180, env=env, cwd=tmp_path)
        procs.run("worker", [BIN / "ray", "start", "--address", f"127.0.0.1:{gcs}",
                             "--temp-dir", short / "worker",
                             "--dashboard-agent-listen-port", str(worker_agent), *common],
                  180, env=env, cwd=tmp_path)
        worker_raylet = _raylet(short / "worker")
        assert worker_raylet is not None, "no raylet for the worker node"
        driver = procs.start("search", [
            BIN / "autoprune", "search", tmp_path / "lost.yaml", "--name", "lost",
            "--address", f"127.0.0.1:{gcs}", "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", storage], env=env,
            cwd=tmp_path)
        # Wait for a trial that runs on the worker node and has a checkpoint, then kill it.
        deadline = time.monotonic() + 300
        victim = None
        while victim is None:
            assert driver.popen.poll() is None, driver.tail()
            assert time.monotonic() < deadline, driver.tail()
            on_worker = [p for p in descendants(worker_raylet)
                         if _cmdline(p).startswith("ray::ImplicitFunc")]
            running = {t: rows for t, rows in _results(storage).items()
                       if rows and not rows[-1].get("is_final")}
            if on_worker and running:
                worker_node = _node_of(running, on_worker)
                if worker_node is not None:
                    victim = worker_node
                    os.kill(worker_raylet, signal.SIGKILL)
                    for pid in on_worker:
                        _kill(pid)
                    break
            time.sleep(0.2)
        killed_trial, dead_node = victim
        code = driver.popen.wait(timeout=420)
        output = driver.log.read_text()
        assert code == 0, output[-4000:]
        rows = _results(storage)
        assert len(rows) == TRIALS
        moved = rows[killed_trial]
        assert moved[-1]["is_final"] and moved[-1]["trial_status"] == "completed", moved[-1]
        assert moved[-1]["node_id"] != dead_node  # finished on the remaining node
        first_after = [r for r in moved if r["iterations_since_restore"] == 1]
        assert len(first_after) >= 2 and first_after[-1]["epoch"] > 1  # from its checkpoint
        from autoprune.search.store import RunLookup, open_client

        client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
        children = RunLookup(client, client.get_experiment_by_name("lost").experiment_id
                             ).children()
        status = {c.data.tags["autoprune.trial_id"]: c.data.tags for c in children}
        assert len(status) == TRIALS == len(children)
        assert all(t["autoprune.status"] == "completed" for t in status.values())
        tags = status[killed_trial.removeprefix("trial_")]
        assert int(tags["autoprune.retries"]) >= 1 and tags["autoprune.node_id"] != dead_node
    finally:
        survivors = procs.stop_all()
        shutil.rmtree(short, ignore_errors=True)
    assert survivors == [], survivors


def _node_of(running: dict[str, list[dict[str, Any]]],
             on_worker: list[int]) -> tuple[str, str] | None:
    """(trial folder, node id) of a running trial whose process (Ray records its ``pid``
    in every result) is one of the worker node's."""
    for trial, rows in running.items():
        if rows[-1].get("pid") in on_worker:
            return trial, str(rows[-1]["node_id"])
    return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

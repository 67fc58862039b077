"""End to end on a cluster: the docs' "Run on a cluster", run here command by command.

Every command of that page (docs/how-to/cluster.md) is read from it and run as written, with the
test's own addresses, ports and paths (both Ray nodes and the MLflow server on 127.0.0.1,
free ports, temporary folders) plus what two Ray nodes on one machine need (a
``--temp-dir`` and free agent and worker ports each). A command there that this test does
not know how to run fails the test: the section documents nothing that is not tested.

Then: trials ran on both Ray nodes; every run, metric and artifact is in the MLflow server
and downloads through it (``mlflow-artifacts:/``, plain HTTP too); headless Chromium opens
the link the search printed on the training-runs view, finds the parent run and its child
runs, and sees ``pareto.png`` and a trial's ``schedule.png`` render. Screenshots: the
test's tmp folder and ``runs/test-artifacts/cluster-e2e/`` (``make docs-images`` copies
the ones the docs show into ``docs/img/ui/``). Last, on the same cluster: the worker node is
lost mid-trial (its raylet killed with SIGKILL) and its trial fails over to the head node
from its checkpoint. Everything the test starts is stopped by process id at the end, and the
test fails if any of it survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _postgres
import pytest
import yaml
from _processes import Processes, descendants, free_ports, wait_for_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "how-to" / "cluster.md"
SECTION = "Run on a cluster"
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS_COPY = REPO / "runs" / "test-artifacts" / "cluster-e2e"
# Trials must outlast the start of a Ray worker on the other node (seconds, on a busy
# machine): with 1-second trials, Tune reuses the first node's actor for every trial
# (reuse_actors) and the second node never gets one. Whole digits, batch 8: ~8 s a trial.
EPOCHS = 12
TRIALS = 4       # the direct search: --num-samples 4 on the page
JOB_TRIALS = 2   # the submitted one: the space's num_samples (the page gives no --num-samples)
SPACE: dict[str, Any] = {
    "num_samples": JOB_TRIALS,
    "sampler": "nsga2",
    "sampler_options": {"nsga2": {"population_size": 4}},
    "seed": 0,
    "objectives": ["accuracy", "macs"],
    "resources": {"cpu": 1},  # one CPU per node: two trials at once, one on each node
    "fixed": {"model": "small_cnn", "dataset": {"name": "digits"},
              "training": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {
        "dense": {},
        "filter": {"target_ratio": {"low": 0.3, "high": 0.6}, "end_epoch": 10},
    }},
}
# The submitted search checks the job path only: short trials will do.
JOB_SPACE: dict[str, Any] = {
    **SPACE,
    "fixed": {**SPACE["fixed"], "training": {**SPACE["fixed"]["training"], "epochs": 3}},
    "searched": {"methods": {"dense": {}, "filter": {"target_ratio": {"low": 0.3, "high": 0.6},
                                                     "end_epoch": 2}}},
}
EPOCH_METRICS = ("accuracy", "macs", "params", "train_flops")
TRIAL_ARTIFACTS = {"model.pt", "summary.json", "train_config.yaml"}
PARENT_ARTIFACTS = {"pareto.csv", "pareto.png", "pareto.html", "search_space.yaml"}
# MLflow's assistant panel opens itself on a first visit and covers a third of the page.
QUIET_UI = "window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"


def readme_commands() -> list[str]:
    """The command lines of the docs' cluster page (```bash blocks, no comments)."""
    section = PAGE.read_text()
    assert section.startswith(f"# {SECTION}\n"), f"{PAGE} is not the '{SECTION}' page"
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def kind_of(command: str) -> str:
    for prefix, kind in (("createdb ", "createdb"), ("mlflow db upgrade ", "dbupgrade"),
                         ("mlflow server ", "mlflow"), ("ray get-auth-token ", "token"),
                         ("export ", "export"), ("ray start --head ", "head"),
                         ("ray start --address ", "worker"), ("ray job submit ", "job"),
                         ("autoprune search ", "search"), ("autoprune pareto ", "pareto")):
        if command.startswith(prefix):
            return kind
    raise AssertionError(f"The '{SECTION}' page has a command this test does not run: "
                         f"{command!r} (run it in tests/test_cluster_e2e.py, or drop it)")


def localise(command: str, subs: dict[str, str]) -> list[str]:
    """The page's command with the test's addresses, ports and paths, as an argv."""
    for pattern, value in subs.items():
        command = re.sub(pattern, value, command)
    argv = shlex.split(command)
    if argv[0] in ("ray", "mlflow", "autoprune"):
        argv[0] = str(BIN / argv[0])  # this venv's, whatever the PATH says
    elif argv[0] == "createdb":
        argv[0] = str(_postgres.bindir() / "createdb")  # type: ignore[operator]
    return argv


def png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the docs' cluster page; stop everything it started, and check that nothing
    survives."""
    commands = readme_commands()
    kinds = [kind_of(c) for c in commands]
    expected = ["createdb", "dbupgrade", "export", "mlflow", "token", "export", "head",
                "worker", "search", "job", "pareto"]
    assert sorted(kinds) == sorted(expected), f"the '{SECTION}' page's commands: {kinds}"
    why_not = _postgres.missing()
    if why_not:
        pytest.skip(why_not)
    out = tmp_path_factory.mktemp("cluster-e2e")
    # Ray's socket paths must stay short (108 bytes): its folders go under /tmp/apc-*.
    short = Path(tempfile.mkdtemp(prefix="apc-", dir="/tmp"))
    procs = Processes(out / "logs", paths=[str(short)])
    gcs, dashboard, mlflow_port, head_agent, worker_agent, database = free_ports(6)
    space = out / "cluster.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    job_space = out / "job.yaml"
    job_space.write_text(yaml.safe_dump(JOB_SPACE))
    subs = {r"\bHEAD\b": "127.0.0.1", r"\b6379\b": str(gcs), r"\b8265\b": str(dashboard),
            r"\b5000\b": str(mlflow_port), "/srv/mlflow": str(short / "mlflow"),
            r"\bDBHOST\b": "127.0.0.1", r"\b5432\b": str(database),
            "/shared/autoprune": str(short / "shared"),
            r"search_spaces/quickstart\.yaml": str(space)}
    token = short / "home" / ".ray" / "auth_token"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("RAY_AUTH_") and k != "RAY_ADDRESS"}
    env: dict[str, str] = {**clean, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    state: dict[str, Any] = {
        "out": out, "short": short, "procs": procs, "ports": (gcs, dashboard, mlflow_port),
        "tracking_uri": f"http://127.0.0.1:{mlflow_port}", "dashboard": dashboard,
        "outputs": {}, "env": env, "database": database}
    for folder in ("mlflow", "shared", "home"):
        (short / folder).mkdir()
    pg_folder = None
    try:
        # the team's PostgreSQL server, which the page takes as given: a throw-away one
        pg_folder = _postgres.start(procs, database)
        server = None
        for command, kind in zip(commands, kinds):
            argv = localise(command, subs)
            if kind in ("createdb", "dbupgrade"):
                procs.run(kind, argv, 300, env=env, cwd=out)
            elif kind == "mlflow":
                server = procs.start("mlflow-server", argv, env=env, cwd=out)
            elif kind == "token":  # generated into a home of the test's own
                procs.run("ray-auth-token", argv, 60, env={**env, "HOME": str(short / "home")})
                assert token.is_file()
                env["RAY_AUTH_TOKEN_PATH"] = str(token)  # = copied to every node and client
            elif kind == "export":
                env.update(dict(item.split("=", 1) for item in argv[1:]))
            elif kind in ("head", "worker"):
                agent = head_agent if kind == "head" else worker_agent
                argv += ["--temp-dir", str(short / f"ray-{kind}"), "--dashboard-agent-listen-port",
                         str(agent), "--min-worker-port", "0", "--max-worker-port", "0"]
                procs.run(f"ray-{kind}", argv, 180, env=env, cwd=out)
            else:
                assert server is not None
                wait_for_port(mlflow_port, 120, process=server.popen)
                # the job uploads the checkout (--working-dir .); the others run elsewhere
                cwd = REPO if kind == "job" else out
                if kind == "job":
                    argv = [str(job_space) if a == str(space) else a for a in argv]
                _, output = procs.run(kind, argv, 480, env=env, cwd=cwd)
                state["outputs"][kind] = output
        yield state
    finally:
        survivors = procs.stop_all()
        left = [p for p in (gcs, dashboard, mlflow_port, database) if _listening(p)]
        shutil.rmtree(short, ignore_errors=True)
        if pg_folder is not None:
            shutil.rmtree(pg_folder, ignore_errors=True)
        assert not survivors, "processes started by the test survived it:\n" + "\n".join(
            survivors)
        assert not left, f"ports still listened on after the test: {left}"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(deployment: dict[str, Any]) -> dict[str, Any]:
    """The direct search as the MLflow server holds it (through its REST API only)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=deployment["tracking_uri"])
    experiment = client.get_experiment_by_name("quickstart-cluster")
    assert experiment is not None, "no experiment 'quickstart-cluster' in the server"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("autoprune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("autoprune.role") == "trial"]
    assert len(parents) == 1, f"{len(parents)} parent runs"
    return {"client": client, "experiment": experiment, "parent": parents[0],
            "children": children, "runs": runs}


def ray_nodes(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    argv = [str(BIN / "ray"), "list", "nodes", "--address",
            f"http://127.0.0.1:{deployment['dashboard']}", "--format", "json"]
    name = f"ray-list-nodes-{len(deployment['procs'].started)}"  # a log of its own each time
    _, output = deployment["procs"].run(name, argv, 120, env=deployment["env"])
    return json.loads(output[output.index("["):output.rindex("]") + 1])


def test_trials_ran_on_both_nodes(deployment: dict[str, Any], server: dict[str, Any]) -> None:
    nodes = [n for n in ray_nodes(deployment) if n["state"] == "ALIVE"]
    assert len(nodes) == 2 and sum(n["is_head_node"] for n in nodes) == 1, nodes
    (worker,) = [n for n in nodes if not n["is_head_node"]]
    assert worker["resources_total"].get("worker") == 1  # the second `ray start`'s --resources
    used = {c.data.tags["autoprune.node_id"] for c in server["children"]}
    assert used == {n["node_id"] for n in nodes}, (
        f"trials ran on {used}, the cluster's nodes are {nodes} (a trial shorter than a "
        "Ray worker's start lets Tune reuse one node's actor for every trial)")
    assert "4/4 done, 0 running, 0 failed" in deployment["outputs"]["search"]


def test_every_run_metric_and_artifact_is_served_by_mlflow(
        deployment: dict[str, Any], server: dict[str, Any]) -> None:
    import autoprune

    client, parent, children = server["client"], server["parent"], server["children"]
    experiment = server["experiment"]
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["autoprune.search_status"] == "completed"
    assert len(children) == TRIALS
    assert len({c.data.tags["autoprune.trial_id"] for c in children}) == TRIALS
    downloads = deployment["out"] / "downloads"
    destination = deployment["short"] / "mlflow" / "artifacts"
    for run in server["runs"]:
        run_id = run.info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        # every artifact, downloaded through the server, equals what the server stored
        folder = Path(client.download_artifacts(run_id, "", str(downloads / run_id)))
        got = {p.relative_to(folder).as_posix(): p.read_bytes()
               for p in folder.rglob("*") if p.is_file()}
        stored = destination / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
        assert got == {p.relative_to(stored).as_posix(): p.read_bytes()
                       for p in stored.rglob("*") if p.is_file()}
        if run.info.run_id == parent.info.run_id:
            assert set(got) >= PARENT_ARTIFACTS
            continue
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["autoprune.status"] == "completed" and run.info.status == "FINISHED"
        assert set(got) >= TRIAL_ARTIFACTS
        for key in EPOCH_METRICS:
            steps = {m.step for m in client.get_metric_history(run_id, key)}
            assert set(range(1, EPOCHS + 1)) <= steps, (run_id, key, steps)
        summary = json.loads(got["summary.json"])
        assert run.data.metrics["accuracy"] == pytest.approx(summary["val_accuracy"])
        assert run.data.metrics["test_accuracy"] == pytest.approx(summary["accuracy"])
        assert run.data.metrics["macs"] == summary["macs"]
        assert autoprune.load_model(folder / "model.pt") is not None
    # plain HTTP, as the UI and any other client fetch it
    base, run_id = deployment["tracking_uri"], parent.info.run_id
    stored = (destination / parent.info.artifact_uri.removeprefix("mlflow-artifacts:/")
              / "pareto.png").read_bytes()
    png_width(stored)
    for url in (f"{base}/get-artifact?path=pareto.png&run_uuid={run_id}",
                f"{base}/ajax-api/2.0/mlflow-artifacts/artifacts/"
                f"{parent.info.artifact_uri.removeprefix('mlflow-artifacts:/')}/pareto.png"):
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == stored, url
    assert not (deployment["out"] / "mlruns").exists()  # nothing went to a local store


def test_ray_job_submission(deployment: dict[str, Any], server: dict[str, Any]) -> None:
    output = deployment["outputs"]["job"]
    assert re.search(r"Job '\S+' succeeded", output), output[-2000:]
    client = server["client"]
    experiment = client.get_experiment_by_name("quickstart-job")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("autoprune.role") == "trial"]
    (parent,) = [r for r in runs if r.data.tags.get("autoprune.role") == "search"]
    assert parent.info.status == "FINISHED" and len(children) == JOB_TRIALS
    assert all(c.data.tags["autoprune.status"] == "completed" for c in children)
    assert {"pareto.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_pareto_command_reads_the_server(deployment: dict[str, Any],
                                         server: dict[str, Any]) -> None:
    output = deployment["outputs"]["pareto"]
    assert "Pareto front of 'quickstart-cluster'" in output
    assert f"of {TRIALS} completed full-fidelity trials" in output


def test_networks_are_logged_and_registered_on_the_server(
        deployment: dict[str, Any], server: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Trials on both nodes logged their networks as MLflow models through the server, and
    ``pick --register`` makes a version that loads from the server's registry."""
    import mlflow
    import torch

    from autoprune import load_model
    from autoprune.cli import main
    from autoprune.deploy.mlflow_model import MODEL_TAG, tracking

    uri = deployment["tracking_uri"]
    completed = [c for c in server["children"]
                 if c.data.tags.get("autoprune.status") == "completed"]
    assert completed and all(c.data.tags.get(MODEL_TAG) for c in completed)
    assert main(["pick", "--experiment", "quickstart-cluster", "--tracking-uri", uri,
                 "--max-macs-ratio", "1.0", "--register", "cluster-picked"]) == 0
    picked = json.loads(capsys.readouterr().out)
    with tracking(uri):
        served = mlflow.pytorch.load_model("models:/cluster-picked@picked")
    own = load_model(server["client"].download_artifacts(picked["run_id"], "model.pt",
                                                         str(tmp_path)))
    x = torch.randn(4, *own.autoprune_input_shape)
    with torch.no_grad():
        assert torch.allclose(served(x), own(x), atol=1e-5)
    # the registered version ships from the server: export finds it there
    assert main(["export", "models:/cluster-picked@picked", "--tracking-uri", uri, "--out",
                 str(tmp_path / "picked.onnx"), "--repeats", "2"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["max_abs_diff"] < 1e-4 and exported["source"] == "models:/cluster-picked@picked"


def test_the_servers_store_is_postgresql(deployment: dict[str, Any],
                                         server: dict[str, Any]) -> None:
    """What the server holds is in the PostgreSQL database, read there directly: every run
    of the search, and every epoch's metrics of a trial once (the last epoch's value is
    logged again, at its step, as the trial's final result)."""
    import psycopg

    url = f"postgresql://mlflow@127.0.0.1:{deployment['database']}/mlflow"
    with psycopg.connect(url) as db:
        stored = {row[0] for row in db.execute(
            "SELECT run_uuid FROM runs WHERE experiment_id = %s",
            (int(server["experiment"].experiment_id),))}
        child = server["children"][0].info.run_id
        steps = [row[0] for row in db.execute(
            "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'macs' ORDER BY step",
            (child,))]
    assert stored == {r.info.run_id for r in server["runs"]}
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps
    assert all(steps.count(step) == 1 for step in range(1, EPOCHS)), steps  # each epoch once


def test_ui_shows_training_runs_and_the_pareto_plot(deployment: dict[str, Any],
                                                   server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs {CHROMIUM}: make system-deps installs Debian's chromium (as root)")
    match = re.search(r"open the results: (http://\S+)", deployment["outputs"]["search"])
    assert match, "the search printed no link to its experiment"
    link, base = match.group(1), deployment["tracking_uri"]
    experiment_id = server["experiment"].experiment_id
    assert link == f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
    parent = server["parent"]
    names = sorted(c.info.run_name for c in server["children"])
    stored = server["client"].download_artifacts(parent.info.run_id, "pareto.png",
                                                 str(deployment["out"] / "pareto"))
    width = png_width(Path(stored).read_bytes())
    shots = deployment["out"] / "screenshots"
    shots.mkdir(exist_ok=True)
    run_page = f"{base}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(deployment["short"] / "chromium-profile"), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 900})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(60_000)
        browser.add_init_script(QUIET_UI)
        try:
            # 0. the experiment is listed, with its id
            page.goto(f"{base}/#/experiments")
            listed = page.get_by_role("link", name="quickstart-cluster", exact=True)
            expect(listed).to_be_visible()
            assert listed.get_attribute("href") == f"#/experiments/{experiment_id}"
            page.screenshot(path=str(shots / "experiments.png"))
            # 1. the search's link: the training-runs table, the parent run, its children
            page.goto(link)
            parent_link = page.get_by_role("link", name=parent.info.run_name, exact=True)
            expect(parent_link).to_be_visible()
            assert f"/experiments/{experiment_id}/runs" in page.url, page.url
            row = page.locator(".ag-row", has=parent_link)
            row.locator("button[data-component-id*='runnamecellrenderer']").click()
            for name in names:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            page.screenshot(path=str(shots / "runs-table.png"))
            # 2. the parent run's page lists its child runs
            page.goto(f"{run_page}?workflowType=machine_learning")
            expect(page.get_by_text("Child runs", exact=True)).to_be_visible()
            for name in names:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            page.screenshot(path=str(shots / "parent-run.png"))
            # 3. pareto.png, fetched by the UI through the server, is a loaded image
            page.goto(f"{run_page}/artifacts/pareto.png?workflowType=machine_learning")
            image = page.locator('img[alt="pareto.png"]').first
            expect(image).to_be_visible(timeout=30_000)
            page.wait_for_function("img => img.complete", arg=image.element_handle())
            page.screenshot(path=str(shots / "pareto-artifact.png"))
            assert image.evaluate("img => img.naturalWidth") == width, "pareto.png broken"
            # 4. a trial's schedule.png: what its schedule did
            child = next((c for c in server["children"] if c.data.params.get("method")
                          == "filter"), server["children"][0])
            page.goto(f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}"
                      "/artifacts/schedule.png?workflowType=machine_learning")
            image = page.locator('img[alt="schedule.png"]').first
            expect(image).to_be_visible(timeout=30_000)
            page.wait_for_function("img => img.complete", arg=image.element_handle())
            assert image.evaluate("img => img.naturalWidth") > 0, "schedule.png broken"
            page.screenshot(path=str(shots / "trial-schedule.png"))
        except BaseException:
            with contextlib.suppress(Exception):  # the page as it was, for the developer
                page.screenshot(path=str(shots / "failure.png"))
            raise
        finally:
            browser.close()
            shutil.rmtree(SHOTS_COPY, ignore_errors=True)  # this run's screenshots only
            SHOTS_COPY.mkdir(parents=True)
            for shot in shots.glob("*.png"):
                shutil.copy2(shot, SHOTS_COPY / shot.name)


# The user's own network and data, in a folder only the driver imports from: the network
# by module name beside the space file, the data factory by its file path. Each call
# records where its code was imported from and on which Ray node.
DRIVER_NET = '''
import os
from torch import nn


def _record(what):
    import sys

    import ray

    # the driver builds it too (the check before Ray, logging models); Ray's worker
    # processes run default_worker.py (asking an uninitialised Ray for its context would
    # start a local Ray in the driver)
    worker = "default_worker" in sys.argv[0] and ray.is_initialized()
    node = ray.get_runtime_context().get_node_id() if worker else "driver"
    with open({log!r}, "a") as log:
        log.write(f"{{what}} {{node}} {{os.path.realpath(__file__)}}\\n")


def build(num_classes, in_channels, width=8):
    _record("build")
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                         nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''
DRIVER_DATA = '''
import os
import torch
from torch.utils.data import TensorDataset


def load(n=1200):
    with open({log!r}, "a") as log:
        log.write(f"data - {{os.path.realpath(__file__)}}\\n")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    images = torch.rand(n, 1, 12, 12, generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * 6:r * 6 + 6, c * 6:c * 6 + 6] += 1
    return TensorDataset(images[:960], labels[:960]), TensorDataset(images[960:], labels[960:])
'''


def test_a_search_ships_code_only_the_driver_has(deployment: dict[str, Any]) -> None:
    """Neither node can import the user's modules (their folder is on no Ray node's path,
    the search runs from another folder): trials on both nodes build the network and read
    the data from the copies the search shipped (Ray ``py_modules``)."""
    from mlflow import MlflowClient

    code = deployment["short"] / "driver-only"
    code.mkdir()
    log = code / "calls.log"
    (code / "drivernet_u24.py").write_text(DRIVER_NET.format(log=str(log)))
    (code / "driverdata_u24.py").write_text(DRIVER_DATA.format(log=str(log)))
    # as many trials as the direct search, each as long (a shorter one lets Tune reuse one
    # node's actor for every trial)
    space = {**SPACE, "num_samples": TRIALS, "fixed": {
        "model": "drivernet_u24:build", "model_kwargs": {"width": 8},
        "dataset": {"factory": "driverdata_u24.py:load"},
        "training": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.05, "seed": 0}}}
    (code / "space.yaml").write_text(yaml.safe_dump(space))
    gcs = deployment["ports"][0]
    argv = [str(BIN / "autoprune"), "search", str(code / "space.yaml"), "--name", "user-code",
            "--address", f"127.0.0.1:{gcs}", "--tracking-uri", deployment["tracking_uri"],
            "--storage-path", str(deployment["short"] / "shared")]
    elsewhere = deployment["out"] / "elsewhere"
    elsewhere.mkdir()
    _, output = deployment["procs"].run("search-user-code", argv, 480, env=deployment["env"],
                                        cwd=elsewhere)
    assert f"{TRIALS}/{TRIALS} done, 0 running, 0 failed" in output, output[-3000:]
    calls = [line.split(" ", 2) for line in log.read_text().splitlines()]
    nodes = {n["node_id"] for n in ray_nodes(deployment) if n["state"] == "ALIVE"}
    shipped = {node for what, node, path in calls
               if what == "build" and node in nodes and not path.startswith(str(code))}
    assert shipped == nodes, calls  # each node built the network from a shipped copy
    assert not any(what == "build" and node in nodes and path.startswith(str(code))
                   for what, node, path in calls), calls
    # the factory, named by its path, is read there where the path exists (both nodes share
    # this machine's disk); where it does not, the shipped copy is (test_user_models.py)
    assert sum(what == "data" for what, _, _ in calls) > TRIALS, calls  # the driver, each trial
    client = MlflowClient(deployment["tracking_uri"])
    experiment = client.get_experiment_by_name("user-code")
    assert experiment is not None
    children = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("autoprune.role") == "trial"]
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)


# --- last: the worker node is lost mid-trial (the cluster has one node after this) ----------

LOST_TRIALS = 3
LOST_SPACE: dict[str, Any] = {
    "num_samples": LOST_TRIALS, "sampler": "random", "seed": 0, "max_failures": 2,
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


def test_lost_worker_node_reschedules_its_trial(deployment: dict[str, Any]) -> None:
    """A search driver joins the cluster; once a trial that runs on the worker node has a
    checkpoint, that node's raylet (and the trial's process) is killed with SIGKILL, by
    process id: the trial fails over to the head node from its last checkpoint, and every
    trial ends completed in MLflow, the moved one with its retry counted."""
    from mlflow import MlflowClient

    short, procs = deployment["short"], deployment["procs"]
    storage = short / "shared"
    folder = deployment["out"] / "lost"
    folder.mkdir()
    (folder / "lost.yaml").write_text(yaml.safe_dump(LOST_SPACE))
    worker_raylet = _raylet(short / "ray-worker")
    assert worker_raylet is not None, "no raylet for the worker node"

    def results() -> dict[str, list[dict[str, Any]]]:
        out = {}
        for path in storage.glob("lost/trial_*/result.json"):
            lines = path.read_text().splitlines()
            out[path.parent.name] = [json.loads(line) for line in lines if line.strip()]
        return out

    driver = procs.start("search-lost-node", [
        BIN / "autoprune", "search", folder / "lost.yaml", "--name", "lost",
        "--address", f"127.0.0.1:{deployment['ports'][0]}",
        "--tracking-uri", deployment["tracking_uri"], "--storage-path", storage],
        env=deployment["env"], cwd=folder)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert driver.popen.poll() is None, driver.tail()
        assert time.monotonic() < deadline, driver.tail()
        on_worker = [p for p in descendants(worker_raylet)
                     if _cmdline(p).startswith("ray::ImplicitFunc")]
        running = {t: rows for t, rows in results().items()
                   if rows and not rows[-1].get("is_final")
                   and list((storage / "lost" / t).glob("checkpoint_*"))}
        victim = next(((t, str(rows[-1]["node_id"])) for t, rows in running.items()
                       if rows[-1].get("pid") in on_worker), None)  # Ray records the pid
        if victim is not None:
            os.kill(worker_raylet, signal.SIGKILL)
            for pid in on_worker:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    killed_trial, dead_node = victim
    code = driver.popen.wait(timeout=420)
    assert code == 0, driver.log.read_text()[-4000:]
    rows = results()
    assert len(rows) == LOST_TRIALS
    moved = rows[killed_trial]
    assert moved[-1]["is_final"] and moved[-1]["trial_status"] == "completed", moved[-1]
    assert moved[-1]["node_id"] != dead_node  # finished on the remaining node
    first_after = [r for r in moved if r["iterations_since_restore"] == 1]
    assert len(first_after) >= 2 and first_after[-1]["epoch"] > 1  # from its checkpoint
    client = MlflowClient(deployment["tracking_uri"])
    experiment = client.get_experiment_by_name("lost")
    children = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("autoprune.role") == "trial"]
    status = {c.data.tags["autoprune.trial_id"]: c.data.tags for c in children}
    assert len(status) == LOST_TRIALS == len(children)
    assert all(t["autoprune.status"] == "completed" for t in status.values())
    tags = status[killed_trial.removeprefix("trial_")]
    assert int(tags["autoprune.retries"]) >= 1 and tags["autoprune.node_id"] != dead_node

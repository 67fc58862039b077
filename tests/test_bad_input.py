"""Bad input through the command line: one line on stderr naming the problem, exit code 2,
no traceback, no Ray started, back in a few seconds.

The cases run in two child processes that call the CLI's ``main`` case after case, with
their file descriptors captured (``_cli_batch.py``): a subprocess per case would import
torch 35 times, minutes of CPU on a small machine. A few cases also run through the real
``python -m autoprune`` entry point (``REAL_PROCESS``). Each case is its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TRAIN: dict[str, Any] = {
    "model": "small_cnn", "dataset": "digits",
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0},
    "method": "filter", "method_params": {"target_ratio": 0.5, "end_epoch": 2},
}
SPACE: dict[str, Any] = {
    "num_samples": 2, "sampler": "random", "seed": 0,
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {"filter": {"target_ratio": {"low": 0.3, "high": 0.9},
                                        "end_epoch": 2}}},
}


def _train(**changes: Any) -> dict[str, Any]:
    """TRAIN with dotted keys changed (``None`` deletes the key)."""
    return _edit(TRAIN, changes)


def _space(**changes: Any) -> dict[str, Any]:
    return _edit(SPACE, changes)


def _edit(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


@dataclass(frozen=True)
class Case:
    """``argv`` after ``autoprune``; ``{dir}`` is the case's folder; ``file`` is written to
    ``{dir}/input.yaml`` (a dict as YAML, a str as it is)."""

    id: str
    argv: tuple[str, ...]
    words: tuple[str, ...]
    file: Any = None


SEARCH = ("search", "{dir}/input.yaml", "--storage-path", "{dir}/ray",
          "--tracking-uri", "sqlite:///{dir}/mlflow.db")
TRAIN_CMD = ("train", "{dir}/input.yaml", "--out", "{dir}/out")
PICK = ("pick", "--experiment", "s", "--tracking-uri", "sqlite:///{store}")

CASES = [
    # --- train configs ---------------------------------------------------------------------
    Case("train-unknown-model", TRAIN_CMD, ("model", "resnet9000"), _train(model="resnet9000")),
    Case("train-unknown-method", TRAIN_CMD, ("method", "magic"), _train(method="magic")),
    Case("train-unknown-dataset", TRAIN_CMD, ("dataset", "imagenet22k"),
         _train(dataset="imagenet22k")),
    Case("train-unknown-key", TRAIN_CMD, ("optimiser",), _train(optimiser="sgd")),
    Case("train-wrong-type", TRAIN_CMD, ("training.epochs",), _train(training__epochs="ten")),
    Case("train-lr-out-of-range", TRAIN_CMD, ("training.lr",), _train(training__lr=-1.0)),
    Case("train-growth-end-after-epochs", TRAIN_CMD, ("growth_end_epoch",),
         _train(method="cgap", method_params={"growth_end_epoch": 10})),
    Case("train-unprunable-model", TRAIN_CMD, ("shufflenet_v2_x0_5", "filter", "autoprune models"),
         _train(model="shufflenet_v2_x0_5")),
    Case("train-model-cannot-grow", TRAIN_CMD, ("densenet121", "cgap", "grow"),
         _train(model="densenet121", method="cgap", method_params={})),
    Case("train-missing-file", ("train", "{dir}/nope.yaml"), ("not found", "nope.yaml")),
    Case("train-not-yaml", TRAIN_CMD, ("not valid YAML",), "model: [unclosed\n"),
    Case("train-binary-file", TRAIN_CMD, ("not a text file",),
         b"\x7fELF\x02\x01\x01\x00\x00\xd0\xff\xfe" * 8),
    Case("train-epochs-too-few-for-the-schedule", (*TRAIN_CMD, "--epochs", "2"),
         ("does not fit in 2 epochs", "at least 3"),
         _train(method_params={"start_epoch": 1, "end_epoch": 2})),
    # --- search spaces (searched parts checked up front, before Ray) -------------------------
    Case("space-empty-choices", SEARCH, ("choices", "empty"),
         _space(searched__methods__filter__target_ratio={"choices": []})),
    Case("space-low-above-high", SEARCH, ("low", "high"),
         _space(searched__methods__filter__target_ratio={"low": 0.9, "high": 0.3})),
    Case("space-range-contradicts-epochs", SEARCH, ("end_epoch",),
         _space(searched__methods__filter__end_epoch={"low": 1, "high": 9})),
    Case("space-growth-end-after-epochs", SEARCH, ("growth_end_epoch",),
         _space(searched__methods={"cgap": {"growth_end_epoch": {"low": 1, "high": 5}}})),
    Case("space-unknown-objective", SEARCH, ("objective", "energy"),
         _space(objectives=["accuracy", "energy"])),
    Case("space-unknown-key", SEARCH, ("smaples",), _space(smaples=3)),
    Case("space-model-cannot-be-pruned", SEARCH, ("shufflenet_v2_x0_5", "filter"),
         _space(fixed__model="shufflenet_v2_x0_5")),
    Case("space-method-in-fixed", SEARCH, ("fixed.method",), _space(fixed__method="filter")),
    # --- command lines ---------------------------------------------------------------------
    Case("cli-unknown-command", ("serach", "x.yaml"), ("invalid choice", "serach")),
    Case("cli-unknown-flag", (*SEARCH, "--turbo"), ("--turbo",), SPACE),
    Case("cli-num-samples-not-int", (*SEARCH, "--num-samples", "abc"), ("--num-samples",),
         SPACE),
    Case("cli-bad-name", (*SEARCH, "--name", "a/b"), ("--name",), SPACE),
    Case("cli-resume-nothing", (*SEARCH, "--resume"), ("nothing to resume",), SPACE),
    Case("cli-tracking-server-down", (*SEARCH[:4], "--tracking-uri", "http://127.0.0.1:{port}"),
         ("cannot reach the MLflow tracking server",), SPACE),
    Case("cli-tracking-server-down-on-resume",
         (*SEARCH[:4], "--tracking-uri", "http://127.0.0.1:{port}", "--resume"),
         ("cannot reach the MLflow tracking server",), SPACE),
    Case("cli-tracking-uri-unsupported", (*SEARCH[:4], "--tracking-uri", "foo://bar"),
         ("--tracking-uri", "foo://bar"), SPACE),
    Case("pareto-tracking-uri-unsupported",
         ("pareto", "--experiment", "s", "--tracking-uri", "ftp://host/db"), ("ftp://host/db",)),
    Case("cli-unknown-scheduler", (*SEARCH, "--scheduler", "asha"), ("--scheduler", "asha"),
         SPACE),
    Case("space-rung-not-below-epochs", SEARCH, ("scheduler.min_epochs", "training.epochs"),
         _space(scheduler={"name": "moasha", "min_epochs": 3})),
    Case("cli-target-unknown-metric", (*SEARCH, "--target", "flops<=3"), ("--target", "flops"),
         SPACE),
    Case("cli-replay-not-front-or-k", (*SEARCH, "--proxy-epochs", "1", "--replay", "all"),
         ("--replay", "all"), SPACE),
    Case("space-fidelity-proxy-too-long", SEARCH, ("fidelity.proxy.epochs", "training.epochs"),
         _space(fidelity={"proxy": {"epochs": 99}})),
    Case("space-fidelity-with-moasha", SEARCH, ("fidelity", "moasha"),
         _space(fidelity={"proxy": {"epochs": 1}}, scheduler={"name": "moasha"})),
    Case("pick-budget-nobody-meets", (*PICK, "--max-macs", "1"), ("no completed trial",)),
    Case("pick-bad-number", (*PICK, "--max-macs", "lots"), ("--max-macs",)),
]


REAL_PROCESS = ("train-binary-file", "cli-unknown-command", "cli-tracking-uri-unsupported")
"""Cases that also run as ``python -m autoprune`` in a process of their own."""


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search with one completed trial (100 MACs) in an MLflow SQLite store."""
    from _mlflow import search_store

    folder = tmp_path_factory.mktemp("store")
    search_store(folder, [("t0", "completed", {"accuracy": 0.9, "macs": 100.0, "params": 10.0})])
    return folder / "mlflow.db"


@pytest.fixture(scope="module")
def results(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from _processes import free_port

    root = tmp_path_factory.mktemp("bad")
    ray_tmp = root / "raytmp"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONWARNINGS": "ignore"}
    port = free_port()

    def prepare(case: Case) -> tuple[list[str], Path]:
        folder = root / case.id
        folder.mkdir()
        if isinstance(case.file, bytes):
            (folder / "input.yaml").write_bytes(case.file)
        elif case.file is not None:
            text = case.file if isinstance(case.file, str) else yaml.safe_dump(case.file)
            (folder / "input.yaml").write_text(text)
        return [a.format(dir=folder, store=store, port=port) for a in case.argv], folder

    def batch(cases: list[Case]) -> dict[str, Any]:
        jobs = []
        for case in cases:
            argv, folder = prepare(case)
            jobs.append({"id": case.id, "argv": argv, "cwd": str(folder)})
        spec = root / f"jobs-{cases[0].id}.json"
        spec.write_text(json.dumps(jobs))
        subprocess.run([sys.executable, str(Path(__file__).parent / "_cli_batch.py"), str(spec),
                        f"{spec}.out"], env=env, check=True, timeout=600, cwd=root)
        done = json.loads(Path(f"{spec}.out").read_text())
        return {job["id"]: (Done(**done[job["id"]]), Path(job["cwd"])) for job in jobs}

    def real(case: Case) -> dict[str, Any]:
        argv, folder = prepare(Case(f"{case.id}-process", case.argv, case.words, case.file))
        start = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "autoprune", *argv], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=120)
        done = Done(p.returncode, p.stdout, p.stderr, time.monotonic() - start)
        return {f"{case.id}-process": (done, folder)}

    halves = [CASES[0::2], CASES[1::2]]
    with ThreadPoolExecutor(max_workers=2 + len(REAL_PROCESS)) as pool:
        parts = list(pool.map(batch, halves))
        parts += list(pool.map(real, [c for c in CASES if c.id in REAL_PROCESS]))
    out: dict[str, Any] = {k: v for part in parts for k, v in part.items()}
    out["_ray_tmp"] = ray_tmp
    return out


@pytest.mark.parametrize(
    "key", [c.id for c in CASES] + [f"{c}-process" for c in REAL_PROCESS]
)
def test_bad_input_is_one_line_and_exit_2(key: str, results: dict[str, Any]) -> None:
    case = next(c for c in CASES if key in (c.id, f"{c.id}-process"))
    done, folder = results[key]
    seconds = done.seconds
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in done.stdout + done.stderr
    for word in case.words:
        assert word.lower() in err.lower(), (word, err)
    assert "Ray" not in err and "ray.init" not in done.stdout
    assert not (folder / "ray").exists()  # no search state was written: nothing started
    assert not (folder / "out").exists()  # no training output either
    assert seconds < 45, f"took {seconds:.0f} s"  # a few seconds, on a busy machine


def test_no_ray_session_was_started(results: dict[str, Any]) -> None:
    """Ray creates its session folder under RAY_TMPDIR on start: none may exist."""
    assert list(results["_ray_tmp"].iterdir()) == []


def test_enough_cases() -> None:
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)

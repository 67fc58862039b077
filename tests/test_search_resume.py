"""Misuse of ``search`` and ``--resume`` is a user error before anything starts. A search
killed mid-run and resumed: ``tests/test_search_e2e.py`` (two stages, killed in stage 2),
``tests/test_search_moasha.py`` and ``tests/test_faults.py`` (with the tracking server
down)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from autoprune.cli import main

SPACE: dict[str, Any] = {
    "num_samples": 4, "sampler": "random", "seed": 0, "max_concurrent": 1,
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 4, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {
        "filter": {"target_ratio": {"low": 0.3, "high": 0.9}, "end_epoch": 3},
        "prune_retrain": {"target_ratio": {"low": 0.3, "high": 0.9}},
    }},
}


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path


def args(folder: Path, *extra: str) -> list[str]:
    return ["search", str(folder / "space.yaml"), "--name", "r",
            "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--storage-path", str(folder / "ray"), *extra]


def test_resume_without_a_search_is_a_user_error(workdir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_bad_flags_fail_before_training(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--sampler", "annealing")) == 2
    assert "unknown sampler 'annealing'" in capsys.readouterr().err
    assert main(args(workdir, "--num-samples", "0")) == 2
    assert "num_samples" in capsys.readouterr().err
    assert main([*args(workdir)[:3], "a/b"]) == 2
    assert "--name 'a/b'" in capsys.readouterr().err
    assert not (workdir / "ray").exists()


def test_unreachable_cluster_is_a_user_error(workdir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(workdir, "--address", "127.0.0.1:1")) == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err


def test_another_cluster_than_this_process_joined_is_a_user_error(
        workdir: Path, ray_session: str, capsys: pytest.CaptureFixture[str]) -> None:
    """In a process already connected to Ray (a notebook, this test), ``--address`` must name
    that cluster: a search never silently runs somewhere else than asked."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as other:  # reachable, not this Ray
        port = other.getsockname()[1]
        assert main(args(workdir, "--address", f"127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err
    assert f"already connected to the Ray at {ray_session}" in err, err
    assert f"cannot also join '127.0.0.1:{port}'" in err
    assert not (workdir / "ray").exists()

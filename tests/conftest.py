"""Shared test settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``) every end-to-end test (marker
    ``slow``: real Ray, MLflow servers, subprocess searches) runs on one worker, in file
    order, as without xdist; the fast unit tests fill the other worker. Two Ray sessions at
    once on a 2-core machine would only slow each other down and blur their timeouts."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("end_to_end"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest, and most repeatably, on one thread; on a shared 2-core
    machine two threads per process made some tests 15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One local Ray for a module's end-to-end searches (start-up takes 10-20 s here)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()

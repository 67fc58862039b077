"""Shared test settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every end-to-end test (marker ``slow``) in one xdist group, meant for
    ``pytest -n 2 --dist loadgroup``. Not used by ``make test`` yet: under xdist 3.8 the
    cluster tests still ran on both workers at once, so the suite runs serially."""
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

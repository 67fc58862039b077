"""Shared test settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

# Where results go is the tests' own choice: a MLFLOW_TRACKING_URI of the machine running
# them must not send them elsewhere (tests that need the variable set it themselves).
os.environ.pop("MLFLOW_TRACKING_URI", None)

# The longest modules first: ``make test`` runs ``pytest -n 2 --dist loadscope`` (each
# module on one worker, so a module's Ray cluster or MLflow server starts once), and a long
# module started last would run alone at the end.
LONGEST_FIRST = ("test_faults", "test_cluster_e2e", "test_search_moasha", "test_models",
                 "test_search_resume", "test_search_e2e", "test_custom_model_e2e",
                 "test_ddp", "test_faults_cluster",
                 "test_method_contract", "test_bad_input", "test_deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


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

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()

"""Shared test settings."""

from __future__ import annotations

import logging
import os

import pytest
import torch

# Where results go is the tests' own choice: a MLFLOW_TRACKING_URI of the machine running
# them must not send them elsewhere (tests that need the variable set it themselves).
os.environ.pop("MLFLOW_TRACKING_URI", None)

# The longest modules first: ``make test`` runs ``pytest -n 2 --dist loadscope`` (each
# module on one worker, so a module's Ray cluster or MLflow server starts once), and a long
# module started last would run alone at the end. The modules that use the local Ray come
# next to each other, so each worker starts it once (xdist hands a worker two modules at a
# time: the 1st and 3rd, 2nd and 4th here, then the next as one ends).
LONGEST_FIRST = ("test_faults", "test_cluster_e2e", "test_search_moasha", "test_search_e2e",
                 "test_ddp", "test_search_resume", "test_custom_model_e2e", "test_models",
                 "test_deploy", "test_method_contract", "test_user_models", "test_bad_input")


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


class _SharedRay:
    """One local Ray per test process, shared by consecutive modules that use it: started by
    the first test that asks for it, shut down when a module that does not use it comes next
    (an idle Ray costs ~0.05 of a core here; each start 10-20 s and ~8 CPU-seconds)."""

    def __init__(self) -> None:
        self.address: str | None = None
        self.modules: set[str] = set()  # the modules that use it

    def get(self) -> str:
        if self.address is None:
            import ray

            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
            self.address = ray.get_runtime_context().gcs_address
        return self.address

    def stop(self) -> None:
        if self.address is not None:
            import ray

            ray.shutdown()
            self.address = None


_RAY = _SharedRay()


def pytest_collection_finish(session: pytest.Session) -> None:
    _RAY.modules = {item.nodeid.split("::")[0] for item in session.items
                    if "ray_session" in getattr(item, "fixturenames", ())}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid.split("::")[0] not in _RAY.modules:
        _RAY.stop()


def pytest_sessionfinish() -> None:
    _RAY.stop()


@pytest.fixture(scope="module")
def ray_session() -> str:
    """The test process's local Ray (see ``_SharedRay``); its address. Searches in this
    process use it; a search run as a subprocess (to be killed) joins it with ``--address``,
    as a driver joins a cluster."""
    return _RAY.get()

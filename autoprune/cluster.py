"""Joining a Ray cluster, or starting a local Ray: what a search and a data-parallel
training share."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autoprune.errors import UserError


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join ``address``, or start a quiet local Ray with all this machine's CPUs. In a
    process already connected to Ray (a notebook, a test), that connection is used; an
    ``address`` must then be reachable and name the same cluster."""
    import ray

    if ray.is_initialized():  # the caller owns the session
        if address:
            check_reachable(address)
            here = ray.get_runtime_context().gcs_address
            port = address.split("://", 1)[-1].rpartition(":")[2]
            if address != "auto" and port != here.rpartition(":")[2]:
                raise UserError(f"this process is already connected to the Ray at {here}; "
                                f"it cannot also join {address!r}")
        yield
        return
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                             "runtime_env": user_code_env()}  # the user's own modules
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **quiet)
        else:
            # "local": a new Ray of our own, even where `ray start` left a cluster running
            ray.init(address="local", num_cpus=os.cpu_count() or 1,
                     include_dashboard=False, **quiet)
    except ConnectionError as exc:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def user_code_env() -> dict[str, Any] | None:
    """Ray ``runtime_env`` shipping the modules of the user's own network and data (import
    references resolved in this process, e.g. a module beside the space file) to every
    worker as ``py_modules``; None when the search uses registered ones only."""
    from autoprune.references import runtime_env

    return runtime_env()


def check_reachable(address: str) -> None:
    """Fail fast on a wrong ``host:port`` (Ray itself retries for minutes)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        return  # "auto" and friends: Ray finds the cluster
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


__all__ = ["check_reachable", "ray_session", "user_code_env"]

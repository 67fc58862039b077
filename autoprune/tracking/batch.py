"""Writes to MLflow in as few requests as its limits allow.

MLflow's ``log_batch`` takes at most 1000 metrics, 100 params and 100 tags per call
(and 1000 entities in all): :func:`log_in_batches` sends any number of each in the
fewest calls within those limits, params first (a run's params describe its metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100


def log_in_batches(client: MlflowClient, run_id: str, *, metrics: Sequence[Any] = (),
                   params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> int:
    """Log everything given in chunks within MLflow's limits; returns the calls made."""
    calls = 0
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=list(params[i:i + MAX_PARAMS]))
        calls += 1
    for i in range(0, len(tags), MAX_TAGS):
        client.log_batch(run_id, tags=list(tags[i:i + MAX_TAGS]))
        calls += 1
    for i in range(0, len(metrics), MAX_METRICS):
        client.log_batch(run_id, metrics=list(metrics[i:i + MAX_METRICS]))
        calls += 1
    return calls


__all__ = ["MAX_METRICS", "MAX_PARAMS", "MAX_TAGS", "log_in_batches"]

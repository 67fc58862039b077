"""MLflow, written by autoprune (the contract is in DESIGN.md).

- :mod:`~autoprune.tracking.callback`: the search driver's Ray Tune callback: one parent
  run per search (space, Pareto artifacts, search compute), one child run per trial.
- :mod:`~autoprune.tracking.spool`: the client that retries, spools what it cannot send
  and replays it once the server answers again.
- :mod:`~autoprune.tracking.train_run`: ``autoprune train --tracking-uri``: one run.

Reading a search back (lookups, completed-trial rows) is :mod:`autoprune.search.store`;
the networks as MLflow models and registry versions are :mod:`autoprune.deploy`.
``TrackingCallback`` is importable from here; Ray is imported only when it is used.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TrackingCallback":  # lazily: importing Ray takes seconds
        from autoprune.tracking.callback import TrackingCallback

        return TrackingCallback
    raise AttributeError(name)


__all__ = ["TrackingCallback"]

"""Run engine trainings on two gloo ranks in two local processes (no Ray): what every
Ray Train worker runs, with the process group made here, so that many configs fit in
seconds. Ray Train's own start-up is tested separately (tests/test_ddp.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, configs: list[dict], out: str,
               diverge: bool) -> None:
    import torch.distributed as dist

    from autoprune.config import parse_train_config
    from autoprune.engine.loop import run_training
    from autoprune.engine.parallel import DistributedReplicas

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    if diverge:  # a criterion that differs between ranks: must be caught, never trained on
        import autoprune.methods.criteria as criteria
        import autoprune.methods.filter as filter_method

        def per_rank(group: Any) -> torch.Tensor:
            return torch.rand(group.width, generator=torch.Generator().manual_seed(rank))

        criteria.random_importance = per_rank
        filter_method.random_importance = per_rank  # type: ignore[attr-defined]
    results = []
    try:
        for i, raw in enumerate(configs):
            replicas = DistributedReplicas(torch.device("cpu"))
            folder = Path(out) / f"rank{rank}" / f"run{i}"
            try:
                summary = run_training(parse_train_config(raw), folder, progress=False,
                                       replicas=replicas)
                results.append({"checks": replicas.checks, "summary_keys": sorted(summary),
                                "error": None})
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results.append({"checks": replicas.checks, "error": f"{type(exc).__name__}: {exc}"})
                break
    finally:
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def run_on_ranks(configs: list[dict], world: int = 2, diverge: bool = False,
                 out: str | None = None) -> tuple[list[list[dict]], Path]:
    """Train every config on ``world`` ranks; per rank, per config: the cross-rank checks
    and any error. Rank 0's files are in ``<out>/rank0/run<i>``."""
    folder = out or tempfile.mkdtemp(prefix="autoprune-ranks-")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # gloo may abort a process at exit after a training raised; what each rank saw was
    # written before, and a rank that wrote nothing fails the assertion below
    with contextlib.suppress(mp.ProcessExitedException):
        mp.spawn(_rank_main, args=(world, free_port(), configs, folder, diverge),
                 nprocs=world, join=True)
    files = [Path(folder) / f"rank{r}.json" for r in range(world)]
    assert all(f.is_file() for f in files), "a rank died before reporting"
    return [json.loads(f.read_text()) for f in files], Path(folder)

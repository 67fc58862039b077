"""Data parallelism, in one place: one training on N workers under Ray Train (DDP).

``training.workers: N`` (``autoprune train --workers N``; a space's ``resources.workers``)
runs the same training loop (:mod:`autoprune.engine.loop`) on N Ray Train workers, started
by a ``TorchTrainer`` from the calling process (the CLI, or a Ray Tune trial): DDP over
NCCL on GPUs, gloo on CPUs. The loop sees a :class:`Replicas` and nothing else:

- each worker reads its part of every global batch (``batch_size / workers`` samples;
  :func:`autoprune.data.loaders.shard_positions`), and its part of the evaluation splits;
- the training step runs through DDP (:meth:`Replicas.wrap`), wrapped afresh after every
  structural change (DDP registers its gradient hooks on the parameters it wraps); the
  optimiser keeps its state through the change, as on one worker;
- what decides a structural change is the same on every rank: gradients are averaged by
  DDP, so weights, gates, factors and saliencies are identical; activation statistics are
  summed over the workers (:func:`reduce_sum`, used by the activation meter); a plan is
  compared across ranks before the surgery runs on every rank (:meth:`Replicas.agree`);
- after every epoch and the final cut, batch-norm statistics are averaged over the
  workers, then the widths and a digest of every parameter and buffer are compared across
  ranks (:meth:`Replicas.sync`): a difference stops the training with an error, and the
  comparisons are recorded in ``summary.json`` (``hardware.cross_rank``);
- losses, sample counts and evaluation sums are added up over the workers
  (:meth:`Replicas.total`), so FLOPs count the global batch once and accuracies are those
  of the whole split;
- only rank 0 writes checkpoints, ``model.pt`` and ``summary.json``: it sends each epoch's
  record and checkpoint, then the final files, to the calling process through a Ray queue
  (:func:`train_on_workers`), which writes them to the output folder and reports them
  (a Tune trial's checkpoints), as a single-worker training does.

A failed worker fails the whole training; a Tune trial then resumes from its last
checkpoint, which every worker loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue as queue_module
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "checkpoint.pt"
FINAL_FILES = ("model.pt", "summary.json", "schedule.png")


class RanksDisagree(RuntimeError):
    """Workers of one data-parallel training hold different networks (a bug, never ignored)."""


class Replicas:
    """One worker: every collective is the identity, nothing is wrapped or sharded."""

    rank = 0
    world = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this worker writes the run's files (rank 0)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a training step runs through."""
        return model

    def shard(self, data: Any) -> None:
        """Make the data bundle's sources yield this worker's part."""

    def total(self, *values: float) -> list[float]:
        """``values`` summed over the workers."""
        return [float(v) for v in values]

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the workers (e.g. an activation meter's sums)."""
        return tensor

    def agree(self, what: str, value: Any) -> None:
        """Check that every worker is about to do the same ``value`` (e.g. a plan)."""

    def sync(self, model: nn.Module, widths: Mapping[str, int], step: str) -> None:
        """Average batch-norm statistics and check the workers hold the same network."""

    def summary(self) -> dict[str, Any]:
        """What ``summary.json``'s ``hardware`` block records about the workers."""
        return {"workers": 1}


class DistributedReplicas(Replicas):
    """A worker of a data-parallel training (``torch.distributed`` already initialised,
    as Ray Train does before the worker's function starts)."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.device = device
        self.comm_device = device if self.backend == "nccl" else torch.device("cpu")
        self.checks: list[dict[str, Any]] = []

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: gates idle in warm-up epochs get no gradient
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def shard(self, data: Any) -> None:
        data.train.shard(self.rank, self.world, train=True)
        for source in (data.val, data.test):
            source.shard(self.rank, self.world, train=False)

    def total(self, *values: float) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.comm_device)
        self.dist.all_reduce(t)
        return t.tolist()

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone()
        self.dist.all_reduce(out)
        return out

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, value)
        return out

    def agree(self, what: str, value: Any) -> None:
        seen = self.gather(_digest_json(value))
        if len(set(seen)) > 1:
            raise RanksDisagree(f"{what}: the {self.world} workers planned different changes "
                                f"({', '.join(seen)})")

    def sync(self, model: nn.Module, widths: Mapping[str, int], step: str) -> None:
        with torch.no_grad():
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    self.dist.all_reduce(buffer)
                    buffer.div_(self.world)
                else:
                    self.dist.broadcast(buffer, 0)
        mine = {"widths": _digest_json(dict(widths)), "state": state_digest(model)}
        every = self.gather(mine)
        self.checks.append({"step": step, "widths": [e["widths"] for e in every],
                            "state": [e["state"] for e in every]})
        if any(e != every[0] for e in every):
            raise RanksDisagree(f"after {step}: workers hold different networks "
                                f"(widths {[e['widths'] for e in every]}, "
                                f"parameters {[e['state'] for e in every]})")

    def summary(self) -> dict[str, Any]:
        return {
            "workers": self.world, "backend": self.backend,
            "cross_rank": {"checks": len(self.checks),
                           "agreed": all(len(set(c["widths"])) == 1 and len(set(c["state"])) == 1
                                         for c in self.checks),
                           "steps": self.checks},
        }


def state_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer, bit for bit (equal on every worker)."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _digest_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda o: o.tolist() if torch.is_tensor(o)
                      else str(o))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# --- the calling side --------------------------------------------------------------------

EpochCallback = Callable[[dict[str, Any], Path], None]


def worker_resources(training: Any) -> tuple[float, float]:
    """(CPUs, GPUs) each worker reserves: ``training.cpu_per_worker`` (else its threads,
    else 1) and ``training.gpu_per_worker`` (else 1 where the device is CUDA)."""
    cpus = training.cpu_per_worker or training.threads or 1
    gpus = training.gpu_per_worker
    if gpus is None:
        wants_cuda = training.device.startswith("cuda") or (
            training.device == "auto" and torch.cuda.is_available())
        gpus = 1.0 if wants_cuda else 0.0
    return float(cpus), float(gpus)


def train_on_workers(run: Callable[..., Any], config: Any, out: Path, *,
                     on_epoch: EpochCallback | None, progress: bool, resume: bool,
                     measure_test: bool) -> dict[str, Any]:
    """Run ``config`` on ``training.workers`` Ray Train workers, each calling ``run``
    (:func:`autoprune.engine.loop.run_training`) with its replicas; write what rank 0
    sends to ``out`` and call ``on_epoch`` here, in the calling process, after every epoch.

    Starts a local Ray unless one is running (a Tune trial's). With ``resume`` and a
    ``checkpoint.pt`` in ``out``, every worker continues from it."""
    from autoprune.cluster import ray_session

    checkpoint = out / CHECKPOINT
    start = checkpoint.read_bytes() if resume and checkpoint.is_file() else None
    with ray_session(None):
        return _run_trainer(run, config, out, start, on_epoch, progress, measure_test)


def _run_trainer(run: Callable[..., Any], config: Any, out: Path, start: bytes | None,
                 on_epoch: EpochCallback | None, progress: bool,
                 measure_test: bool) -> dict[str, Any]:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    tc = config.training
    cpus, gpus = worker_resources(tc)
    # outside a Tune trial's placement group (which holds no CPU for it), on no CPU
    messages = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": "DEFAULT"})
    storage = Path(tempfile.mkdtemp(prefix="autoprune-workers-"))
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"run": run, "config": config.to_dict(), "checkpoint": start,
                           "measure_test": measure_test, "messages": messages,
                           "threads": max(1, int(cpus)), "use_gpu": gpus > 0},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"autoprune-{os.getpid()}-{threading.get_ident()}",
                             storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=0)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="autoprune-ray-train", daemon=True)
    thread.start()
    summary, failure = None, None
    try:
        while True:
            try:
                message = messages.get(timeout=0.5)
            except queue_module.Empty:
                if thread.is_alive():
                    continue
                if messages.empty():
                    break
                continue
            kind = message[0]
            if kind == "epoch":
                record, data = message[1], message[2]
                _write(out / CHECKPOINT, data)
                if progress:
                    _print_epoch(record, tc.epochs, tc.workers)
                if on_epoch is not None:
                    on_epoch(record, out)
            elif kind == "done":
                for name, data in message[1].items():
                    _write(out / name, data)
                summary = json.loads((out / "summary.json").read_text())
            elif kind == "error":
                failure = message[1:]
        thread.join()
    finally:
        messages.shutdown(force=True)
        shutil.rmtree(storage, ignore_errors=True)
    if failure is not None:
        raise _rebuild_error(*failure)
    if "error" in outcome:
        raise RuntimeError(f"data-parallel training on {tc.workers} workers failed: "
                           f"{_first_line(outcome['error'])}") from outcome["error"]
    if summary is None:
        raise RuntimeError(f"data-parallel training on {tc.workers} workers ended without "
                           "a result")
    return summary


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _print_epoch(record: Mapping[str, Any], epochs: int, workers: int) -> None:
    print(f"epoch {record['epoch']}/{epochs} on {workers} workers: val accuracy "
          f"{record['accuracy']:.4f}, MACs {record['macs'] / 1e6:.2f}M, train loss "
          f"{record['train_loss']:.4f}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _rebuild_error(kind: str, text: str) -> Exception:
    """The worker's error as the caller's type: a config the method refuses stays a
    UserError (exit 2, a failed trial), a diverged loss stays TrainingDiverged."""
    from autoprune.errors import TrainingDiverged, UserError

    if kind == "TrainingDiverged":
        return TrainingDiverged(text)
    if kind == "UserError":
        return UserError(text)
    return RuntimeError(f"{kind}: {text}")


# --- the worker side ---------------------------------------------------------------------


def _worker_main(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the training loop with its replicas; rank 0 sends
    epochs and files to the caller."""
    from autoprune.config import parse_train_config

    if loop_config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(loop_config["threads"])
    replicas = DistributedReplicas(device)
    messages = loop_config["messages"]
    folder = Path(tempfile.mkdtemp(prefix=f"autoprune-rank{replicas.rank}-"))
    if loop_config["checkpoint"] is not None:
        (folder / CHECKPOINT).write_bytes(loop_config["checkpoint"])

    def send_epoch(record: dict[str, Any], out_dir: Path) -> None:
        messages.put(("epoch", _plain(record), (out_dir / CHECKPOINT).read_bytes()))

    try:
        config = parse_train_config(loop_config["config"])
        loop_config["run"](config, folder, on_epoch=send_epoch if replicas.is_main else None,
                           progress=False, resume=loop_config["checkpoint"] is not None,
                           measure_test=loop_config["measure_test"], replicas=replicas,
                           device=device)
        if replicas.is_main:
            messages.put(("done", {name: (folder / name).read_bytes() for name in FINAL_FILES
                                   if (folder / name).is_file()}))
    except Exception as exc:
        if replicas.is_main:  # the caller raises it as its own (see _rebuild_error)
            messages.put(("error", type(exc).__name__, str(exc)))
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as plain data (what crosses to the caller)."""
    return json.loads(json.dumps(record, default=lambda o: o.tolist() if torch.is_tensor(o)
                                 else str(o)))


__all__ = ["DistributedReplicas", "RanksDisagree", "Replicas", "state_digest",
           "train_on_workers", "worker_resources"]

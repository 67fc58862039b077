"""Training-side commands: train, models, datasets, methods."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

TRACKING_ENV = "MLFLOW_TRACKING_URI"
TRACKING_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI where set, else "
                 "sqlite:///runs/mlflow.db)")


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    p = sub.add_parser("train", help="train one model while pruning it, as a config says")
    p.add_argument("config", help="train config YAML (model, dataset, training, method, ...)")
    p.add_argument("--out", help="output folder (default: runs/train/<config name>, plus "
                                 "-<N>ep / -<N>n with --epochs / --train-subset)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore a checkpoint in --out and start from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help="replay the same schedule on N epochs: every epoch-valued method "
                        "parameter is rescaled, phases keep their order and proportions")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="train on N samples of the training split (drawn with the seed)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="train data-parallel on N Ray Train workers (DDP; gloo on CPUs, NCCL "
                        "on GPUs), each on batch_size / N samples of every batch "
                        "(training.workers; default 1: this process)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="also log the run to MLflow (sqlite:///PATH or http://HOST:PORT; "
                        "default: $MLFLOW_TRACKING_URI where set, else no logging): params, "
                        "curves, artifacts and the network as an MLflow model")
    p.add_argument("--experiment", default="train",
                   help="MLflow experiment of the run (with --tracking-uri; default: train)")

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'cifar_*'")
    sub.add_parser("datasets", help="list the registered datasets")
    sub.add_parser("methods", help="list the registered pruning methods and their parameters")
    for name, handler in (("train", _train), ("models", _models), ("datasets", _datasets),
                          ("methods", _methods)):
        command(name)(handler)


def _train(args: argparse.Namespace) -> int:
    from autoprune.config import at_budget, load_yaml, parse_train_config
    from autoprune.engine import TrainingDiverged, train

    raw = at_budget(load_yaml(args.config), args.epochs, args.train_subset)
    if args.workers is not None:
        raw = {**raw, "training": {**dict(raw.get("training") or {}), "workers": args.workers}}
    config = parse_train_config(raw)
    uri = None
    if args.tracking_uri is not None or os.environ.get(TRACKING_ENV, "").strip():
        # checked before training, not after
        from autoprune.search.store import check_server, resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        check_server(uri)
    budget = (f"-{args.epochs}ep" if args.epochs else "") + (
        f"-{args.train_subset}n" if args.train_subset else "")
    out = Path(args.out) if args.out else Path("runs/train") / (Path(args.config).stem + budget)
    try:
        summary = train(config, out, progress=not args.quiet, resume=not args.fresh)
    except TrainingDiverged as exc:
        raise UserError(f"training diverged: {exc}; lower training.lr (now "
                        f"{config.training.lr:g}), then rerun with --fresh") from None
    keys = ("accuracy", "val_accuracy", "macs", "dense_macs", "params", "dense_params",
            "train_flops", "dense_train_flops", "wall_time_s")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    rescaled = summary["schedule"]["rescaled"]
    if rescaled:
        moved = ", ".join(f"{k} {v['written']} -> {v['used']}" for k, v in rescaled.items())
        print(f"schedule rescaled from {summary['schedule']['schedule_epochs']} to "
              f"{config.training.epochs} epochs: {moved}")
    print(f"wrote {out / 'summary.json'} and {out / 'model.pt'}")
    if uri is not None:
        from autoprune.tracking.train_run import log_training

        run_id = log_training(uri, args.experiment, out, summary)
        print(f"tracked: run {run_id} in experiment {args.experiment!r} of {uri}; its "
              f"network: runs:/{run_id}/model")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _models(args: argparse.Namespace) -> int:
    from autoprune.models import list_models, model_info

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no registered model matches {args.pattern!r}; see 'autoprune models'")
    width = max(len(n) for n in names)
    print(f"{'model':{width}}  {'prune grow layers':17}  description")
    for name in names:
        info = model_info(name)
        marks = " ".join(
            f"{'yes' if kind in info.supports else '-':{len(kind)}}"
            for kind in ("prune", "grow", "layers")
        )
        print(f"{name:{width}}  {marks:17}  {info.description}")
    print("prune: every method but dense; grow: cgap; layers: variational removes residual "
          "branches (without it variational prunes channels only)")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from autoprune.data import list_datasets

    print("\n".join(list_datasets()))
    return 0


def _methods(args: argparse.Namespace) -> int:
    import dataclasses

    from autoprune.methods import get_method, list_methods
    from autoprune.methods.base import ChannelParams
    from autoprune.methods.timing import epoch_fields

    shared = {f.name for f in dataclasses.fields(ChannelParams)}
    for name in list_methods():
        fields = sorted(dataclasses.fields(get_method(name).Params),
                        key=lambda f: f.name in shared)  # a method's own first
        params = ", ".join(f"{f.name}={f.default!r}" for f in fields)
        timing = ", ".join(epoch_fields(get_method(name).Params))
        timing = f"  [epochs: {timing}]" if timing else ""
        print(f"{name}: {params}{timing}" if params else name)
    return 0

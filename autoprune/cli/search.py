"""Search-side commands of the command line: search, pareto, pick, ui.

Heavy imports (Ray, MLflow, torch) happen inside the handlers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    """Register ``search``, ``pareto``, ``pick`` and ``ui`` on the ``autoprune`` parser."""
    p = sub.add_parser("search", help="search pruning schedules (Ray Tune + Optuna, MLflow)")
    p.add_argument("space", help="search space YAML (see search_spaces/)")
    p.add_argument("--name", help="search name = MLflow experiment (default: the file's name)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: from the space)")
    p.add_argument("--address", help="join a Ray cluster: auto, host:port or ray://host:port")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--storage-path", help="Ray results, shared by all nodes (default: runs/ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--sampler", help="nsga2 (default), tpe, random, gp or nsga3")
    p.add_argument("--seed", type=int, help="sampler seed (default: from the space)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: all that fit)")
    p.add_argument("--max-failures", type=int, help="retries of a crashed trial (default: 1)")
    p.add_argument("--scheduler", choices=("none", "moasha"),
                   help="multi-fidelity TrialScheduler: moasha = multi-objective successive "
                        "halving over rungs of fewer epochs (default: from the space, none)")
    command("search")(_search)

    p = sub.add_parser("pareto", help="print a search's Pareto front from MLflow")
    p.add_argument("--experiment", required=True, help="the search's name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    command("pareto")(_pareto)

    p = sub.add_parser("pick", help="the most accurate completed trial within a budget")
    p.add_argument("--experiment", required=True, help="the search's name")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-macs", help="at most this many MACs (e.g. 4e7 or 40M)")
    budget.add_argument("--max-macs-ratio", type=float, help="at most this share of dense MACs")
    budget.add_argument("--max-params", help="at most this many parameters (e.g. 50K)")
    budget.add_argument("--min-accuracy", type=float, help="cheapest in MACs with this accuracy")
    p.add_argument("--out", help="write the replayable train config YAML here")
    p.add_argument("--register", metavar="NAME",
                   help="register the picked network as a new version of MLflow model NAME")
    p.add_argument("--alias", default="picked",
                   help="alias set on that version (default: picked): models:/NAME@picked")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    command("pick")(_pick)

    p = sub.add_parser("ui", help="open the MLflow UI on the search results")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: local)")
    p.add_argument("--port", type=int, default=5000)
    command("ui")(_ui)


def search_request(args: argparse.Namespace) -> Any:
    """Validate the space and the flags into a SearchRequest (no Ray, no training yet)."""
    from autoprune.search.space import load_space, validate_settings
    from autoprune.search.store import resolve_tracking_uri
    from autoprune.search.tuner import SearchRequest

    space = load_space(args.space)
    overrides = {"num_samples": args.num_samples, "sampler": args.sampler, "seed": args.seed,
                 "max_concurrent": args.max_concurrent, "max_failures": args.max_failures}
    space = dataclasses.replace(space, **{k: v for k, v in overrides.items() if v is not None})
    if args.scheduler is not None:
        space = dataclasses.replace(
            space, scheduler=dataclasses.replace(space.scheduler, name=args.scheduler))
    validate_settings(space)
    storage = Path(args.storage_path or "runs/ray")
    name = args.name or space.name or Path(args.space).stem
    from autoprune.search.store import check_server

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_server(tracking_uri)  # before Ray starts, also on --resume
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")
    return SearchRequest(
        space=space, space_file=str(Path(args.space).resolve()),
        name=name,
        tracking_uri=tracking_uri,
        storage_path=args.storage_path if "://" in str(args.storage_path) else str(
            storage.resolve()),
        address=args.address, resume=args.resume,
    )


def _search(args: argparse.Namespace) -> int:
    from autoprune.search.tuner import run_search

    request = search_request(args)
    space = request.space
    rungs = (f", TrialScheduler moasha (rungs of {', '.join(map(str, space.rungs))} epochs, "
             f"reduction factor {space.scheduler.reduction_factor:g})"
             if space.scheduler.enabled else "")
    print(f"search {request.name!r}: {space.num_samples} trials, sampler "
          f"{space.sampler}{rungs}, objectives {', '.join(space.objectives)}; "
          f"MLflow {request.tracking_uri}", flush=True)
    outcome = run_search(request)
    experiment_id = print_front(outcome.name, outcome.tracking_uri)
    uri = "" if args.tracking_uri is None else f" --tracking-uri {outcome.tracking_uri}"
    if outcome.tracking_uri.startswith(("http://", "https://")):  # a server: its UI's link
        # workflowType: the training-runs view (MLflow 3 opens its GenAI view by default)
        print(f"\nopen the results: {outcome.tracking_uri.rstrip('/')}/#/experiments/"
              f"{experiment_id}?workflowType=machine_learning")
    else:
        print(f"\nopen the results: autoprune ui{uri}")
    if outcome.interrupted:
        print(f"interrupted: continue it with: autoprune search {args.space} "
              f"--name {outcome.name} --resume (and the same --tracking-uri/--storage-path)",
              flush=True)
        return 130
    return 0


def print_front(name: str, uri: str | None) -> str:
    from autoprune.search.pareto import front
    from autoprune.search.pick import front_table
    from autoprune.search.progress import human
    from autoprune.search.store import load_search

    record = load_search(uri, name)
    rows = front(record.rows, record.objectives, record.modes)
    print(f"\nPareto front of {name!r} ({len(rows)} of {len(record.rows)} completed trials; "
          f"objectives {', '.join(record.objectives)}):")
    print(front_table(rows, record.objectives))
    metrics = record.parent.data.metrics
    if "search_train_flops" in metrics:
        counts = ", ".join(f"{int(metrics.get(f'trials_{s}', 0))} {s}"
                           for s in ("completed", "pruned", "failed"))
        print(f"search compute: {human(metrics['search_train_flops'])} training FLOPs "
              f"({counts})")
    return str(record.lookup.experiment_id)


def _pareto(args: argparse.Namespace) -> int:
    print_front(args.experiment, args.tracking_uri)
    return 0


def _pick(args: argparse.Namespace) -> int:
    from autoprune.search.pick import Budget, choose, replay_config
    from autoprune.search.store import load_search

    budget = Budget.from_args(args.max_macs, args.max_macs_ratio, args.max_params,
                              args.min_accuracy)
    if args.register is not None:
        from autoprune.deploy.mlflow_model import check_name

        check_name("--register", args.register)  # before anything is looked up
        check_name("--alias", args.alias)
    record = load_search(args.tracking_uri, args.experiment)
    row = choose(record.rows, budget)
    from autoprune.config import REPLAY_NOTE, dump_yaml, replayable

    config = replayable(replay_config(record.lookup.client, row["run_id"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, args.out, header=f"autoprune pick: trial {row.get('trial_id')} "
                                           f"of search {args.experiment!r}\n{REPLAY_NOTE}")
    keys = ("run_id", "trial_id", "method", "accuracy", "macs", "params", "train_flops",
            "macs_ratio", "params_ratio")
    out = {k: row.get(k) for k in keys}
    registered = None
    if args.register is not None:
        from autoprune.deploy.mlflow_model import register
        from autoprune.search.store import resolve_tracking_uri

        tags = {"autoprune.search": args.experiment,
                "autoprune.budget": f"{budget.flag} {budget.limit:g}",
                "autoprune.objectives": ",".join(record.objectives),
                "autoprune.trial_id": str(row.get("trial_id")), "autoprune.run_id": row["run_id"],
                **{f"autoprune.{k}": f"{row[k]:.6g}" for k in ("accuracy", "macs", "macs_ratio")
                   if isinstance(row.get(k), (int, float))}}
        registered = register(record.lookup.client, resolve_tracking_uri(args.tracking_uri),
                              row["run_id"], args.register, args.alias, tags)
    print(json.dumps({**out, "config": config, "config_file": args.out,
                      **({"registered": registered} if registered else {})}, indent=2))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import subprocess

    from autoprune.search.pick import ui_command
    from autoprune.search.store import resolve_tracking_uri

    cmd = ui_command(resolve_tracking_uri(args.tracking_uri), args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


__all__ = ["SPACES_DIR", "add_commands", "print_front", "search_request"]

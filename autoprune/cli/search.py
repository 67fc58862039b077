"""Search-side commands of the command line: search, pareto, pick, ui.

Heavy imports (Ray, MLflow, torch) happen inside the handlers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.cli.train import TRACKING_HELP
from autoprune.commands import program
from autoprune.errors import UserError

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    """Register ``search``, ``pareto``, ``pick`` and ``ui`` on the ``autoprune`` parser."""
    p = sub.add_parser("search", help="search pruning schedules (Ray Tune + Optuna, MLflow)")
    p.add_argument("space", help="search space YAML (see search_spaces/)")
    p.add_argument("--name", help="search name = MLflow experiment (default: the file's name)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: from the space)")
    p.add_argument("--address", help="join a Ray cluster: auto, host:port or ray://host:port")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.add_argument("--storage-path", help="Ray results, shared by all nodes (default: runs/ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--sampler", help="nsga2 (default), tpe, random, gp or nsga3")
    p.add_argument("--seed", type=int, help="sampler seed (default: from the space)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: all that fit)")
    p.add_argument("--max-failures", type=int, help="retries of a crashed trial (default: 1)")
    p.add_argument("--scheduler", choices=("none", "moasha"),
                   help="multi-fidelity TrialScheduler: moasha = asynchronous multi-objective "
                        "successive halving (default: from the space, none; not advised: "
                        "see docs/explanations/schedules.md)")
    p.add_argument("--target", metavar="BOUNDS",
                   help='aim the search at one budget, e.g. "macs_ratio<=0.25" (also macs, '
                        "params, params_ratio, latency_ms; several joined with ',')")
    p.add_argument("--proxy-epochs", type=int, metavar="N",
                   help="two-stage search: stage 1 trains every trial for N epochs (sets "
                        "fidelity.proxy.epochs)")
    p.add_argument("--proxy-train-subset", type=int, metavar="N",
                   help="two-stage search: stage 1 trains on N images (fidelity.proxy."
                        "train_subset)")
    p.add_argument("--replay", metavar="front|K",
                   help="two-stage search: stage 2 replays the proxy front, or its K best "
                        "(fidelity.replay)")
    p.add_argument("--full-fidelity", action="store_true",
                   help="ignore the space's fidelity block: every trial at full fidelity")
    command("search")(_search)

    p = sub.add_parser("pareto", help="print a search's Pareto front from MLflow")
    p.add_argument("--experiment", required=True, help="the search's name")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    command("pareto")(_pareto)

    p = sub.add_parser("pick", help="the most accurate completed trial within a budget")
    p.add_argument("--experiment", required=True, help="the search's name")
    budget = p.add_mutually_exclusive_group(required=False)
    budget.add_argument("--max-macs", help="at most this many MACs (e.g. 4e7 or 40M)")
    budget.add_argument("--max-macs-ratio", type=float, help="at most this share of dense MACs")
    budget.add_argument("--max-params", help="at most this many parameters (e.g. 50K)")
    budget.add_argument("--min-accuracy", type=float, help="cheapest in MACs with this accuracy")
    p.epilog = ("Without a budget flag, pick stays within the search's --target. It chooses "
                "on validation accuracy and prints test accuracy beside it.")
    p.add_argument("--out", help="write the replayable train config YAML here")
    p.add_argument("--register", metavar="NAME",
                   help="register the picked network as a new version of MLflow model NAME")
    p.add_argument("--alias", default="picked",
                   help="alias set on that version (default: picked): models:/NAME@picked")
    p.add_argument("--trust", action="append", default=[], metavar="MODULE",
                   help="with --register: a module (or .py file) of your own network that may "
                        "be imported to rebuild it, where the trial logged no MLflow model "
                        "(repeatable); nothing is imported otherwise")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    command("pick")(_pick)

    p = sub.add_parser("ui", help="open the MLflow UI on the search results")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
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
    space = _with_fidelity_flags(space, args)
    if args.target is not None:
        from autoprune.search.target import parse_target

        space = dataclasses.replace(space, target=parse_target(args.target))
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


def _with_fidelity_flags(space: Any, args: argparse.Namespace) -> Any:
    """The space's two-stage settings with the command line's overrides."""
    from autoprune.search.fidelity import override_two_stage

    return dataclasses.replace(space, fidelity=override_two_stage(
        space.fidelity, args.proxy_epochs, args.proxy_train_subset, args.replay,
        getattr(args, "full_fidelity", False)))


def _search(args: argparse.Namespace) -> int:
    from autoprune.search.tuner import run_search

    request = search_request(args)
    space = request.space
    rungs = (f", TrialScheduler moasha (rungs of {', '.join(map(str, space.rungs))} epochs, "
             f"reduction factor {space.scheduler.reduction_factor:g})"
             if space.scheduler.enabled else "")
    stages = f", two stages ({space.fidelity.describe()})" if space.fidelity.enabled else ""
    target = f", target {space.target}" if space.target is not None else ""
    print(f"search {request.name!r}: {space.num_samples} trials, sampler "
          f"{space.sampler}{rungs}{stages}{target}, objectives {', '.join(space.objectives)} "
          f"(accuracy = validation accuracy); MLflow {request.tracking_uri}", flush=True)
    outcome = run_search(request)
    experiment_id = print_front(outcome.name, outcome.tracking_uri)
    uri = "" if args.tracking_uri is None else f" --tracking-uri {outcome.tracking_uri}"
    if outcome.tracking_uri.startswith(("http://", "https://")):  # a server: its UI's link
        # workflowType: the training-runs view (MLflow 3 opens its GenAI view by default)
        print(f"\nopen the results: {outcome.tracking_uri.rstrip('/')}/#/experiments/"
              f"{experiment_id}?workflowType=machine_learning")
    else:
        print(f"\nopen the results: {program()} ui{uri}")
    if outcome.interrupted:
        print(f"interrupted: continue it with: {program()} search {args.space} "
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
    print(f"\nPareto front of {name!r} ({len(rows)} of {len(record.rows)} completed "
          f"full-fidelity trials; objectives {', '.join(record.objectives)}; chosen on "
          f"validation accuracy, test accuracy shown beside it"
          f"{'; target ' + record.target if record.target else ''}):")
    print(front_table(rows, record.objectives))
    note = record.legacy_note()
    if note:
        print(note)
    metrics = record.parent.data.metrics
    if "search_train_flops" in metrics:
        counts = ", ".join(f"{int(metrics.get(f'trials_{s}', 0))} {s}"
                           for s in ("completed", "pruned", "failed", "proxy")
                           if s != "proxy" or f"trials_{s}" in metrics)
        print(f"search compute: {human(metrics['search_train_flops'])} training FLOPs "
              f"({counts})")
    return str(record.lookup.experiment_id)


def _pareto(args: argparse.Namespace) -> int:
    print_front(args.experiment, args.tracking_uri)
    return 0


def _pick(args: argparse.Namespace) -> int:
    from autoprune.search.pick import Budget, choose, replay_config
    from autoprune.search.store import load_search

    flags = (args.max_macs, args.max_macs_ratio, args.max_params, args.min_accuracy)
    budget = Budget.from_args(*flags) if any(f is not None for f in flags) else None
    if args.register is not None:
        from autoprune.deploy.mlflow_model import check_name

        check_name("--register", args.register)  # before anything is looked up
        check_name("--alias", args.alias)
    record = load_search(args.tracking_uri, args.experiment)
    if budget is None:
        from autoprune.search.target import parse_target

        target = parse_target(record.target, "the search's target")
        if target is None:
            Budget.from_args()  # raises: names the budget flags
        assert target is not None
        budget = Budget.from_target(target)
    note = record.legacy_note()
    if note:
        print(note, file=sys.stderr)
    row = choose(record.rows, budget)
    from autoprune.config import REPLAY_NOTE, dump_yaml, replayable

    config = replayable(replay_config(record.lookup.client, row["run_id"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, args.out, header=f"autoprune pick: trial {row.get('trial_id')} "
                                           f"of search {args.experiment!r}\n{REPLAY_NOTE}")
    keys = ("run_id", "trial_id", "method", "accuracy", "val_accuracy", "test_accuracy", "macs",
            "params", "train_flops", "macs_ratio", "params_ratio")
    out = {k: row.get(k) for k in keys}
    registered = None
    if args.register is not None:
        from autoprune.deploy.mlflow_model import register
        from autoprune.search.store import resolve_tracking_uri

        tags = {"autoprune.search": args.experiment,
                "autoprune.budget": budget.describe(),
                "autoprune.objectives": ",".join(record.objectives),
                "autoprune.trial_id": str(row.get("trial_id")), "autoprune.run_id": row["run_id"],
                **{f"autoprune.{k}": f"{row[k]:.6g}"
                   for k in ("accuracy", "val_accuracy", "test_accuracy", "macs", "macs_ratio")
                   if isinstance(row.get(k), (int, float))}}
        registered = register(record.lookup.client, resolve_tracking_uri(args.tracking_uri),
                              row["run_id"], args.register, args.alias, tags,
                              tuple(args.trust))
    out["budget"] = budget.describe()
    print(json.dumps({**out, "config": config, "config_file": args.out,
                      **({"registered": registered} if registered else {})}, indent=2))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import subprocess

    from autoprune.search.pick import ui_command, ui_env
    from autoprune.search.store import resolve_tracking_uri

    cmd = ui_command(resolve_tracking_uri(args.tracking_uri), args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd, env=ui_env())
    except KeyboardInterrupt:
        return 0


__all__ = ["SPACES_DIR", "add_commands", "print_front", "search_request"]

"""Command line: ``autoprune <command>``. Nothing else in autoprune imports this package.

One module per command group, each registering its commands on the parser:
:mod:`~autoprune.cli.train` (train, models, datasets, methods), :mod:`~autoprune.cli.search`
(search, pareto, pick, ui), :mod:`~autoprune.cli.export` (export),
:mod:`~autoprune.cli.check` (check).

User errors (``UserError``) end with ``error: <one line>`` and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from autoprune.errors import UserError

Handler = Callable[[argparse.Namespace], int]
_HANDLERS: dict[str, Handler] = {}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[name] = fn
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoprune", description="Search pruning-while-training schedules "
                     "for a compute budget, train them, export the result.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from autoprune.cli import check, export, search, train  # one module per command group

    for group in (train, check, search, export):
        group.add_commands(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _say_where_results_go(args)
        return _HANDLERS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`autoprune methods | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # MLflow refusing a store or a request (permissions, a store of another version):
        # one line, like every user-facing error; AUTOPRUNE_DEBUG=1 shows the traceback.
        if _from_mlflow(exc) and not os.environ.get("AUTOPRUNE_DEBUG"):
            text = " ".join(str(exc).split()) or type(exc).__name__
            if "Connection refused" in text or "Max retries exceeded" in text:
                print("error: the MLflow tracking server stopped answering; what could not "
                      "be sent waits in the spool: once the server is back, rerun the same "
                      "command (with --resume for a search)", file=sys.stderr)
            else:
                print(f"error: MLflow: {text[:500]}", file=sys.stderr)
            return 2
        raise


def _say_where_results_go(args: argparse.Namespace) -> None:
    """Once, on stderr: the MLflow store a command uses when MLflow's own
    ``MLFLOW_TRACKING_URI`` chose it (no --tracking-uri given)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env and hasattr(args, "tracking_uri") and args.tracking_uri is None:
        print(f"MLflow: {env} (from MLFLOW_TRACKING_URI)", file=sys.stderr)


def _from_mlflow(exc: BaseException) -> bool:
    if "mlflow" not in sys.modules:
        return False
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException)


def _version() -> str:
    from autoprune import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())

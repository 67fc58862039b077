"""``make demo``: the default search on this machine, offline, then where to look.

Runs ``search_spaces/quickstart.yaml`` (digits, a tiny ResNet, every PruningMethod and the
baselines; a few minutes on 2 CPU cores) into ``runs/`` (MLflow in ``runs/mlflow.db``,
Ray results in ``runs/ray``), prints the Pareto front and the next commands (as
``.venv/bin/autoprune ...``: they run as printed in a fresh shell). Run it again and it
resumes the same search (or just shows it, when it is complete).
"""

from __future__ import annotations

import sys
from pathlib import Path

from autoprune.cli import main as cli
from autoprune.commands import program

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
NAME = "quickstart"
STORAGE = Path("runs") / "ray"


def main() -> int:
    from ray import tune

    resume = ["--resume"] if tune.Tuner.can_restore(str((STORAGE / NAME).resolve())) else []
    if resume:
        print(f"search {NAME!r} exists under {STORAGE}: resuming it (delete runs/ to start "
              "afresh)", flush=True)
    code = cli(["search", str(SPACE), "--name", NAME, *resume])
    if code != 0:
        return code
    print("\nnext steps (from this folder, in any shell):")
    print("\n".join(f"  {line}" for line in next_steps()))
    return 0


def next_steps() -> list[str]:
    """What to run after the demo, each line as a fresh shell runs it (``.venv/bin/...``)."""
    ap = program()
    return [
        f"{ap} pareto --experiment {NAME}        # the front again, as a table",
        f"{ap} pick --experiment {NAME} --max-macs-ratio 0.25 --out picked.yaml",
        f"{ap} train picked.yaml --out runs/picked   # replay the picked schedule",
        f"{ap} pick --experiment {NAME} --max-macs-ratio 0.25 --register qs"
        "   # MLflow registry: models:/qs@picked",
        f"{ap} export models:/qs@picked --format onnx --out runs/qs.onnx"
        "   # ONNX, checked and timed",
        f"{ap} ui                                  # MLflow UI on http://127.0.0.1:5000",
    ]


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: the default search on this machine, offline, then where to look.

Runs ``search_spaces/quickstart.yaml`` (digits, a tiny ResNet, every PruningMethod and the
baselines; a few minutes on 2 CPU cores) into ``runs/`` (MLflow in ``runs/mlflow.db``,
Ray results in ``runs/ray``), prints the Pareto front and the command that opens the UI.
Run it again and it resumes the same search (or just shows it, when it is complete).
"""

from __future__ import annotations

import sys
from pathlib import Path

from autoprune.cli import main as cli

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
    print("\nnext steps:")
    print(f"  autoprune pareto --experiment {NAME}        # the front again, as a table")
    print(f"  autoprune pick --experiment {NAME} --max-macs-ratio 0.25 --out picked.yaml")
    print("  autoprune train picked.yaml                   # replay the picked schedule")
    print(f"  autoprune pick --experiment {NAME} --max-macs-ratio 0.25 --register qs"
          "   # MLflow registry: models:/qs@picked")
    print("  autoprune export models:/qs@picked --out qs.onnx   # ONNX, checked and timed")
    print("  autoprune ui                                  # MLflow UI on http://127.0.0.1:5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())

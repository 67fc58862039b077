"""The Pareto front of a finished search as a picture: README's and the docs' figure.

Reads the search from MLflow (by default the one ``make demo`` runs, ``quickstart`` in
``runs/mlflow.db``), prints its front as a table (the rows of ``autoprune pareto``) and
draws every completed full-fidelity trial with the front, as the search's own
``pareto.png`` does, into ``docs/img/pareto.png``.

    .venv/bin/python benchmarks/demo_front.py                  # after make demo
    .venv/bin/python benchmarks/demo_front.py --experiment my-search --out front.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--tracking-uri", default=None, help="default: runs/mlflow.db")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "pareto.png")
    args = parser.parse_args()

    from autoprune.search import pareto
    from autoprune.search.pick import front_table
    from autoprune.search.store import load_search, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    record = load_search(uri, args.experiment)
    front = pareto.front(record.rows, record.objectives, record.modes)
    print(front_table(front, record.objectives))
    x = record.objectives[1] if len(record.objectives) > 1 else "macs"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{args.experiment}: {len(record.rows)} completed trials, {len(front)} on the front"
    pareto.write_png(record.rows, front, x, record.objectives[0], args.out, title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

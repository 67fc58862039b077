"""``make demo``: the main job on the embedded default, offline."""

from __future__ import annotations

import sys

from autoprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "examples/filter_digits.yaml", "--out", "runs/demo"]))

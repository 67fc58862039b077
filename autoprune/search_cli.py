"""Search-side commands of the command line (search, pareto, pick, ui)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    """Register the search commands on the ``autoprune`` parser (none yet)."""

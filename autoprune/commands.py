"""How to write an ``autoprune`` command so that it runs as printed, in a fresh shell.

``make install`` puts the ``autoprune`` script in ``.venv/bin``, which is not on a fresh
shell's ``PATH``: a printed next step says ``.venv/bin/autoprune ...`` (the script beside
the running Python, relative to the working directory), as README and the docs do.
"""

from __future__ import annotations

import sys
from pathlib import Path


def program(name: str = "autoprune") -> str:
    """``name`` as this shell can run it: the script beside this Python (``.venv/bin/NAME``
    when run from the repository folder, an absolute path elsewhere), or bare ``name`` when
    no such script exists (autoprune installed some other way)."""
    script = Path(sys.executable).parent / name  # not resolved: the venv's own bin folder
    if not script.is_file():
        return name
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


__all__ = ["program"]

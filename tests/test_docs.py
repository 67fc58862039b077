"""The documentation: the site builds with ``--strict``, its generated reference pages say
what the code says, README stays a front page, and commands run as printed.

Building the site takes a few seconds (MkDocs + Material are pinned in requirements.lock,
so ``make install`` installs them).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
BIN = Path(sys.executable).parent


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference",
                                                  DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """A broken link, a missing page or a page left out of the nav fails the build."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec(
            "material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed: run make install")
    site = tmp_path / "site"
    proc = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": f"{BIN}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for page in ("index.html", "getting-started/index.html", "reference/cli/index.html",
                 "reference/methods/index.html", "reference/config/index.html",
                 "reference/search-space/index.html", "how-to/cluster/index.html",
                 "benchmarks/seed-methods/index.html"):
        assert (site / page).is_file(), page
    assert (site / "img" / "results" / "seed_methods_large.png").is_file()
    assert "autoprune pick" in (site / "reference" / "cli" / "index.html").read_text()


def test_the_methods_page_is_the_registered_params() -> None:
    from autoprune.methods import get_method, list_methods
    from autoprune.methods.timing import epoch_fields

    page = hooks().methods_page()
    for name in list_methods():
        params = get_method(name).Params
        section = page.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(params):
            row = next(line for line in section.splitlines() if line.startswith(f"| `{f.name}`"))
            assert f"`{f.default!r}`" in row, row
            assert ("yes (" in row) == (f.name in epoch_fields(params)), row


def test_the_cli_page_is_every_commands_help() -> None:
    from autoprune.cli import build_parser

    page = hooks().cli_page()
    for command in ("train", "search", "pareto", "pick", "export", "check", "ui", "methods"):
        assert f"## `autoprune {command}`" in page
    assert build_parser().format_usage().split()[1] in page


def test_readme_is_a_front_page_and_its_links_work() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text  # .ci/run runs `make test`
    assert "make test" in (REPO / ".ci" / "run").read_text()
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", text):
        assert (REPO / target).is_file(), target
    assert "docs/img/pareto.png" in text


def _command_lines(path: Path) -> list[str]:
    text = path.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_commands_run_as_printed_in_a_fresh_shell() -> None:
    """README, the docs and the demo write commands one way: ``.venv/bin/...`` (a fresh
    shell has no activated environment). The cluster page says to activate it there."""
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    for page in pages:
        if page.name == "cluster.md":
            assert "source .venv/bin/activate" in page.read_text()
            continue
        for line in _command_lines(page):
            first = line.split()[0]
            if first in ("autoprune", "python", "python3", "mlflow", "ray", "pytest"):
                raise AssertionError(f"{page.relative_to(REPO)}: {line!r} does not run in a "
                                     "fresh shell: write .venv/bin/" + first)


def test_the_demo_prints_next_steps_that_run_as_printed(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from autoprune import demo

    monkeypatch.chdir(REPO)
    steps = demo.next_steps()
    script = Path(sys.executable).parent / "autoprune"
    expected = ".venv/bin/autoprune" if script.parent == REPO / ".venv" / "bin" else None
    for step in steps:
        command = step.split()[0]
        assert (REPO / command).is_file() or Path(command).is_file(), step
        if expected:
            assert command == expected, step

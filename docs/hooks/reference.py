"""MkDocs hook: the reference pages that come from the code, written at every build.

``mkdocs build`` (``make docs``) calls :func:`on_files`, which adds pages that exist in
no file of ``docs/``, so they cannot drift from what they describe:

- ``reference/cli.md``: every command's ``--help``, from the parser ``autoprune`` runs;
- ``reference/methods.md``: every registered PruningMethod's parameters, with defaults,
  ranges and which ones count epochs, from the same ``Params`` dataclasses that
  ``autoprune methods`` lists and the engine validates against;
- ``reference/config.md``: the keys of a train config, from its typed dataclasses;
- ``reference/search-space.md``: ``search_spaces/README.md`` and the shipped spaces;
- ``img/results/*.png``: the benchmark figures, from ``benchmarks/results/``.

The page builders are plain functions (tests call them without MkDocs).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GENERATED = "<!-- generated at build time by docs/hooks/reference.py: edit the code, not this -->"


# --- the pages ---------------------------------------------------------------------------

def cli_page() -> str:
    """Every command's help text, as argparse prints it for ``autoprune CMD --help``."""
    from autoprune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [GENERATED, "", "# Command line", "",
             "Every command, as `--help` prints it (the commands run as "
             "`.venv/bin/autoprune ...` after `make install`: see "
             "[Getting started](../getting-started.md)). Bad input ends with one line "
             "`error: ...` and exit code 2, before any training starts.", "",
             "```text", _help(parser), "```", ""]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        lines += [f"## `autoprune {name}`", "", helps.get(name) or "", "",
                  "```text", _help(command), "```", ""]
    return "\n".join(lines)


def methods_page() -> str:
    """One table per registered PruningMethod: parameter, default, allowed values, whether
    it counts epochs (and so is rescaled with the budget), and its description."""
    from autoprune.methods import get_method, list_methods
    from autoprune.methods.base import _RANGE, ChannelParams
    from autoprune.methods.timing import epoch_fields

    shared = {f.name for f in dataclasses.fields(ChannelParams)}
    lines = [GENERATED, "", "# PruningMethods and their parameters", "",
             "Generated from each method's registered `Params` dataclass: the same source "
             "`autoprune methods` prints and the engine checks a config against. A value "
             "out of its range is refused before training (exit code 2). *Epochs* marks "
             "the parameters that count epochs: they are written for "
             "`training.schedule_epochs` and move with the budget when `training.epochs` "
             "differs ([how schedules rescale](../explanations/schedules.md)). What each "
             "method does and how it fared: [the five methods](../explanations/methods.md).",
             ""]
    for name in list_methods():
        method = get_method(name)
        params = method.Params
        epochs = epoch_fields(params)
        docs = _field_docs(params)
        fields = sorted(dataclasses.fields(params), key=lambda f: f.name in shared)
        doc = inspect.getdoc(method) or ""
        lines += [f"## `{name}`", "", doc.split("\n\n")[0].replace("\n", " "), ""]
        if method.requires:
            lines += [f"Needs a model that allows: {', '.join(method.requires)} "
                      "(`autoprune models`).", ""]
        if not fields:
            lines += ["No parameters.", ""]
            continue
        lines += ["| parameter | default | allowed | epochs | what it does |",
                  "|---|---|---|---|---|"]
        hints = typing.get_type_hints(params)
        for f in fields:
            allowed = _allowed(f, hints.get(f.name), _RANGE, epochs.get(f.name))
            epoch = f"yes ({epochs[f.name].kind})" if f.name in epochs else ""
            text = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{f.default!r}` | {allowed} | {epoch} | {text} |")
        lines.append("")
    return "\n".join(lines)


def config_page() -> str:
    """The keys of a train config (``autoprune train CONFIG``, a space's ``fixed:``)."""
    from autoprune.config import DatasetConfig, TrainConfig, TrainingConfig

    lines = [GENERATED, "", "# Train config keys", "",
             "A train config is YAML with the keys below (an unknown key is an error, not "
             "ignored). Generated from the typed dataclasses the config is validated into "
             "(`autoprune/config.py`); a search space's `fixed:` part uses the same keys "
             "([search space format](search-space.md)). An example: "
             "[Replay at another budget](../how-to/replay.md).", ""]
    for title, cls, prefix in (("Top level", TrainConfig, ""),
                               ("`dataset:`", DatasetConfig, "dataset."),
                               ("`training:`", TrainingConfig, "training.")):
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        lines += [f"## {title}", "", _first_paragraph(cls), "",
                  "| key | type | default | notes |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{f.default!r}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = "(see below)" if f.name in ("dataset", "training") else "`{}`"
            else:
                default = "**required**"
            kind = _type_name(hints.get(f.name)).replace("|", "\\|")
            text = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
            lines.append(f"| `{prefix}{f.name}` | `{kind}` | {default} | {text} |")
        lines.append("")
    return "\n".join(lines)


def space_page() -> str:
    """``search_spaces/README.md`` (the format), then the shipped spaces."""
    text = (REPO / "search_spaces" / "README.md").read_text()
    lines = [GENERATED, "", text.rstrip(), "", "## The shipped spaces", "",
             "| file | what it searches |", "|---|---|"]
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines()
                      if line.startswith("#")), "")
        lines.append(f"| `search_spaces/{path.name}` | {first.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


PAGES = {"reference/cli.md": cli_page, "reference/methods.md": methods_page,
         "reference/config.md": config_page, "reference/search-space.md": space_page}
RESULTS = REPO / "benchmarks" / "results"


# --- the MkDocs hook -----------------------------------------------------------------------

def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages and the benchmark figures to the site's files."""
    from mkdocs.structure.files import File

    for path, build in PAGES.items():
        files.append(File.generated(config, path, content=build()))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"img/results/{png.name}", abs_src_path=str(png)))
    return files


# --- helpers -------------------------------------------------------------------------------

def _help(parser: argparse.ArgumentParser) -> str:
    """``--help`` at a fixed width, so the page does not depend on the terminal."""
    formatter = parser.formatter_class
    parser.formatter_class = lambda prog: formatter(prog, width=96)  # type: ignore[call-arg]
    try:
        return parser.format_help().rstrip()
    finally:
        parser.formatter_class = formatter


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (and its bases), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _allowed(f: dataclasses.Field, hint: Any, range_key: str, epoch: Any) -> str:
    if range_key in f.metadata:
        r = f.metadata[range_key]
        low, high = (f"`{v}`" if isinstance(v, str) else _number(v) for v in (r.low, r.high))
        return f"{'(' if r.low_open else '['}{low}, {high}]"
    if epoch is not None:
        within = f", within `{epoch.within}`" if epoch.within else ""
        return {"every": "[1, epochs]", "before_end": "[0, epochs - 1]"}.get(
            epoch.kind, "[1, epochs]" if f.default != 0 else "[0, epochs] (0: automatic)"
        ) + within
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(hint))
    return _type_name(hint)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _type_name(hint: Any) -> str:
    if hint is None:
        return ""
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _first_paragraph(cls: type) -> str:
    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")

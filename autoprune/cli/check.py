"""``autoprune check MODEL``: what a network allows to be pruned, and why not, before training."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from autoprune.cli.train import positive_int
from autoprune.errors import UserError

DEFAULT_CLASSES = 10


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    p = sub.add_parser("check", help="build and trace a network: dense MACs and params, its "
                                     "prunable channel groups, which methods apply, what cannot "
                                     "be pruned and why")
    p.add_argument("model", help="a registered model name, or your own network as "
                                 "'module:callable' or 'path/to/file.py:callable'")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", metavar="NAME_OR_FACTORY",
                        help="take shapes and classes from a registered dataset or from a "
                             "dataset factory 'module:callable' (called, so it loads the data)")
    source.add_argument("--input-shape", metavar="C,H,W", help="one input's shape")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help=f"classes (default: the dataset's, else {DEFAULT_CLASSES})")
    p.add_argument("--model-kwargs", metavar="JSON", default="{}",
                   help="arguments of your network's builder, e.g. '{\"width\": 32}'")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    command("check")(_check)


def _check(args: argparse.Namespace) -> int:
    from autoprune.methods.support import network_report

    kwargs = _kwargs(args.model_kwargs)
    classes, shape = _shapes(args)
    model = _build(args.model, kwargs, classes, shape)
    import torch

    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    report = network_report(model, example)
    if args.json:
        print(json.dumps(_as_dict(args.model, classes, shape, report)))
    else:
        print(_as_text(args.model, type(model).__name__, classes, shape, report))
    return 0


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-kwargs is not JSON: {exc.msg} (e.g. '{{\"width\": 32}}')"
                        ) from None
    if not isinstance(value, dict):
        raise UserError("--model-kwargs must be a JSON object, e.g. '{\"width\": 32}'")
    return value


def _shapes(args: argparse.Namespace) -> tuple[int, tuple[int, int, int]]:
    """(classes, (C, H, W)) from --dataset, --input-shape and --num-classes."""
    from autoprune.cli.export import _shape

    if args.input_shape is not None:
        shape = _shape(args.input_shape)
        assert shape is not None
        return args.num_classes or DEFAULT_CLASSES, (shape[0], shape[1], shape[2])
    if args.dataset is None:
        raise UserError("give --dataset NAME_OR_FACTORY or --input-shape C,H,W")
    from autoprune.references import is_reference

    if is_reference(args.dataset):
        from autoprune.data._registry import load_request
        from autoprune.data.factory import load_factory
        from autoprune.references import normalise

        data = load_factory(normalise(args.dataset, "--dataset"), {}, load_request())
        height, width = (data.input_size, data.input_size) if isinstance(
            data.input_size, int) else data.input_size
        return args.num_classes or data.num_classes, (data.in_channels, height, width)
    from autoprune.data._registry import get_dataset

    spec, _loader = get_dataset(args.dataset)
    classes = args.num_classes or spec.num_classes
    if not classes:
        raise UserError(f"dataset {spec.name!r} learns its classes from its files: give "
                        "--num-classes N")
    return classes, (spec.in_channels, spec.input_size, spec.input_size)


def _build(model: str, kwargs: dict[str, Any], classes: int,
           shape: tuple[int, int, int]) -> Any:
    from autoprune.references import is_reference

    channels, height, width = shape
    if is_reference(model):
        from autoprune.models.user import build_user_model
        from autoprune.references import normalise

        size = height if height == width else (height, width)
        return build_user_model(normalise(model, "model"), kwargs, classes, channels, size)
    from autoprune.models import create_model, is_registered, list_models
    from autoprune.validation import check_choice

    if not is_registered(model):
        try:
            check_choice("model", model, list_models())
        except UserError as exc:
            raise UserError(f"{exc}; or your own network, 'module:callable' or "
                            "'path/to/file.py:callable'") from None
    if height != width:
        raise UserError(f"model {model!r} takes square inputs, not {height}x{width}")
    return create_model(model, classes, channels, height, **kwargs)


def _as_dict(model: str, classes: int, shape: tuple[int, ...], report: Any) -> dict[str, Any]:
    support = report.support
    return {
        "model": model, "input_shape": list(shape), "num_classes": classes,
        "macs": report.macs, "params": report.params,
        "groups": [{"key": g.key, "width": g.width, "layers": list(g.layers)}
                   for g in report.groups],
        "supports": {k: getattr(support, k) for k in ("prune", "grow", "layers")},
        "why_not": dict(support.why_not),
        "blocked": [{"layer": name, "why": why} for name, why in report.blocked],
        "branches": list(report.branches),
        "inexact": list(report.shifted),
    }


def _as_text(model: str, kind: str, classes: int, shape: tuple[int, ...], report: Any) -> str:
    from autoprune.methods.support import KIND_WORDS

    lines = [f"network: {model} ({kind}), input {'x'.join(map(str, shape))}, {classes} classes",
             f"dense: {report.macs:,} MACs, {report.params:,} params",
             f"prunable channel groups ({len(report.groups)}): key, width, layers"]
    for group in report.groups:
        shown = ", ".join(group.layers[:6]) + (f", +{len(group.layers) - 6} more"
                                               if len(group.layers) > 6 else "")
        lines.append(f"  {group.key}  {group.width}  {shown}")
    lines.append("methods:")
    for kind_name, words in KIND_WORDS.items():
        ok = getattr(report.support, kind_name)
        extra = f" ({len(report.branches)} blocks)" if kind_name == "layers" and ok else ""
        verdict = "yes" + extra if ok else f"no: {report.support.why_not.get(kind_name, '')}"
        lines.append(f"  {words}: {verdict}")
    lines.append("  dense training: yes")
    lines.append(f"cannot be pruned ({len(report.blocked)}):")
    lines += [f"  {name}: {why}" for name, why in report.blocked]
    if report.shifted:
        lines.append(f"pruned inexactly ({len(report.shifted)}): removing these groups' "
                     "channels changes other channels too (an operation followed in shape "
                     "only, e.g. a channel shuffle, or a layer that is not 0 on a zero "
                     "channel, e.g. LayerNorm): pruning runs, but cuts other inputs than "
                     "the channels it chose")
        lines += [f"  {key}" for key in report.shifted]
    return "\n".join(lines)

"""``autoprune export``: a trained network as ONNX, checked against PyTorch and timed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.cli.train import TRACKING_HELP, positive_int
from autoprune.errors import UserError

DEFAULT_BATCH = 128


def add_commands(sub: Any, command: Callable[[str], Callable[..., Any]]) -> None:
    p = sub.add_parser("export", help="export a trained network to ONNX, checked and timed")
    p.add_argument("source", help="a model.pt (or its folder), a trial's MLflow run id, or "
                                  "models:/NAME@ALIAS")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (default)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="the second batch size timed (default: the training batch size)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads of both runtimes (default: torch's default)")
    p.add_argument("--repeats", type=positive_int, default=30, metavar="N",
                   help="timed runs per latency, after 5 warm-up runs (default: 30)")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="one input's shape, for a model file that records none")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.add_argument("--trust", action="append", default=[], metavar="MODULE",
                   help="a module (or .py file) of your own network and dataset factory that "
                        "may be imported to rebuild it (repeatable); a model file never "
                        "imports code by itself")
    command("export")(_export)


def _export(args: argparse.Namespace) -> int:
    import torch

    from autoprune.compute import count_macs_params, measure_latency_ms
    from autoprune.deploy.onnx_export import onnx_latency_ms, parity, session, to_onnx
    from autoprune.deploy.source import resolve, sample_inputs

    shape = _shape(args.input_shape)
    source = resolve(args.source, args.tracking_uri, tuple(args.trust))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batch = args.batch_size or int(((source.config or {}).get("training") or {}).get(
        "batch_size", DEFAULT_BATCH))
    inputs, described = sample_inputs(source, batch, shape)
    model = source.model.eval()
    out = to_onnx(model, inputs[:2], args.out)
    sess = session(out, threads)
    diff = parity(model, sess, inputs)
    macs, params = count_macs_params(model, inputs[:1])
    latency: dict[str, dict[str, float]] = {"pytorch": {}, "onnxruntime": {}}
    for size in dict.fromkeys((1, batch)):
        x = inputs[:size]
        latency["pytorch"][f"batch_{size}"] = round(
            measure_latency_ms(model, x, args.repeats, batch_size=size), 4)
        latency["onnxruntime"][f"batch_{size}"] = round(onnx_latency_ms(sess, x, args.repeats), 4)
    print(json.dumps({
        "file": str(Path(out)), "format": args.format, "source": source.label,
        "size_bytes": Path(out).stat().st_size, "params": params, "macs": macs,
        "max_abs_diff": diff, "inputs": described, "latency_ms": latency,
        "threads": threads, "repeats": args.repeats, "warmup": 5,
    }))
    return 0


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape must be C,H,W (three positive integers), not {text!r}")
    return shape

"""GPU engine commands: ``fp16`` (mixed-precision ONNX for ORT CUDA) and ``tensorrt`` (FP16 plan).

``register(subparsers)`` adds them to ``python -m engines``; ``python -m engines.gpu_cli``
runs them on their own. Both gate the new engine against fp32 on real catalog images and
leave the bundle untouched when the gate fails (exit status 1).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_DATA = Path("../shared/data/myntra-small")


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """--bundle, and where the catalog's labels and images are: every engine command needs them."""
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory to add the engine to")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"dataset folder with styles.csv and images-*.tar (default {DEFAULT_DATA})")
    parser.add_argument("--labels", type=Path, help="labels CSV (default: DATA/styles.csv)")
    parser.add_argument("--images", nargs="+", help="image folder or tar shards (default: DATA)")


def source_paths(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """(labels CSV, image sources) from ``add_source_args``' options."""
    return args.labels or args.data / "styles.csv", args.images or [str(args.data)]


def _data_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser)
    parser.add_argument("--gate-images", type=int, default=500, help="real images for the accuracy gate (500)")
    parser.add_argument("--gate-split", default="test",
                        help="split to draw gate images from ('all' for every row; default test)")
    parser.add_argument("--seed", type=int, default=0)


def _reported(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Typed errors become one clear line and exit status 2 (a failed gate is 1)."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        from fashsdk.errors import FashsdkError

        from .fp16 import Fp16ConversionError

        try:
            return command(args)
        except (FashsdkError, Fp16ConversionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def _sources(args: argparse.Namespace) -> tuple[Path, list[str]]:
    if args.gate_split == "all":
        args.gate_split = None
    return source_paths(args)


@_reported
def cmd_fp16(args: argparse.Namespace) -> int:
    from .fp16 import build_fp16_engine
    from .gpu_gate import GateError

    labels, images = _sources(args)
    try:
        entry, gate = build_fp16_engine(args.bundle, labels, images, gate_images=args.gate_images,
                                        split=args.gate_split, seed=args.seed)
    except GateError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(gate.summary())
    print(json.dumps({"bundle": str(args.bundle), "engine": entry.file, "gate_backend": gate.candidate,
                      "fp32_nodes": entry.facts["conversion"]["fp32_nodes"]}))
    if not gate.candidate.startswith("onnxruntime-cuda"):
        print("note: no CUDA provider here, so the gate ran the fp16 model on ONNX Runtime CPU; "
              "re-run on a GPU machine to gate GPU fp16 arithmetic", file=sys.stderr)
    return 0


@_reported
def cmd_tensorrt(args: argparse.Namespace) -> int:
    from fashsdk.encoding.backends.tensorrt_build import Profile

    from .gpu_gate import GateError
    from .tensorrt import build_tensorrt_engine

    labels, images = _sources(args)
    try:
        profile = Profile(*args.profile)
    except ValueError as exc:
        print(f"--profile: {exc}", file=sys.stderr)
        return 2
    try:
        entry, gate = build_tensorrt_engine(args.bundle, labels, images, profile=profile,
                                            workspace_bytes=args.workspace_mib << 20,
                                            timing_cache=args.timing_cache, gate_images=args.gate_images,
                                            split=args.gate_split, seed=args.seed)
    except GateError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(gate.summary())
    keep = ("tensorrt_version", "gpu_name", "compute_capability", "typing", "profile", "source_onnx")
    print(json.dumps({"bundle": str(args.bundle), "engine": entry.file, **{k: entry.facts[k] for k in keep}}))
    return 0


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``fp16`` and ``tensorrt`` subcommands to an engines CLI."""
    p = subparsers.add_parser("fp16", help="mixed-precision fp16 ONNX (IO and normalisation fp32), gated, "
                                           "registered for ONNX Runtime CUDA")
    _data_args(p)
    p.set_defaults(func=cmd_fp16)
    p = subparsers.add_parser("tensorrt", help="TensorRT FP16 plan for this GPU, gated, registered")
    _data_args(p)
    p.add_argument("--profile", type=int, nargs=3, default=[1, 64, 256], metavar=("MIN", "OPT", "MAX"),
                   help="optimisation profile batch sizes (default 1 64 256)")
    p.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace limit in MiB (2048)")
    p.add_argument("--timing-cache", type=Path,
                   help="timing cache file (default: one per GPU and TensorRT version in the plan cache)")
    p.set_defaults(func=cmd_tensorrt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.gpu_cli", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

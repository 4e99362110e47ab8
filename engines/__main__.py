"""python -m engines {int8, fp16, tensorrt} --bundle B --data D: add an engine to a bundle."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .gpu_cli import add_source_args, source_paths


def _int8(args: argparse.Namespace) -> int:
    from fashsdk.errors import FashsdkError

    from .int8 import Int8Error, Int8Gate, Int8Options, build_int8_engine

    try:
        options = Int8Options(per_channel=not args.per_tensor, reduce_range=not args.full_range,
                              activations=args.activations, op_types=tuple(args.op_types),
                              exclude_nodes=tuple(args.exclude_nodes), output_layers_fp32=not args.quantize_outputs,
                              depthwise_fp32=args.depthwise_fp32,
                              method=args.method, calibration_images=args.calibration_images,
                              calibration_split=args.calibration_split or None, seed=args.seed)
        gate = Int8Gate(images=args.gate_images, split=args.gate_split or None, min_speedup=args.min_speedup,
                        min_mean_cosine=args.min_mean_cosine, max_top30_change_points=args.max_top30_change)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels, images = source_paths(args)
    try:
        entry, report = build_int8_engine(args.bundle, labels, images, options, gate, force=args.force,
                                          threads=args.threads)
    except Int8Error as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except FashsdkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(json.dumps({"bundle": str(args.bundle), "engine": entry.file, "precision": entry.precision,
                      "accuracy_vs_fp32": entry.facts["accuracy_vs_fp32"], "speed_vs_fp32": entry.facts["speed_vs_fp32"]}))
    return 0


def _add_int8(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser("int8", help="static int8 (QDQ) model for ONNX Runtime CPU, calibrated on catalog "
                                           "images, gated against fp32, registered only if faster here")
    add_source_args(p)
    p.add_argument("--calibration-images", type=int, default=300, help="calibration images (default 300)")
    p.add_argument("--calibration-split", default="train", help="split to calibrate on (default train; '' = all)")
    p.add_argument("--gate-images", type=int, default=500, help="held-out images for the accuracy gate (500)")
    p.add_argument("--gate-split", default="test", help="split for the gate (default test; '' = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="minmax", help="calibration: minmax (default), entropy or percentile")
    p.add_argument("--activations", default="uint8", help="uint8 (default, fast on x86) or int8")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales instead of per-channel")
    p.add_argument("--full-range", action="store_true",
                   help="8-bit weights (default 7-bit: no saturation on CPUs without VNNI)")
    p.add_argument("--op-types", nargs="+", default=["Conv", "Gemm", "MatMul"], help="op types to quantise")
    p.add_argument("--exclude-nodes", nargs="*", default=[], help="node names to keep in fp32")
    p.add_argument("--depthwise-fp32", action="store_true",
                   help="keep depthwise (grouped) convolutions in fp32 and quantise the others")
    p.add_argument("--quantize-outputs", action="store_true",
                   help="also quantise the last layer before each output (costs manipulation accuracy)")
    p.add_argument("--min-mean-cosine", type=float, default=0.99)
    p.add_argument("--max-top30-change", type=float, default=1.0, help="points of Top-30 on the gate sample")
    p.add_argument("--min-speedup", type=float, default=1.0,
                   help="int8 must be this much faster than fp32 here to be registered (0 = no speed rule)")
    p.add_argument("--force", action="store_true", help="register even when not faster than fp32 here")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the timing (default: cores)")
    p.set_defaults(func=_int8)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_int8(sub)
    try:
        from .gpu_cli import register
    except ImportError:  # GPU engine commands not present in this checkout
        pass
    else:
        register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

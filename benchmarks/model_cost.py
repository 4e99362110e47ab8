"""python -m benchmarks.model_cost --json OUT: what a bundle's model costs per image by input shape.

The end-to-end encode target (1.9 s per 1,000 images on 2 cores) is mostly the model's time, so
this asks which knobs move it, on the bundle's own ONNX model under ONNX Runtime (CPU):
- input size: the same network and weights at other heights and widths (the exported graph
  pools globally, so only its input's declared size changes; the features are not the trained
  ones at another size: this measures cost, not quality);
- batch size: images per call;
- thread layout: one session on every core against one single-threaded run per core on
  separate halves of the stream (inter-batch against intra-op parallelism).
Every setting runs over the same random inputs, interleaved repeat by repeat so the VM's
drift hits all alike; figures are medians in ms per image, with ratios to the bundle's own
input size at the default batch measured in the same run. Writes OUT (JSON) and OUT.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fashsdk.bundle import Bundle
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import cpu_session, machine, usable_cores

from .encode import CpuShare, settle

DEFAULT_BATCH = 64  # the Encoder's default batch


def resizable_model(bundle: Bundle) -> bytes:
    """The bundle's fp32 ONNX model (checksum verified by Bundle.load) with height and width symbolic."""
    import onnx

    entry = bundle.engine("onnxruntime", "fp32")
    if entry is None:
        raise SystemExit(f"bundle {bundle.directory} has no ONNX Runtime fp32 model")
    model = onnx.load_from_string(bundle.path_of(entry.file).read_bytes())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise SystemExit(f"expected an NCHW image input, got {len(dims)} dimensions")
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model.SerializeToString()


def _stream(session: Any, name: str, x: np.ndarray, batch: int) -> None:
    for start in range(0, len(x), batch):
        session.run(None, {name: x[start:start + batch]})


def _split_stream(sessions: Sequence[Any], name: str, x: np.ndarray, batch: int) -> None:
    """One thread per session, each on its own contiguous share of the images (ORT releases the GIL)."""
    shares = np.array_split(np.arange(len(x)), len(sessions))
    threads = [threading.Thread(target=_stream, args=(s, name, x[part[0]:part[-1] + 1], batch))
               for s, part in zip(sessions, shares) if len(part)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def settings(model: bytes, height: int, width: int, sizes: Sequence[tuple[int, int]], batches: Sequence[int],
             images: int, cores: int, seed: int) -> dict[str, tuple[Callable[[], None], dict[str, Any]]]:
    """Named timed calls, each over ``images`` random inputs."""
    rng = np.random.default_rng(seed)
    shared = cpu_session(model, cores)
    name = shared.get_inputs()[0].name
    inputs = {s: rng.standard_normal((images, 3, *s)).astype(np.float32) for s in {(height, width), *sizes}}
    out: dict[str, tuple[Callable[[], None], dict[str, Any]]] = {}
    for h, w in sizes:
        x = inputs[(h, w)]
        out[f"{h}x{w}, batch {DEFAULT_BATCH}"] = (lambda x=x: _stream(shared, name, x, DEFAULT_BATCH),
                                                  {"input": [h, w], "batch": DEFAULT_BATCH, "layout": f"1 x {cores} threads"})
    own = inputs[(height, width)]
    for b in batches:
        if b != DEFAULT_BATCH:
            out[f"{height}x{width}, batch {b}"] = (lambda b=b: _stream(shared, name, own, b),
                                                   {"input": [height, width], "batch": b, "layout": f"1 x {cores} threads"})
    if cores > 1:
        singles = [cpu_session(model, 1) for _ in range(cores)]
        out[f"{height}x{width}, {cores} runs x 1 thread"] = (lambda: _split_stream(singles, name, own, DEFAULT_BATCH),
                                                              {"input": [height, width], "batch": DEFAULT_BATCH,
                                                               "layout": f"{cores} x 1 thread"})
        out[f"{height}x{width}, 1 thread"] = (lambda: _stream(singles[0], name, own, DEFAULT_BATCH),
                                              {"input": [height, width], "batch": DEFAULT_BATCH, "layout": "1 x 1 thread"})
    return out


def measure(calls: dict[str, tuple[Callable[[], None], dict[str, Any]]], images: int, repeats: int) -> list[dict[str, Any]]:
    """Interleaved repeats of every call; ms per image, median and range."""
    for call, _ in calls.values():  # warm-up: first-run allocations and thread pools
        call()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, (call, _) in calls.items():
            settle()
            start = time.perf_counter()
            call()
            times[key].append(1000.0 * (time.perf_counter() - start) / images)
    return [{"setting": key, **facts, "ms_per_image": round(statistics.median(times[key]), 4),
             "range": [round(min(times[key]), 4), round(max(times[key]), 4)]} for key, (_, facts) in calls.items()]


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none"
    lines = ["# Model cost by input size, batch and thread layout (benchmarks/model_cost.py)", "",
             f"Bundle `{result['bundle']}` (trained at {result['trained_input'][0]}x{result['trained_input'][1]}); "
             f"{m['cpu']}, {m['cores']} usable cores, flags: {flags}. ONNX Runtime fp32, {result['images']} random "
             f"inputs per timing, medians of {result['repeats']} interleaved repeats; ratio to the trained size "
             f"at batch {DEFAULT_BATCH} in the same run. Other processes used "
             f"{m['cpu_share']['other_processes_cores_avg']} cores on average.", "",
             "| setting | ms per image | range | ratio |", "| --- | --- | --- | --- |"]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {row['ms_per_image']:.3f} | {row['range'][0]:.3f}-{row['range'][1]:.3f} "
                     f"| {row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size {text!r} must be HEIGHTxWIDTH, e.g. 112x84") from None
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise argparse.ArgumentTypeError(f"input size {text!r} must be between 8 and 4096 pixels per side")
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="output JSON (a .md table is written beside it)")
    p.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    p.add_argument("--sizes", type=parse_size, nargs="+", default=None,
                   help="input sizes HxW (default: the bundle's, and 7/8, 3/4 and 5/8 of each side)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 64, 128])
    p.add_argument("--images", type=int, default=512, help="images per timing (default 512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.images < 1 or args.repeats < 1:
        p.error("--batches, --images and --repeats must be positive")
    bundle = Bundle.load(args.bundle)
    height, width = bundle.preprocess.height, bundle.preprocess.width
    sizes = args.sizes or [(round(height * f / 8), round(width * f / 8)) for f in (8, 7, 6, 5)]
    if (height, width) not in sizes:
        sizes = [(height, width), *sizes]
    share = CpuShare()
    print(f"timing {len(sizes)} sizes, {len(args.batches)} batches, thread layouts; {args.repeats} repeats ...",
          file=sys.stderr, flush=True)
    rows = measure(settings(resizable_model(bundle), height, width, sizes, args.batches, args.images,
                            usable_cores(), args.seed), args.images, args.repeats)
    base = next(r["ms_per_image"] for r in rows if r["setting"] == f"{height}x{width}, batch {DEFAULT_BATCH}")
    for row in rows:
        row["ratio"] = round(row["ms_per_image"] / base, 3)
    info = machine()
    info["cpu_share"] = share.report()
    result = {"bundle": str(args.bundle), "trained_input": [height, width], "images": args.images,
              "repeats": args.repeats, "machine": info, "rows": rows}
    atomic_write_json(args.json, result)
    atomic_write_bytes(args.json.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

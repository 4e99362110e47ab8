"""How the encoder splits decoding from the model: its default against fixed settings.

    python -m benchmarks.decode_split                      # the demo bundle and a decode-bound model
    python -m benchmarks.decode_split --bundle runs/demo/bundle --images 1000 --repeats 5

For each bundle, JPEG files -> fashsdk.Encoder -> model -> CatalogIndex (``benchmarks.encode``'s
end-to-end path), with the Encoder's default (decode mode chosen from each stream's first batch),
one decode thread, and one decode process per usable core, interleaved over the repeats on
catalog-size JPEGs and 480x640 re-encodes. ``--light`` adds an untrained compact backbone of
width 8 at the first bundle's input size (needs torch): a model far cheaper than decoding, the
case where processes should win. Writes JSON and Markdown with the machine and the mode the
default chose.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.encode import DEFAULT_DATA, end_to_end, machine, prepare_images, settle
from fashsdk.bundle import Bundle
from fashsdk.encoding.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import usable_cores

OUT = Path("benchmarks/results")


def light_bundle(like: Bundle, directory: Path) -> Path:
    """An untrained width-8 compact ADDE model with ``like``'s schema and input size."""
    from export.models import ADDE, ModelConfig
    from export.onnx_export import build_bundle

    spec = like.preprocess
    model = ADDE(ModelConfig(backbone="compact", attribute_sizes=like.schema.sizes, dim=16, width=8,
                             height_px=spec.height, width_px=spec.width))
    pixels = np.random.default_rng(0).integers(0, 256, (4, spec.height, spec.width, 3), dtype=np.uint8)
    build_bundle(model.eval(), like.schema, spec, directory, pixels)
    return directory


def measure(bundle: Bundle, files: dict[str, list], repeats: int, batch: int) -> list[dict[str, Any]]:
    """Seconds per 1000 images for each setting and image set, interleaved; medians and runs."""
    settings: dict[str, int | None] = {"default": None, "1 thread": 1,
                                       f"{usable_cores()} processes": usable_cores()}
    backend = OnnxRuntimeCpuBackend(str(bundle.path_of("model.onnx")))
    spec = bundle.preprocess
    backend.run(np.zeros((batch, 3, spec.height, spec.width), np.float32))  # warm-up
    runs: dict[tuple[str, str], list[float]] = {}
    modes: dict[tuple[str, str], set[str]] = {}
    for _ in range(repeats):
        for images, items in files.items():
            for setting, workers in settings.items():
                settle()
                result = end_to_end(backend, bundle, items, batch, workers)
                runs.setdefault((images, setting), []).append(1000.0 * result.seconds / len(items))
                modes.setdefault((images, setting), set()).add(result.decode_mode)
    return [{"images": images, "setting": setting, "s_per_1000": round(statistics.median(times), 3),
             "runs": [round(t, 3) for t in times], "decode_modes": sorted(modes[(images, setting)])}
            for (images, setting), times in runs.items()]


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on)
    lines = ["# Decode split: the encoder's default against fixed settings (benchmarks/decode_split.py)", "",
             f"Machine: {m['cpu']}, {m['cores']} usable cores, flags: {flags}. {result['images']} test-split "
             f"JPEGs, batch {result['batch']}, ONNX Runtime fp32 on all cores; medians over {result['repeats']} "
             "interleaved repeats, seconds per 1000 images end to end (file -> vector in the index).", "",
             "| bundle | images | setting | s/1000 | decode mode used | ratio to the default |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, rows in result["bundles"].items():
        default = {r["images"]: r["s_per_1000"] for r in rows if r["setting"] == "default"}
        for r in rows:
            lines.append(f"| {name} | {r['images']} | {r['setting']} | {r['s_per_1000']:.3f} | "
                         f"{', '.join(r['decode_modes'])} | {r['s_per_1000'] / default[r['images']]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", help="bundle directory (repeatable; "
                   "default runs/demo/bundle)")
    p.add_argument("--light", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure an untrained width-8 compact model (needs torch; default on)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=OUT / "decode-split")
    args = p.parse_args(argv)
    bundles = args.bundle or [Path("runs/demo/bundle")]
    for path in bundles:
        if not (path / "manifest.json").is_file():
            p.error(f"{path} is not a bundle (no manifest.json): run `make demo` or pass --bundle DIR")
    work = Path(tempfile.mkdtemp(prefix="decode-split-"))
    image_set = prepare_images(args.data / "styles.csv", [str(args.data)], args.images, 0, work)
    files = {"catalog": image_set.files(False), "480x640": image_set.files(True)}
    loaded = {str(path): Bundle.load(path) for path in bundles}
    if args.light:
        first = next(iter(loaded.values()))
        loaded["untrained width-8 compact"] = Bundle.load(light_bundle(first, work / "light-bundle"))
    result: dict[str, Any] = {"machine": machine(), "images": args.images, "batch": args.batch,
                              "repeats": args.repeats, "bundles": {}}
    for name, bundle in loaded.items():
        print(f"measuring {name} ...", flush=True)
        result["bundles"][name] = measure(bundle, files, args.repeats, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

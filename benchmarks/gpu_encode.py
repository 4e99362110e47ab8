"""GPU rows for the encode benchmark, and the results file they go to.

``gpu_rows(bundle, pixels, encoded)`` measures every GPU backend the bundle has and this
machine can run (TensorRT plan, ONNX Runtime CUDA): model-only images per second for
batch sizes 1..256 (median over repeats, host<->device copies of the batch included), and
end to end (JPEG bytes -> Encoder -> vectors, Pillow decoding on CPU threads), next to
ONNX Runtime CPU fp32 at batch 64 measured in the same run as the baseline for ratios.
``benchmarks/encode.py`` calls it when ``gpu_backends(bundle)`` is not empty; on its own:

    python -m benchmarks.gpu_encode --bundle runs/demo/bundle

writes ``benchmarks/results/gpu-<device>.json`` (device, driver, library versions, figures).
Without a GPU it prints why and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

GPU_BACKENDS = ("tensorrt-cuda-fp16", "onnxruntime-cuda-fp16")
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED_KEYS = ("device", "driver", "libraries", "machine", "bundle", "figures")


def gpu_backends(bundle: Any) -> list[str]:
    """GPU backends this bundle has engines for and this machine can run, fastest first."""
    from fashsdk.encoding.backends import available_backends

    return [name for name in available_backends(bundle) if name in GPU_BACKENDS]


def why_no_gpu(bundle: Any) -> str:
    """One line on what is missing, for a benchmark that has to skip its GPU rows."""
    from fashsdk.encoding.backends.gpu_probe import nvidia_gpu_present, onnxruntime_cuda_usable, tensorrt_usable

    if not nvidia_gpu_present():
        return "no NVIDIA GPU or driver on this machine"
    reasons = []
    if bundle.engine("tensorrt", "fp16") is None:
        reasons.append("the bundle has no TensorRT plan (python -m engines tensorrt)")
    elif not tensorrt_usable():
        reasons.append("TensorRT or pycuda is not installed")
    if bundle.engine("onnxruntime", "fp16") is None:
        reasons.append("the bundle has no fp16 ONNX model (python -m engines fp16)")
    elif not onnxruntime_cuda_usable():
        reasons.append("onnxruntime has no CUDA provider (pip install 'fashsdk[gpu]')")
    return "; ".join(reasons) or "unknown"


def _tile(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])


def model_only(backend: Any, images: np.ndarray, batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = 7,
               target_seconds: float = 0.25, warmup: int = 3) -> list[dict[str, Any]]:
    """Images per second of ``backend.run`` on real normalised images, per batch size."""
    rows = []
    for batch in batches:
        x = _tile(images, batch)
        for _ in range(warmup):
            backend.run(x)
        t = time.perf_counter()
        backend.run(x)
        once = max(time.perf_counter() - t, 1e-6)
        iters = max(1, int(target_seconds / once))
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(iters):
                backend.run(x)
            rates.append(iters * batch / (time.perf_counter() - t))
        median = statistics.median(rates)
        rows.append({"batch": batch, "images_per_s": round(median, 1), "ms_per_batch": round(1000 * batch / median, 4),
                     "min_images_per_s": round(min(rates), 1), "max_images_per_s": round(max(rates), 1),
                     "repeats": repeats, "iterations_per_repeat": iters})
    return rows


def end_to_end(bundle: Any, backend_name: str, encoded: Sequence[bytes], batch_size: int = 256,
               workers: int | None = None, repeats: int = 3) -> dict[str, Any]:
    """JPEG bytes -> decode/resize (CPU threads) -> model -> vectors, images per second."""
    from fashsdk.encoding.backends import open_backend
    from fashsdk.encoding.encoder import Encoder

    backend = open_backend(bundle, backend_name)
    try:
        encoder = Encoder(backend, bundle.preprocess, batch_size=batch_size, workers=workers)
        for _ in encoder.encode_stream(enumerate(encoded[:batch_size])):  # warm-up
            pass
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            count = sum(len(keys) for keys, _, _ in encoder.encode_stream(enumerate(encoded)))
            rates.append(count / (time.perf_counter() - t))
    finally:
        backend.close()
    return {"backend": backend_name, "images": len(encoded), "batch": batch_size, "workers": encoder.workers,
            "images_per_s": round(statistics.median(rates), 1), "repeats": repeats,
            "decode": "Pillow on CPU threads (no GPU JPEG decoder: nvJPEG needs a GPU image stack that is "
                      "not a fashsdk dependency)"}


def gpu_rows(bundle: Any, pixels: np.ndarray, encoded: Sequence[bytes], batches: Sequence[int] = DEFAULT_BATCHES,
             repeats: int = 7) -> dict[str, Any]:
    """All GPU figures plus the same-run CPU fp32 baseline; empty 'backends' when no GPU."""
    from fashsdk.encoding.backends import open_backend

    figures: dict[str, Any] = {"backends": {}, "baseline": None, "skipped": None}
    names = gpu_backends(bundle)
    if not names:
        figures["skipped"] = why_no_gpu(bundle)
        return figures
    cpu = open_backend(bundle, "onnxruntime-cpu-fp32")
    try:
        base = model_only(cpu, pixels, (64,), repeats=max(3, repeats // 2))[0]
    finally:
        cpu.close()
    figures["baseline"] = {"backend": "onnxruntime-cpu-fp32", **base}
    for name in names:
        backend = open_backend(bundle, name)
        try:
            limit = getattr(backend, "max_batch", max(batches))
            rows = model_only(backend, pixels, [b for b in batches if b <= limit], repeats=repeats)
        finally:
            backend.close()
        for row in rows:
            row["speedup_vs_cpu_fp32_b64"] = round(row["images_per_s"] / base["images_per_s"], 2)
        figures["backends"][name] = {"model_only": rows,
                                     "end_to_end": end_to_end(bundle, name, encoded, batch_size=min(256, limit))}
    return figures


def environment(bundle: Any) -> dict[str, Any]:
    """Device, driver, library versions and host CPU, for the results file."""
    from importlib import metadata

    from fashsdk.encoding.backends.gpu_probe import nvidia_driver_version

    device: dict[str, Any] = {}
    try:
        from fashsdk.encoding.backends.cuda_memory import device_info

        info = device_info()
        device = {"name": info.name, "compute_capability": info.compute_capability,
                  "memory_bytes": info.total_memory_bytes, "cuda_driver_version": info.cuda_driver_version}
    except Exception as exc:  # no pycuda: fall back to the plan's recorded facts
        plan = bundle.engine("tensorrt", "fp16")
        device = {"name": plan.facts.get("gpu_name") if plan else None, "note": f"pycuda unavailable ({exc})"}
    libraries = {}
    for dist in ("tensorrt", "onnxruntime-gpu", "onnxruntime", "pycuda", "numpy", "pillow"):
        try:
            libraries[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    return {"device": device, "driver": nvidia_driver_version(), "libraries": libraries,
            "machine": {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}}


def results_path(device_name: str, directory: str | Path = RESULTS_DIR) -> Path:
    """benchmarks/results/gpu-<device>.json, the device name as a file-safe slug."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {device_name!r} gives an empty file name")
    return Path(directory) / f"gpu-{slug}.json"


def write_gpu_results(results: Mapping[str, Any], directory: str | Path = RESULTS_DIR) -> Path:
    """Write one GPU run (environment + figures) atomically; refuses incomplete results."""
    from fashsdk.files import atomic_write_json

    missing = [k for k in REQUIRED_KEYS if k not in results]
    name = (results.get("device") or {}).get("name")
    if missing or not name:
        raise ValueError(f"GPU results lack {missing or ['device.name']}; nothing written")
    if not results["figures"].get("backends"):
        raise ValueError("GPU results have no GPU figures (the run was skipped); nothing written")
    path = results_path(str(name), directory)
    atomic_write_json(path, dict(results))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from fashsdk.bundle import Bundle
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.images import load_images
    from fashsdk.sources.preprocess import decode_resized, normalize

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_encode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/myntra-small"))
    parser.add_argument("--images", type=int, default=4096, help="real catalog images to encode (4096)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    if not gpu_backends(bundle):
        print(f"no GPU rows: {why_no_gpu(bundle)}; nothing written")
        return 0
    catalog, _ = read_catalog(args.data / "styles.csv", bundle.schema.names, schema=bundle.schema)
    ids = catalog.ids[:args.images]
    encoded_map = load_images([str(args.data)], ids)
    encoded = [encoded_map[i] for i in ids]
    pixels = normalize(np.stack([decode_resized(b, bundle.preprocess) for b in encoded[:256]]), bundle.preprocess)
    results = {**environment(bundle), "bundle": {"path": str(args.bundle), "sha256": bundle.sha256(),
                                                 "model": bundle.manifest["model"].get("config")},
               "figures": gpu_rows(bundle, pixels, encoded, repeats=args.repeats), "created_unix": int(time.time())}
    path = write_gpu_results(results, args.out)
    print(json.dumps(results["figures"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

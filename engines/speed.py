"""Measured speed of ONNX models on this CPU, and the CPU facts that explain it.

Timings interleave the models round by round and take medians, so a noisy neighbour on a
shared machine hits every model alike; the ratio is the figure to trust, not the absolute.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

# CPU features that decide which low-precision kernels exist (x86 names from /proc/cpuinfo)
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """CPU model, usable cores, and which of the relevant vector extensions it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # pragma: no cover - non-Linux
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return {"cpu": model, "cores": cores, "machine": platform.machine(),
            "flags": {f: f in flags for f in RELEVANT_FLAGS},
            "int8_dot_product": any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")),
            "bf16_hardware": any(f in flags for f in ("avx512_bf16", "amx_bf16"))}


def cpu_session(model_path: str | Path, threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session configured like fashsdk's backend (all graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_info()["cores"]
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def interleaved_ms_per_image(runners: Mapping[str, Callable[[], Any]], images_per_call: int,
                             repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median (and min/max) milliseconds per image of each runner, timed round-robin."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(1000.0 * (time.perf_counter() - start) / images_per_call)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "repeats": len(t)}
            for name, t in times.items()}


def compare_models(models: Mapping[str, str | Path], batch: np.ndarray, input_name: str = "images",
                   threads: int | None = None, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Model-only ms per image of several ONNX models on the same batch, interleaved."""
    sessions = {name: cpu_session(path, threads) for name, path in models.items()}
    feed = {input_name: np.ascontiguousarray(batch, dtype=np.float32)}
    runners = {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}
    return interleaved_ms_per_image(runners, len(batch), repeats=repeats)

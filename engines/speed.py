"""Measured speed of ONNX models on this CPU, and the CPU facts that explain it.

Timings interleave the models round by round and take medians, so a noisy neighbour on a
shared machine hits every model alike; the ratio is the figure to trust, not the absolute.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fashsdk.system import cpu_session


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

"""The machine: usable cores (every default thread count), CPU facts for reports, and the
ONNX Runtime session options every CPU session shares."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# CPU features that decide which low-precision kernels exist (x86 names from /proc/cpuinfo)
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "amx_tile", "amx_int8", "amx_bf16")


def usable_cores() -> int:
    """Cores this process may run on (affinity/cgroup aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def machine() -> dict[str, Any]:
    """CPU model, usable cores, relevant vector extensions and Python: what a figure was measured on."""
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
    return {"cpu": model, "cores": usable_cores(), "machine": platform.machine(),
            "flags": {f: f in flags for f in RELEVANT_FLAGS},
            "int8_dot_product": any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")),
            "bf16_hardware": any(f in flags for f in ("avx512_bf16", "amx_bf16")),
            "python": platform.python_version(), "platform": platform.platform()}


def session_options(threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """ONNX Runtime options: explicit thread count, every graph optimisation, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def cpu_session(model: str | Path | bytes, threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session over a model path or serialized model bytes."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads, profile_prefix), providers=["CPUExecutionProvider"])

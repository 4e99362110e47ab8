"""Cheap checks, for backend selection, that never raise and never initialise CUDA.

Selection runs on every ``Retriever`` start, also on machines without a GPU, so these
look at files and installed packages only. A backend that passes them may still fail to
open (driver too old, out of memory): opening raises a clear error then.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver is loaded and exposes at least one GPU to this process."""
    try:
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1", "none", "NoDevFiles"):
            return False
        gpus = Path("/proc/driver/nvidia/gpus")
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
        return any(Path("/dev").glob("nvidia[0-9]*"))
    except OSError:
        return False


def module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tensorrt_usable() -> bool:
    """TensorRT's and pycuda's Python packages are installed and a GPU is present."""
    return module_installed("tensorrt") and module_installed("pycuda") and nvidia_gpu_present()


def onnxruntime_cuda_usable() -> bool:
    """This onnxruntime build has the CUDA execution provider and a GPU is present."""
    try:
        if not nvidia_gpu_present():
            return False
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:  # a broken GPU wheel must not break CPU selection
        return False


def nvidia_driver_version() -> str | None:
    """The kernel driver's version ("570.86.15"), read from /proc; None without a driver."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    for token in text.split():
        parts = token.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return token
    return None

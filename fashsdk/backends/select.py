"""Pick the fastest engine a bundle has that this machine can run, or the one asked for."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BundleError

if TYPE_CHECKING:
    from ..bundle import Bundle
    from .base import EmbeddingBackend

# Fastest first. Each name is "<backend>-<device>-<precision>".
PREFERENCE = ("onnxruntime-cpu-int8", "onnxruntime-cpu-fp32")


def available_backends(bundle: "Bundle") -> list[str]:
    """Backend names this bundle has engines for, fastest first."""
    names = []
    for name in PREFERENCE:
        backend, device, precision = name.split("-")
        if bundle.engine(backend, precision) is not None and device == "cpu":
            names.append(name)
    return names


def open_backend(bundle: "Bundle", backend: str = "auto", threads: int | None = None) -> "EmbeddingBackend":
    """Open ``backend`` ("auto" = fastest available) for the bundle."""
    names = available_backends(bundle)
    if backend == "auto":
        if not names:
            raise BundleError(f"bundle {str(bundle.directory)!r} has no engine this machine can run")
        backend = names[0]
    if backend not in names:
        raise BundleError(f"backend {backend!r} is not available for bundle {str(bundle.directory)!r}; "
                          f"available: {names}")
    from .onnxruntime_cpu import OnnxRuntimeCpuBackend

    precision = backend.rsplit("-", 1)[1]
    entry = bundle.engine("onnxruntime", precision)
    assert entry is not None
    return OnnxRuntimeCpuBackend(bundle.path_of(entry.file), precision=precision, threads=threads)

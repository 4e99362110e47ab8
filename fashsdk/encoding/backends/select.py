"""Pick the fastest engine a bundle has that this machine can run, or the one asked for.

Each backend is one module; this table is the only place that knows them all. A row is
(name, manifest backend, manifest precision, "module:Class", availability check).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from ...errors import BundleError
from .gpu_probe import onnxruntime_cuda_usable, tensorrt_usable

if TYPE_CHECKING:
    from ...bundle import Bundle, EngineEntry
    from .base import EmbeddingBackend


def _always() -> bool:
    return True


class BackendSpec(NamedTuple):
    name: str  # "<backend>-<device>-<precision>", what users pass as backend=...
    manifest_backend: str
    precision: str
    factory: str  # "module:Class", imported lazily
    available: Callable[[], bool]


# Fastest first. Helpers for GPU backends append their rows above the CPU ones.
REGISTRY: list[BackendSpec] = [
    BackendSpec("tensorrt-cuda-fp16", "tensorrt", "fp16", ".tensorrt_plan:TensorRTPlanBackend", tensorrt_usable),
    BackendSpec("onnxruntime-cuda-fp16", "onnxruntime", "fp16", ".onnxruntime_cuda:OnnxRuntimeCudaBackend",
                onnxruntime_cuda_usable),
    BackendSpec("onnxruntime-cpu-int8", "onnxruntime", "int8", ".onnxruntime_cpu:OnnxRuntimeCpuBackend", _always),
    BackendSpec("onnxruntime-cpu-fp32", "onnxruntime", "fp32", ".onnxruntime_cpu:OnnxRuntimeCpuBackend", _always),
]


def available_backends(bundle: "Bundle") -> list[str]:
    """Backend names this bundle has engines for and this machine can run, fastest first."""
    return [s.name for s in REGISTRY
            if bundle.engine(s.manifest_backend, s.precision) is not None and s.available()]


def resolve(bundle: "Bundle", backend: str = "auto") -> tuple[BackendSpec, "EngineEntry"]:
    """The backend ``backend`` names ("auto": the fastest available) and the bundle's engine for it."""
    names = available_backends(bundle)
    if backend == "auto":
        if not names:
            raise BundleError(f"bundle {str(bundle.directory)!r} has no engine this machine can run")
        backend = names[0]
    if backend not in names:
        known = [s.name for s in REGISTRY]
        raise BundleError(f"backend {backend!r} is not available for bundle {str(bundle.directory)!r}; "
                          f"available here: {names}; all known backends: {known}")
    spec = next(s for s in REGISTRY if s.name == backend)
    entry = bundle.engine(spec.manifest_backend, spec.precision)
    assert entry is not None
    return spec, entry


def open_backend(bundle: "Bundle", backend: str = "auto", threads: int | None = None,
                 **options: Any) -> "EmbeddingBackend":
    """Open ``backend`` ("auto" = fastest available) for the bundle.

    ``options`` go to backends that open from the whole bundle (a ``from_bundle``
    classmethod, e.g. TensorRT's ``allow_rebuild=True``); the others ignore them.
    """
    spec, entry = resolve(bundle, backend)
    module_name, class_name = spec.factory.split(":")
    cls = getattr(importlib.import_module(module_name, __package__), class_name)
    if hasattr(cls, "from_bundle"):
        return cls.from_bundle(bundle, entry, precision=spec.precision, threads=threads, **options)
    return cls(bundle.path_of(entry.file), precision=spec.precision, threads=threads)

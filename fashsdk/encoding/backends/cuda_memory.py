"""The only module that talks to CUDA: device facts, pinned/device buffers and a stream (pycuda).

TensorRT uses the CUDA runtime, which works in the device's *primary* context, so this
module retains that same context (instead of pycuda.autoinit's private one) and pushes
it around every use; any thread may then call in. Buffers are allocated once, at the
optimisation profile's maximum shapes, and reused for every batch.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from ...errors import BundleError


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "9.0"
    total_memory_bytes: int
    cuda_driver_version: str  # highest CUDA version the driver supports ("12.8")


def _driver() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BundleError(f"pycuda is not installed ({exc}); install the GPU extras: "
                          "pip install 'fashsdk[gpu]'") from None
    return cuda


class CudaDevice:
    """One GPU's primary context; ``with device.active():`` makes it current on this thread."""

    _init_lock = threading.Lock()

    def __init__(self, ordinal: int = 0) -> None:
        cuda = _driver()
        with self._init_lock:
            try:
                cuda.init()
                count = cuda.Device.count()
            except cuda.Error as exc:
                raise BundleError(f"CUDA could not be initialised ({exc}); check the NVIDIA driver") from None
        if not 0 <= ordinal < count:
            raise BundleError(f"CUDA device {ordinal} does not exist; this machine has {count} GPU(s)")
        self._cuda = cuda
        self.ordinal = ordinal
        self._device = cuda.Device(ordinal)
        self._context = self._device.retain_primary_context()

    @contextmanager
    def active(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def info(self) -> DeviceInfo:
        major, minor = self._device.compute_capability()
        version = int(self._cuda.get_driver_version())
        return DeviceInfo(name=str(self._device.name()), compute_capability=f"{major}.{minor}",
                          total_memory_bytes=int(self._device.total_memory()),
                          cuda_driver_version=f"{version // 1000}.{(version % 1000) // 10}")

    def close(self) -> None:
        if self._context is not None:
            self._context.detach()  # drops this retain of the primary context
            self._context = None


class PinnedBuffers:
    """Page-locked host arrays and device allocations for named tensors, plus one stream.

    ``shapes`` maps tensor name -> (max shape, numpy dtype). The leading axis is the batch:
    ``upload``/``download`` move only the first ``rows`` rows.
    """

    def __init__(self, device: CudaDevice, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        cuda = device._cuda
        self._cuda = cuda
        self._device = device
        self.host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        with device.active():
            try:
                self.stream = cuda.Stream()
                for name, (shape, dtype) in shapes.items():
                    self.host[name] = cuda.pagelocked_empty(tuple(int(s) for s in shape), np.dtype(dtype))
                    self._dev[name] = cuda.mem_alloc(max(1, self.host[name].nbytes))
            except cuda.Error as exc:
                raise BundleError(f"could not allocate GPU buffers for {dict(shapes)} ({exc}); lower the "
                                  "optimisation profile's maximum batch or free GPU memory") from None

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def device_pointer(self, name: str) -> int:
        return int(self._dev[name])

    def upload(self, name: str, rows: int) -> None:
        """Queue a host-to-device copy of the first ``rows`` rows (call inside ``active()``)."""
        self._cuda.memcpy_htod_async(self._dev[name], self.host[name][:rows], self.stream)

    def download(self, name: str, rows: int) -> None:
        """Queue a device-to-host copy of the first ``rows`` rows (call inside ``active()``)."""
        self._cuda.memcpy_dtoh_async(self.host[name][:rows], self._dev[name], self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self) -> None:
        with self._device.active():
            for allocation in self._dev.values():
                allocation.free()
            self._dev.clear()
            self.host.clear()  # pinned pages are released with their arrays
            self.stream = None


def device_info(ordinal: int = 0) -> DeviceInfo:
    """Name, compute capability, memory and driver of one GPU (initialises CUDA)."""
    device = CudaDevice(ordinal)
    try:
        return device.info()
    finally:
        device.close()

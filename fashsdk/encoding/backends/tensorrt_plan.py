"""TensorRT plan backend: named IO tensors, pinned buffers, one execution context per thread.

The plan's manifest facts are checked against this machine (plan_manifest.py) before its
bytes reach ``deserialize_cuda_engine``. Each thread that calls ``run`` gets its own
execution context, pinned host and device buffers sized for the profile's maximum batch,
and its own stream (cuda_memory.py), so threads never share mutable TensorRT state.
Batches above the profile maximum are split; below the minimum they are zero-padded.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ...errors import BundleError
from .base import ModelOutputs
from .cuda_memory import CudaDevice, PinnedBuffers
from .plan_manifest import RuntimeFacts, resolve_plan
from .tensorrt_build import PlanBuilder

if TYPE_CHECKING:
    from ...bundle import Bundle, EngineEntry

OUTPUTS = ("embedding", "logits")


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BundleError(f"TensorRT is not installed ({exc}); install it from NVIDIA's index or choose "
                          "backend='onnxruntime-cuda-fp16'") from None
    return trt


def runtime_facts(device: CudaDevice) -> RuntimeFacts:
    info = device.info()
    return RuntimeFacts(str(_tensorrt().__version__), info.name, info.compute_capability)


@dataclass
class _Slot:
    context: Any
    buffers: PinnedBuffers


class TensorRTPlanBackend:
    """Runs a serialised TensorRT plan; open it with ``from_bundle`` (checks compatibility)."""

    def __init__(self, plan: bytes, facts: Mapping[str, Any] | None = None, *,
                 device: CudaDevice | int = 0, precision: str = "fp16") -> None:
        trt = _tensorrt()
        self._trt = trt
        self._device = device if isinstance(device, CudaDevice) else CudaDevice(device)
        try:
            self._open(trt, plan, facts, precision)
        except BaseException:
            self._device.close()
            raise

    def _open(self, trt: Any, plan: bytes, facts: Mapping[str, Any] | None, precision: str) -> None:
        self.facts = dict(facts or {})
        self.name = f"tensorrt-cuda-{precision}"
        self.precision = precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self._device.active():
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BundleError("TensorRT could not deserialise the plan (see its log above): it is corrupt or was "
                              "built elsewhere; rebuild it with 'python -m engines tensorrt --bundle DIR'")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or set(OUTPUTS) - set(outputs):
            raise BundleError(f"plan has inputs {inputs} and outputs {outputs}; expected one image input and "
                              f"outputs {list(OUTPUTS)}")
        for n in names:
            if self._engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise BundleError(f"plan tensor {n!r} is {self._engine.get_tensor_dtype(n)}, not float32: build the "
                                  "plan from an fp16 model that keeps its IO in fp32 (engines/fp16.py)")
        self.input_name = inputs[0]
        self.output_names = list(OUTPUTS)
        low, _, high = self._engine.get_tensor_profile_shape(self.input_name, 0)
        self.item_shape = tuple(int(s) for s in tuple(high)[1:])
        self.min_batch, self.max_batch = int(tuple(low)[0]), int(tuple(high)[0])
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: "Bundle", entry: "EngineEntry", *, precision: str = "fp16",
                    threads: int | None = None, allow_rebuild: bool = False,
                    plan_cache: str | Path | None = None, device: int = 0,
                    builder: PlanBuilder | None = None, **_: Any) -> "TensorRTPlanBackend":
        """Check the plan against this GPU and TensorRT; refuse or rebuild (``allow_rebuild``)."""
        del threads  # the GPU does the work; kept for the common factory signature
        cuda_device = CudaDevice(device)
        try:
            resolved = resolve_plan(bundle, entry, runtime_facts(cuda_device), allow_rebuild=allow_rebuild,
                                    cache_dir=plan_cache, builder=builder)
        except BaseException:
            cuda_device.close()
            raise
        for message in resolved.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return cls(resolved.plan, resolved.facts, device=cuda_device, precision=precision)

    def _slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            return slot
        with self._device.active():
            context = self._engine.create_execution_context()
            if context is None:
                raise BundleError("TensorRT could not create an execution context (out of GPU memory?)")
            context.set_input_shape(self.input_name, (self.max_batch, *self.item_shape))
            shapes = {self.input_name: ((self.max_batch, *self.item_shape), np.float32)}
            for name in self.output_names:
                shapes[name] = (tuple(int(s) for s in tuple(context.get_tensor_shape(name))), np.float32)
        buffers = PinnedBuffers(self._device, shapes)
        for name in shapes:
            context.set_tensor_address(name, buffers.device_pointer(name))
        slot = _Slot(context, buffers)
        self._local.slot = slot
        with self._lock:
            self._slots.append(slot)
        return slot

    def run(self, batch: np.ndarray) -> ModelOutputs:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.item_shape:
            raise ValueError(f"batch has shape {x.shape}; this plan takes (N, {', '.join(map(str, self.item_shape))})")
        parts = [self._run_chunk(x[s:s + self.max_batch]) for s in range(0, len(x), self.max_batch)]
        if not parts:
            raise ValueError("empty batch: pass at least one image")
        return ModelOutputs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _run_chunk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot = self._slot()
        n = len(x)
        rows = max(n, self.min_batch)
        host = slot.buffers.host[self.input_name]
        host[:n] = x
        if rows > n:
            host[n:rows] = 0.0
        with self._device.active():
            if not slot.context.set_input_shape(self.input_name, (rows, *self.item_shape)):
                raise BundleError(f"plan rejected batch {rows}; its profile allows {self.min_batch}..{self.max_batch}")
            slot.buffers.upload(self.input_name, rows)
            if not slot.context.execute_async_v3(slot.buffers.stream_handle):
                raise BundleError("TensorRT execution failed (see its log above)")
            for name in self.output_names:
                slot.buffers.download(name, rows)
            slot.buffers.synchronize()
        return tuple(slot.buffers.host[name][:n].copy() for name in self.output_names)  # type: ignore[return-value]

    def close(self) -> None:
        """Destroy contexts, engine and runtime (in that order), then free buffers and the device."""
        with self._lock:
            slots, self._slots = self._slots, []
        self._local = threading.local()
        with self._device.active():
            for slot in slots:
                slot.context = None
            self._engine = None
            self._runtime = None
        for slot in slots:
            slot.buffers.free()
        self._device.close()

"""ONNX Runtime with the CUDA execution provider, running the bundle's fp16 model (fp32 IO).

The GPU route when TensorRT is not installed. ORT silently falls back to the CPU when the
CUDA provider cannot start (missing CUDA/cuDNN libraries, driver too old), so the session's
providers are checked and that case is an error, not a slow surprise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError
from ...system import session_options
from .base import ModelOutputs

PROVIDER = "CUDAExecutionProvider"


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """Provider options: exhaustive cuDNN search (models are long-lived), no TF32 in fp32 ops."""
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "use_tf32": "0",
    }


class OnnxRuntimeCudaBackend:
    """One InferenceSession on one GPU; ORT sessions are safe to call from several threads."""

    def __init__(self, model_path: str | Path, precision: str = "fp16", threads: int | None = None,
                 device_id: int = 0) -> None:
        import onnxruntime as ort

        if PROVIDER not in ort.get_available_providers():
            raise BundleError(f"this onnxruntime ({ort.__version__}) has no CUDA provider; install the GPU build "
                              "(pip install 'fashsdk[gpu]', which brings onnxruntime-gpu) or choose a CPU backend")
        options = session_options(threads)  # threads: for nodes ORT keeps on the CPU
        self._session = ort.InferenceSession(str(model_path), options,
                                             providers=[(PROVIDER, cuda_provider_options(device_id)),
                                                        "CPUExecutionProvider"])
        if self._session.get_providers()[:1] != [PROVIDER]:
            raise BundleError(f"ONNX Runtime could not start the CUDA provider for {str(model_path)!r} (providers: "
                              f"{self._session.get_providers()}); check the NVIDIA driver and CUDA/cuDNN libraries")
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise BundleError(f"model {str(model_path)!r} takes {[(i.name, i.type) for i in inputs]}; expected one "
                              "float32 image input (convert with engines/fp16.py, which keeps IO in fp32)")
        self._input = inputs[0].name
        self.name = f"onnxruntime-cuda-{precision}"
        self.precision = precision

    def run(self, batch: np.ndarray) -> ModelOutputs:
        embedding, logits = self._session.run(["embedding", "logits"],
                                              {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return ModelOutputs(embedding, logits)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

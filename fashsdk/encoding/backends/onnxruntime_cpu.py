"""ONNX Runtime on CPU, fp32 or int8 (QDQ) models."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...system import cpu_session
from .base import ModelOutputs


class OnnxRuntimeCpuBackend:
    """One InferenceSession; ORT sessions are safe to call from several threads."""

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        self._session = cpu_session(model_path, threads)
        self._input = self._session.get_inputs()[0].name
        self.name = f"onnxruntime-cpu-{precision}"
        self.precision = precision

    def run(self, batch: np.ndarray) -> ModelOutputs:
        embedding, logits = self._session.run(["embedding", "logits"], {self._input: batch})
        return ModelOutputs(embedding, logits)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

"""ONNX Runtime on CPU, fp32 or int8 (QDQ) models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import ModelOutputs


def default_threads() -> int:
    """Cores this process may use (cgroup/affinity aware), which is what ORT should get."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeCpuBackend:
    """One InferenceSession; ORT sessions are safe to call from several threads."""

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.name = f"onnxruntime-cpu-{precision}"
        self.precision = precision

    def run(self, batch: np.ndarray) -> ModelOutputs:
        embedding, logits = self._session.run(["embedding", "logits"], {self._input: batch})
        return ModelOutputs(embedding, logits)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

"""The contract every backend meets: preprocessed float32 batch in, embedding + logits out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class ModelOutputs:
    embedding: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray  # (N, J) float32, per-attribute blocks follow the schema


class EmbeddingBackend(Protocol):
    name: str  # e.g. "onnxruntime-cpu-fp32"

    def run(self, batch: np.ndarray) -> ModelOutputs:
        """Run the model on a float32 (N, 3, H, W) batch."""
        ...

    def close(self) -> None:
        """Release native resources."""
        ...

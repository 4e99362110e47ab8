"""Inference backends: one file per backend behind the small ``EmbeddingBackend`` protocol."""
from .base import EmbeddingBackend, ModelOutputs
from .select import available_backends, open_backend

__all__ = ["EmbeddingBackend", "ModelOutputs", "available_backends", "open_backend"]

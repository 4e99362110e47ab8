"""Encoding: pixels in, L2-normalised embedding and logits out, through one backend per engine."""
from .backends import EmbeddingBackend, ModelOutputs, available_backends, open_backend
from .encoder import Encoder
from .engine import open_checked_backend

__all__ = ["EmbeddingBackend", "Encoder", "ModelOutputs", "available_backends", "open_backend",
           "open_checked_backend"]

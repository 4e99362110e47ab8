"""The contract every model family meets: how a query vector changes for {attribute: value}.

A family is the query-side arithmetic of one system of the papers. The encoder (one ONNX
graph per bundle) gives every family the same thing, an L2-normalised embedding whose
attribute chunks sit side by side, plus logits; what differs is how a change such as
{"baseColour": "Red"} turns the query's embedding into the vector that is searched:

- ``adde``: add the memory block's residual M (onehot(new) - onehot(old)) (ADDE-M);
- ``chunk_replace``: replace the changed attributes' chunks by a stored representation of
  the wanted value (DAtRNet);
- ``fsn``: chunk_replace, then the chunks weighted for the changed attribute (FashionSearchNet);
- ``generator``: a second ONNX graph maps (feature, wanted-value code) to a new feature (FLAM).

Each family has a one-query form (the SDK's hot path, a handful of numpy calls) and a
batched form (evaluation, training-time validation, accuracy gates, ``search_batch``); they
compute the same thing, which the tests check. A family's extra files are bundle files like
the model: listed in the manifest's ``family`` section and pinned by its checksums.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..bundle import Bundle

NO_CHANGE = -1  # padding in the batched form's (N, C) attribute column: this slot changes nothing


class Family(Protocol):
    name: str

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        """One query: (D,) embedding, its current value code per attribute (UNKNOWN allowed),
        {attribute index: wanted value index} -> the (D,) float32 vector to search with."""
        ...

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        """N queries: (N, D) embeddings, (N, A) current codes, (N, C) changed attribute indices
        (NO_CHANGE pads) and (N, C) wanted value indices -> (N, D) float32 vectors."""
        ...


class FamilyLoader(Protocol):
    def from_bundle(self, bundle: "Bundle") -> Family:
        ...


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length. Operators only, so it serves numpy arrays and torch tensors alike."""
    return x / ((x * x).sum(-1)[..., None].clip(1e-24) ** 0.5)


def scale_to_length(vector: np.ndarray, length: float = 1.0) -> np.ndarray:
    """One float32 (D,) vector scaled in place to ``length`` (a zero vector stays zero); returns it.
    The one-query forms' step: plain float maths, as numpy call overhead dominates at this size."""
    vector *= np.float32(length / max(math.sqrt(float(np.dot(vector, vector))), 1e-12))
    return vector


def check_change_batch(vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray, values: np.ndarray,
                       sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batched form's inputs as arrays of the agreed shapes, values inside the schema."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    current, attrs, values = (np.atleast_2d(np.asarray(x, np.int64)) for x in (current, attrs, values))
    n = len(vectors)
    if current.shape != (n, len(sizes)) or attrs.shape != values.shape or len(attrs) != n:
        raise ValueError(f"change_batch: vectors {vectors.shape}, current {current.shape}, attrs {attrs.shape}, "
                         f"values {values.shape} do not describe {n} queries over {len(sizes)} attributes")
    used = attrs != NO_CHANGE
    if used.any():
        limit = np.asarray(sizes)[attrs[used]]
        if (attrs[used] < 0).any() or (attrs[used] >= len(sizes)).any() or (values[used] < 0).any() \
                or (values[used] >= limit).any():
            raise ValueError("change_batch: an attribute or value index lies outside the schema")
    return vectors, current, attrs, values

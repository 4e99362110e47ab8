"""ADDE manipulation arithmetic: q' = normalise(q + M (onehot(new) - onehot(old))).

M is the memory block (D x J), column j the prototype of global value j, living in its
attribute's slice of the embedding. M is linear, so several changes simply add.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .errors import QueryError
from .schema import UNKNOWN, AttributeSchema


def parse_change(schema: AttributeSchema, change: Mapping[str, str] | None) -> dict[int, int]:
    """{"baseColour": "Red"} -> {attribute index: value index}, with helpful errors."""
    if change is None:
        return {}
    if not isinstance(change, Mapping):
        raise QueryError(f"change must be a mapping such as {{'baseColour': 'Red'}}, got {type(change).__name__}")
    parsed: dict[int, int] = {}
    for name, value in change.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise QueryError(f"change entries must be attribute name -> value name strings, got {name!r}: {value!r}")
        a = schema.attribute_index(name)
        parsed[a] = schema.value_index(a, value)
    return parsed


def indicator(schema: AttributeSchema, current: np.ndarray, change: Mapping[int, int]) -> np.ndarray:
    """The (J,) vector with +1 at each wanted value and -1 at the current one (0 if unknown)."""
    vec = np.zeros(schema.total_values, dtype=np.float32)
    offsets = schema.offsets
    for a, v in change.items():
        vec[offsets[a] + v] += 1.0
        old = int(current[a])
        if old != UNKNOWN:
            vec[offsets[a] + old] -= 1.0
    return vec


def manipulate(embedding: np.ndarray, prototypes: np.ndarray, ind: np.ndarray) -> np.ndarray:
    """Apply the residual and re-normalise; embedding (D,) or (N, D), ind (J,) or (N, J)."""
    if np.ndim(ind) == 1:  # one query: only the changed values' columns (a 4080 x 151 block is 2.4 MB)
        changed = np.flatnonzero(ind)
        out = embedding + prototypes[:, changed] @ np.asarray(ind)[changed]
    else:
        out = embedding + ind @ prototypes.T
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


def manipulate_one(embedding: np.ndarray, prototype_rows: np.ndarray, offsets: Sequence[int],
                   current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
    """``manipulate(embedding, prototypes, indicator(...))`` for one query, as a fresh (D,)
    float32 vector: the wanted values' prototypes added and the current ones subtracted,
    without the (J,) indicator. Why: after a graph walk each small numpy call costs
    microseconds, and the SDK's per-query work is a handful of them this way.

    ``prototype_rows`` is the memory block transposed, (J, D) C-contiguous, so each prototype
    is one contiguous row; ``current`` holds the query's value per attribute (UNKNOWN allowed).
    """
    out = np.array(embedding, dtype=np.float32)
    for a, v in change.items():
        out += prototype_rows[offsets[a] + v]
        old = int(current[a])
        if old != UNKNOWN:
            out -= prototype_rows[offsets[a] + old]
    out *= np.float32(1.0 / max(math.sqrt(float(np.dot(out, out))), 1e-12))
    return out


def mean_swap(embedding: np.ndarray, value_means: np.ndarray, layout: list[tuple[int, int]],
              change: Mapping[int, int], offsets: list[int]) -> np.ndarray:
    """FashionSearchNet/DAtRNet-style baseline: replace each changed chunk by the value's mean chunk."""
    out = np.array(embedding, dtype=np.float32, copy=True)
    for a, v in change.items():
        start, stop = layout[a]
        out[..., start:stop] = value_means[start:stop, offsets[a] + v]
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


def predicted_codes(schema: AttributeSchema, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax value and its softmax probability per attribute: (N, A) codes and probs."""
    logits = np.atleast_2d(logits)
    codes = np.zeros((logits.shape[0], len(schema.attributes)), dtype=np.int16)
    probs = np.zeros(codes.shape, dtype=np.float32)
    for a, (offset, size) in enumerate(zip(schema.offsets, schema.sizes)):
        block = logits[:, offset:offset + size].astype(np.float64)
        block = np.exp(block - block.max(axis=1, keepdims=True))
        block /= block.sum(axis=1, keepdims=True)
        codes[:, a] = block.argmax(axis=1)
        probs[:, a] = block.max(axis=1)
    return codes, probs

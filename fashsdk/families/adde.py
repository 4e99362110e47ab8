"""ADDE-M: q' = normalise(q + M (onehot(new) - onehot(old))).

M is the memory block (D x J), column j the prototype of global value j, living in its
attribute's slice of the embedding; it travels in the bundle as ``prototypes.npy``. M is
linear, so several changes simply add; an unknown current value subtracts nothing.
``apply`` is written with operators only, so training (torch tensors, with gradients into
M) and the runtime (numpy) share this one implementation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import UNKNOWN, AttributeSchema
from .base import NO_CHANGE, check_change_batch, normalized, scale_to_length

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "adde"
PROTOTYPES = "prototypes"  # the family file's role in the manifest


def apply(vectors: Any, indicator: Any, prototypes: Any) -> Any:
    """normalise(vectors + indicator @ M^T) for (N, D) vectors and (N, J) indicators."""
    return normalized(vectors + indicator @ prototypes.T)


def indicator(schema: AttributeSchema, current: np.ndarray, attrs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N, J) float32: +1 at each wanted value, -1 at the query's current value (0 if unknown)."""
    offsets = np.asarray(schema.offsets)
    out = np.zeros((len(attrs), schema.total_values), np.float32)
    for c in range(attrs.shape[1]):
        rows = np.flatnonzero(attrs[:, c] != NO_CHANGE)
        a = attrs[rows, c]
        np.add.at(out, (rows, offsets[a] + values[rows, c]), 1.0)
        old = current[rows, a]
        known = old != UNKNOWN
        np.subtract.at(out, (rows[known], offsets[a[known]] + old[known]), 1.0)
    return out


class Adde:
    """The ADDE family over one memory block."""

    name = NAME

    def __init__(self, schema: AttributeSchema, prototypes: np.ndarray) -> None:
        self.schema = schema
        self.prototypes = np.asarray(prototypes, np.float32)  # (D, J)
        self._rows = np.ascontiguousarray(self.prototypes.T)  # (J, D): each prototype one contiguous row
        self._offsets = schema.offsets

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "Adde":
        prototypes = bundle.family_array(PROTOTYPES)
        if prototypes.shape != (bundle.dim, bundle.schema.total_values) or prototypes.dtype != np.float32:
            raise BundleError(f"bundle {str(bundle.directory)!r}: ADDE prototypes have shape {prototypes.shape} "
                              f"{prototypes.dtype}, expected ({bundle.dim}, {bundle.schema.total_values}) float32")
        return cls(bundle.schema, prototypes)

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        # the changed values' rows only, no (J,) indicator: after a graph walk each small numpy call costs microseconds
        out = np.array(vector, dtype=np.float32)
        for a, v in change.items():
            out += self._rows[self._offsets[a] + v]
            old = int(current[a])
            if old != UNKNOWN:
                out -= self._rows[self._offsets[a] + old]
        return scale_to_length(out)

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        vectors, current, attrs, values = check_change_batch(vectors, current, attrs, values, self.schema.sizes)
        return np.asarray(apply(vectors, indicator(self.schema, current, attrs, values), self.prototypes), np.float32)

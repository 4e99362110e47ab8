"""fsn: FashionSearchNet's manipulation. The changed attributes' chunks are replaced by the wanted
values' stored representations (as chunk_replace), then chunk b is weighted for the changed
attribute a* (the global representation of Eq. 6, with the identity as its projection).

Why one index serves every a*: the paper ranks by |F(q, a*) - F(g, a*)|^2 with F = [lambda_b,a* x_b].
With every gallery chunk of equal norm (the bundles' per-chunk normalisation), that distance is
const - 2 sum_b lambda_b,a*^2 <q_b, g_b>, so searching the plain index with the query's chunks
scaled by lambda_b,a*^2 gives exactly the same order. The bundle's ``attribute_weights.npy``
(A, A) holds those squared weights: column a* scales the chunks when a* changes. Several changed
attributes use the mean of their columns; a query without a change is not weighted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import AttributeSchema
from .base import NO_CHANGE, normalized, scale_to_length
from .chunk_replace import ChunkReplace, checked_value_table

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "fsn"
ATTRIBUTE_WEIGHTS = "attribute_weights"  # the family file's role in the manifest


class FashionSearchNetFamily(ChunkReplace):
    """chunk_replace with per-changed-attribute chunk weights (A, A), column a* for a change of a*."""

    name = NAME

    def __init__(self, schema: AttributeSchema, layout: Sequence[tuple[int, int]], table: np.ndarray,
                 weights: np.ndarray) -> None:
        super().__init__(schema, layout, table)
        weights = np.asarray(weights, np.float32)
        count = len(schema.sizes)
        if weights.shape != (count, count) or not np.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError(f"fsn attribute weights must be a positive finite ({count}, {count}) array; "
                             f"got shape {weights.shape}")
        self.weights = weights
        # (A, D): row a* is the per-dimension scale of a change of a*
        self._scales = np.zeros((count, table.shape[1]), np.float32)
        for b, (start, stop) in enumerate(self.layout):
            self._scales[:, start:stop] = weights[b][:, None]

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "FashionSearchNetFamily":
        table = checked_value_table(bundle)
        try:
            return cls(bundle.schema, list(bundle.layout.values()), table, bundle.family_array(ATTRIBUTE_WEIGHTS))
        except ValueError as exc:
            raise BundleError(f"bundle {str(bundle.directory)!r}: {exc}; export the bundle again") from None

    def scale(self, change: Mapping[int, int]) -> np.ndarray:
        """(D,) per-dimension weights of a (non-empty) change: the mean of its attributes' rows."""
        return self._scales[next(iter(change))] if len(change) == 1 else self._scales[list(change)].mean(0)

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        if not change:
            return super().change_one(vector, current, change)
        out = self.replaced(vector, change)
        out *= self.scale(change)  # normalising after the replacement too would only change the length
        return scale_to_length(out)

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        out = super().change_batch(vectors, current, attrs, values)
        attrs = np.atleast_2d(np.asarray(attrs, np.int64))
        used = attrs != NO_CHANGE
        changed = used.any(1)
        if not changed.any():
            return out
        picked = self._scales[np.where(used, attrs, 0)] * used[..., None]  # (N, C, D)
        scale = picked.sum(1)[changed] / used.sum(1)[changed][:, None]
        out[changed] = normalized(out[changed] * scale)
        return out.astype(np.float32)

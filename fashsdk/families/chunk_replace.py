"""chunk_replace: each changed attribute's chunk is replaced by the wanted value's stored
representation, then the vector is re-normalised (DAtRNet Sec. 3.3; FashionSearchNet's
attribute memory).

The value table (J, D) travels in the bundle as ``value_table.npy``: row j holds global
value j's representation in its attribute's slice of the embedding, zeros elsewhere. The
current value does not matter: the chunk is overwritten, so several changes compose in any
order. ``value_means`` builds the table the way DAtRNet does, as the mean chunk of each
value over reference (training) images.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import AttributeSchema
from .base import NO_CHANGE, check_change_batch, scale_to_length

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "chunk_replace"
VALUE_TABLE = "value_table"  # the family file's role in the manifest


def reference_rows(codes: np.ndarray, sizes: Sequence[int], per_value: int, seed: int = 0) -> np.ndarray:
    """A fixed sample of reference rows covering every value with up to ``per_value`` items."""
    rng = np.random.default_rng(seed)
    rows: set[int] = set()
    for a, n in enumerate(sizes):
        for v in range(n):
            r = np.flatnonzero(codes[:, a] == v)
            rows.update((rng.choice(r, per_value, replace=False) if len(r) > per_value else r).tolist())
    return np.array(sorted(rows), dtype=np.int64)


def value_means(vectors: np.ndarray, codes: np.ndarray, schema: AttributeSchema,
                layout: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(J, D) mean chunk of each value in its attribute's slice, and (J,) item counts per value.

    A value without reference items keeps a zero chunk (its count says so)."""
    table = np.zeros((schema.total_values, vectors.shape[1]), np.float32)
    counts = np.zeros(schema.total_values, np.int64)
    for a, (offset, size) in enumerate(zip(schema.offsets, schema.sizes)):
        start, stop = layout[a]
        for v in range(size):
            rows = codes[:, a] == v
            counts[offset + v] = int(rows.sum())
            if counts[offset + v]:
                table[offset + v, start:stop] = vectors[rows, start:stop].mean(0)
    return table, counts


def checked_value_table(bundle: "Bundle") -> np.ndarray:
    """The bundle's (J, D) float32 value table, or BundleError naming the shape it has."""
    table = bundle.family_array(VALUE_TABLE)
    if table.shape != (bundle.schema.total_values, bundle.dim) or table.dtype != np.float32:
        raise BundleError(f"bundle {str(bundle.directory)!r}: {bundle.family_name} value table has shape "
                          f"{table.shape} {table.dtype}, expected ({bundle.schema.total_values}, {bundle.dim}) float32")
    return table


class ChunkReplace:
    """The chunk_replace family over one value table."""

    name = NAME

    def __init__(self, schema: AttributeSchema, layout: Sequence[tuple[int, int]], table: np.ndarray) -> None:
        self.schema = schema
        self.layout = [(int(s), int(e)) for s, e in layout]
        self.table = np.ascontiguousarray(table, np.float32)  # (J, D)
        self._offsets = schema.offsets

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "ChunkReplace":
        return cls(bundle.schema, list(bundle.layout.values()), checked_value_table(bundle))

    def replaced(self, vector: np.ndarray, change: Mapping[int, int]) -> np.ndarray:
        """A float32 copy of ``vector`` with the changed chunks replaced, not yet normalised."""
        out = np.array(vector, dtype=np.float32)
        for a, v in change.items():
            start, stop = self.layout[a]
            out[start:stop] = self.table[self._offsets[a] + v, start:stop]
        return out

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        out = self.replaced(vector, change)
        return scale_to_length(out)

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        vectors, current, attrs, values = check_change_batch(vectors, current, attrs, values, self.schema.sizes)
        out = vectors.copy()
        offsets = np.asarray(self._offsets)
        for c in range(attrs.shape[1]):
            for a in np.unique(attrs[:, c]):
                if a == NO_CHANGE:
                    continue
                rows = np.flatnonzero(attrs[:, c] == a)
                start, stop = self.layout[a]
                out[rows, start:stop] = self.table[offsets[a] + values[rows, c], start:stop]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

"""The index's write paths, called under its write lock: items into the table, the vector
store and every graph that exists (full, subspaces, per-value partitions), or out of them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import QueryError
from .graph import locality_order
from .inputs import checked_codes, float_matrix

if TYPE_CHECKING:
    from .catalog_index import CatalogIndex


def check_items(index: "CatalogIndex", keys: list[str], vectors: np.ndarray, codes: np.ndarray | None,
                 predicted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = float_matrix(vectors, "vectors")
    if vectors.shape != (len(keys), index.dim):
        raise QueryError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {index.dim})")
    if not np.isfinite(vectors.sum(dtype=np.float64)):  # no n x D temporary, unlike isfinite().all()
        raise QueryError("vectors contain NaN or infinity")
    codes_arr = checked_codes(codes, len(keys), index.num_attributes, "codes")
    predicted_arr = codes_arr if predicted is None else checked_codes(predicted, len(keys), index.num_attributes,
                                                                       "predicted")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise QueryError(f"id {dup!r} appears more than once in this call")
    return vectors, codes_arr, predicted_arr


def checked_confidence(confidence: np.ndarray | None, n: int, num_attributes: int) -> np.ndarray | None:
    """Probabilities of the predicted values: (n, A) in [0, 1] (NaN = not known), or None."""
    if confidence is None:
        return None
    arr = float_matrix(confidence, "confidence")
    if arr.shape != (n, num_attributes):
        raise QueryError(f"confidence has shape {arr.shape}, expected ({n}, {num_attributes})")
    known = arr[~np.isnan(arr)]
    if known.size and (known.min() < 0 or known.max() > 1):
        raise QueryError("confidence must hold probabilities in [0, 1] (NaN where unknown)")
    return arr.astype(np.float16)


def add_locked(index: "CatalogIndex", keys: list[str], vectors: np.ndarray, codes: np.ndarray,
               predicted: np.ndarray, confidence: np.ndarray | None = None) -> None:
    slots = index.table.slots_for(len(keys))
    needed = int(slots.max()) + 1 if len(slots) else 0
    index.table.reserve(needed)
    index.store.reserve(needed)
    index.store.put(slots, vectors)
    index.table.put(keys, slots, codes, predicted, confidence)
    current = index.table.current_codes(slots)
    if index.graph is not None:
        order = locality_order(current)
        index.graph.add(np.asarray(vectors)[order], slots[order], index.threads)
    index.subspaces.add(slots, vectors)
    index.partitions.add(slots, current, vectors)


def remove_locked(index: "CatalogIndex", keys: list[str]) -> None:
    slots = np.array([index.table.slot[k] for k in keys], np.int64)
    index.partitions.remove(slots, index.table.current_codes(slots))
    index.table.release(keys)
    index.subspaces.remove(slots)
    if index.graph is not None:
        index.graph.remove(slots)

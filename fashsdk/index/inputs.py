"""Validation of what callers hand the index: vectors, label codes, the attribute layout."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import QueryError
from .items import normalize_id


def checked_layout(layout: Sequence[tuple[int, int]] | None, dim: int, num_attributes: int) -> list[tuple[int, int]] | None:
    if layout is None:
        if dim % num_attributes:
            return None
        d = dim // num_attributes
        return [(a * d, (a + 1) * d) for a in range(num_attributes)]
    spans = [(int(s), int(e)) for s, e in layout]
    position = 0
    for start, stop in spans:
        if start != position or stop <= start:
            raise ValueError(f"layout {spans} must cover [0, {dim}) in contiguous, non-empty slices")
        position = stop
    if position != dim or len(spans) != num_attributes:
        raise ValueError(f"layout {spans} must give {num_attributes} slices covering [0, {dim})")
    return spans


def float_matrix(values: object, what: str) -> np.ndarray:
    """A 2-D float32 array from real numbers; anything else is a QueryError naming ``what``."""
    if type(values) is np.ndarray and values.dtype == np.float32 and values.flags.c_contiguous and values.ndim <= 2:
        return values if values.ndim == 2 else values.reshape(1, -1)  # the common case, no copies
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise QueryError(f"{what} must be a numeric array ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise QueryError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(np.atleast_2d(arr), dtype=np.float32)


def checked_codes(codes: np.ndarray | None, n: int, num_attributes: int, what: str) -> np.ndarray:
    if codes is None:
        return np.full((n, num_attributes), -1, np.int16)
    try:
        arr = np.asarray(codes)
    except (ValueError, TypeError) as exc:
        raise QueryError(f"{what} must be an integer array ({exc})") from None
    integral = arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
    if arr.size and not integral:
        raise QueryError(f"{what} must be integer value codes (-1 = unknown), got dtype {arr.dtype}")
    if arr.size != n * num_attributes:
        raise QueryError(f"{what} have shape {arr.shape}, expected ({n}, {num_attributes})")
    if arr.size and (arr.min() < -1 or arr.max() > np.iinfo(np.int16).max):
        raise QueryError(f"{what} must lie in [-1, {np.iinfo(np.int16).max}] (-1 = unknown)")
    return arr.astype(np.int16).reshape(n, num_attributes)


def checked_query(queries: object, k: object, exclude: Sequence[str | None] | None, dim: int,
                  layout: Sequence[tuple[int, int]] | None, attribute: int | None
                  ) -> tuple[np.ndarray, int, list[str | None] | None]:
    """(Q, width) finite float32 queries, k, and normalised ids to exclude (one per query), or a
    QueryError naming the problem; with ``attribute``, the width is that attribute's subspace."""
    queries = float_matrix(queries, "query vectors")
    width = dim
    if attribute is not None:
        if layout is None:
            raise QueryError("this index has no attribute layout, so it cannot search one attribute's subspace")
        if not 0 <= attribute < len(layout):
            raise QueryError(f"attribute index {attribute} is outside 0..{len(layout) - 1}")
        width = layout[attribute][1] - layout[attribute][0]
    if queries.ndim != 2 or queries.shape[1] != width:
        raise QueryError(f"query vectors have shape {queries.shape}, the index searches {width}-d vectors here")
    if not np.isfinite(queries).all():  # cheaper than a float64 sum, and no overflow warnings
        raise QueryError("query vectors contain NaN or infinity")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    skip_keys = None
    if exclude is not None:
        if len(exclude) != len(queries):
            raise QueryError(f"exclude has {len(exclude)} entries for {len(queries)} queries; give one per query")
        skip_keys = [None if e is None else normalize_id(e) for e in exclude]
    return queries, int(k), skip_keys

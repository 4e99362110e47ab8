"""Validation of what callers hand the index: vectors, label codes, the attribute layout."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import QueryError


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

"""The full-precision side of the index: vectors in float32 or float16, scored exactly.

Two reads, both vectorised: the exact score of a candidate set per query (the re-rank after
the graph) and a blocked exact top-k scan over every live slot (small catalogs, ``exact=True``).
float16 halves memory (1M x 4080 is 8 GB instead of 16); its scoring runs through ONNX Runtime
(see tiny_onnx) because numpy's float16 cast is too slow for the hot path.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from . import tiny_onnx

PRECISIONS = {"float32": np.float32, "float16": np.float16}
BLOCK_VALUES = 1 << 22  # values per scan block / candidate batch (16 MB as float32)


class VectorStore:
    def __init__(self, dim: int, capacity: int, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.dim, self.precision = dim, precision
        self.dtype = PRECISIONS[precision]
        self.data = np.zeros((max(capacity, 1), dim), self.dtype)

    @property
    def capacity(self) -> int:
        return int(self.data.shape[0])

    def reserve(self, needed: int) -> None:
        if needed > self.capacity:
            grown = np.zeros((max(needed, 2 * self.capacity), self.dim), self.dtype)
            grown[:self.capacity] = self.data
            self.data = grown

    def put(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        if self.dtype == np.float32:
            self.data[slots] = vectors
            return
        for start, chunk in cast_chunks(vectors, np.float16):
            self.data[slots[start:start + len(chunk)]] = chunk

    def rows(self, slots: np.ndarray | slice | int) -> np.ndarray:
        """Vectors of some slots as float32 (a new array)."""
        picked = self.data[slots]
        if self.dtype == np.float32:
            return picked.copy() if isinstance(slots, slice) else picked
        out = np.empty(picked.shape, np.float32)
        for start, chunk in cast_chunks(np.atleast_2d(picked), np.float32):
            out.reshape(-1, self.dim)[start:start + len(chunk)] = chunk
        return out

    def iter_rows(self, slots: np.ndarray, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(slots, float32 vectors) in chunks of ``step``, without a full-size float32 copy."""
        for s in range(0, len(slots), step):
            part = slots[s:s + step]
            yield part, self.rows(part)

    def score(self, queries: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Exact scores (Q, C): queries (Q, D) float32 against the vectors of slots (Q, C)."""
        out = np.empty(slots.shape, np.float32)
        step = max(1, BLOCK_VALUES // max(1, slots.shape[1] * self.dim))
        for s in range(0, len(queries), step):
            q, idx = queries[s:s + step], slots[s:s + step]
            if self.dtype == np.float32:
                if len(q) == 1:
                    out[s] = self.data[idx[0]] @ q[0]
                else:
                    out[s:s + step] = np.matmul(self.data[idx], q[:, :, None])[:, :, 0]
            else:
                feeds = {"store": self.data, "idx": np.ascontiguousarray(idx, np.int64),
                         "query": np.ascontiguousarray(q[:, :, None])}
                out[s:s + step] = tiny_onnx.session("rerank").run(None, feeds)[0][:, :, 0]
        return out

    def scan_topk(self, queries: np.ndarray, used: int, alive: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``want`` live slots per query, best first: (slots, scores), each (Q, want).

        The caller guarantees at least ``want`` live slots among the first ``used``.
        """
        if len(queries) == 1 and used * self.dim <= BLOCK_VALUES:  # one query, one block: 1-D ops only
            sims = self._block_scores(queries, 0, used)[0]
            live = alive[:used]
            if not live.all():
                sims[~live] = -np.inf
            return best_first(np.arange(used)[None], sims[None], want)
        q_step = max(1, min(len(queries), 1024))
        rows = max(1, BLOCK_VALUES // max(self.dim, q_step))
        out_slots = np.empty((len(queries), want), np.int64)
        out_scores = np.empty((len(queries), want), np.float32)
        for qs in range(0, len(queries), q_step):
            q = queries[qs:qs + q_step]
            best_s: np.ndarray | None = None
            best_v: np.ndarray | None = None
            for start in range(0, used, rows):
                stop = min(used, start + rows)
                sims = self._block_scores(q, start, stop)
                dead = ~alive[start:stop]
                if dead.any():
                    sims[:, dead] = -np.inf
                idx, vals = _top(sims, want)
                if best_s is None:
                    best_s, best_v = idx + start, vals
                else:
                    merged_s = np.concatenate([best_s, idx + start], axis=1)
                    idx, best_v = _top(np.concatenate([best_v, vals], axis=1), want)
                    best_s = np.take_along_axis(merged_s, idx, 1)
            assert best_s is not None and best_v is not None
            best_s, best_v = best_first(best_s, best_v, want)
            out_slots[qs:qs + q_step], out_scores[qs:qs + q_step] = best_s, best_v
        return out_slots, out_scores

    def _block_scores(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        block = self.data[start:stop]
        if self.dtype == np.float32:
            return queries @ block.T
        return tiny_onnx.session("scan").run(None, {"block": block, "query": queries})[0]

    def nbytes(self, used: int) -> int:
        return used * self.dim * np.dtype(self.dtype).itemsize


def _top(scores: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``want`` best of each row, unordered."""
    if want >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape), scores
    part = np.argpartition(-scores, want - 1, axis=1)[:, :want]
    return part, np.take_along_axis(scores, part, 1)


def best_first(slots: np.ndarray, scores: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` best of each row of (Q, C) slots/scores, best first (stable on ties)."""
    if slots.shape[0] == 1:  # the common single query: 1-D ops, no per-call index grids
        s, v = slots[0], scores[0]
        if want < len(v) > 256:  # a full sort of a few hundred values is cheaper than partitioning first
            part = np.argpartition(-v, want - 1)[:want]
            s, v = s[part], v[part]
        order = np.argsort(-v, kind="stable")[:want]
        return s[order][None], v[order][None]
    rows = np.arange(len(slots))[:, None]
    if want < scores.shape[1]:
        part = np.argpartition(-scores, want - 1, axis=1)[:, :want]
        slots, scores = slots[rows, part], scores[rows, part]
    order = np.argsort(-scores, axis=1, kind="stable")
    return slots[rows, order], scores[rows, order]


CAST_VALUES = 1 << 18  # values per ONNX Runtime cast call: small enough to stay in cache


def cast_chunks(values: np.ndarray, dtype: type) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, converted rows) of a 2-D float32 <-> float16 array, through ONNX Runtime in
    cache-sized chunks: numpy's own cast runs at 0.1-0.3 G values/s on this class of CPU."""
    values = np.asarray(values)
    if values.dtype == dtype:
        yield 0, values
        return
    if values.size < 4096:
        yield 0, values.astype(dtype)
        return
    session = tiny_onnx.session("to_float16" if dtype == np.float16 else "to_float32")
    source = np.float32 if dtype == np.float16 else np.float16
    step = max(1, CAST_VALUES // max(1, values.shape[1]))
    for s in range(0, len(values), step):
        yield s, session.run(None, {"x": np.ascontiguousarray(values[s:s + step], source)})[0]

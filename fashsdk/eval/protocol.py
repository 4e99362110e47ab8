"""The papers' manipulation-retrieval protocol, in numpy (no torch needed to evaluate).

Gallery = the whole test split. A query is (item, attribute(s), new value(s)); it is kept
only when some gallery item carries the full target label combination. A hit at k means
one of the top-k results has exactly that combination. NDCG@k scores each result by the
fraction of attributes matching the target; the ideal ranking is all ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from ..schema import UNKNOWN

DEFAULT_KS = (1, 5, 10, 20, 30, 50)


@dataclass
class QuerySet:
    rows: np.ndarray  # (Q,) gallery row of the query item
    attrs: np.ndarray  # (Q, C) changed attribute indices
    values: np.ndarray  # (Q, C) wanted value indices
    targets: np.ndarray  # (Q, A) target label combination
    candidates: int  # valid queries before sampling

    def __len__(self) -> int:
        return len(self.rows)


def combination_keys(codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """One int64 key per label combination (mixed radix; unknown gets its own digit)."""
    keys = np.zeros(len(codes), dtype=np.int64)
    for a, size in enumerate(sizes):
        keys = keys * (size + 1) + (codes[:, a].astype(np.int64) + 1)
    return keys


def manipulation_queries(codes: np.ndarray, sizes: Sequence[int], *, changes: int = 1,
                         max_queries: int | None = 20000, seed: int = 0,
                         attributes: Sequence[int] | None = None) -> QuerySet:
    """Every fully-labelled item x every other value of ``changes`` attributes whose target
    combination exists in the gallery; sampled uniformly (fixed seed) above ``max_queries``."""
    codes = np.asarray(codes)
    A = codes.shape[1]
    gallery_keys = set(combination_keys(codes, sizes).tolist())
    known = np.flatnonzero((codes != UNKNOWN).all(axis=1))
    attr_sets = list(combinations(attributes if attributes is not None else range(A), changes))
    rows_all, attrs_all, values_all, targets_all = [], [], [], []
    for attr_set in attr_sets:
        # every combination of other values for the chosen attributes
        grids = np.meshgrid(*[np.arange(sizes[a]) for a in attr_set], indexing="ij")
        new_values = np.stack([g.ravel() for g in grids], axis=1)  # (V, C)
        for start in range(0, len(known), 2048):
            rows = known[start:start + 2048]
            base = codes[rows]  # (R, A)
            tgt = np.repeat(base[:, None, :], len(new_values), axis=1).copy()  # (R, V, A)
            for c, a in enumerate(attr_set):
                tgt[:, :, a] = new_values[None, :, c]
            differs = np.ones(tgt.shape[:2], dtype=bool)
            for c, a in enumerate(attr_set):
                differs &= tgt[:, :, a] != base[:, None, a]
            tgt_flat = tgt.reshape(-1, A)
            keys = combination_keys(tgt_flat, sizes)
            present = np.fromiter((k in gallery_keys for k in keys.tolist()), bool, len(keys))
            keep = differs.ravel() & present
            r_idx, v_idx = np.divmod(np.flatnonzero(keep), len(new_values))
            rows_all.append(rows[r_idx])
            attrs_all.append(np.tile(np.asarray(attr_set), (len(r_idx), 1)))
            values_all.append(new_values[v_idx])
            targets_all.append(tgt_flat[keep])
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
    attrs = np.concatenate(attrs_all) if attrs_all else np.zeros((0, changes), np.int64)
    values = np.concatenate(values_all) if values_all else np.zeros((0, changes), np.int64)
    targets = np.concatenate(targets_all) if targets_all else np.zeros((0, A), codes.dtype)
    total = len(rows)
    if max_queries is not None and total > max_queries:
        pick = np.sort(np.random.default_rng(seed).choice(total, max_queries, replace=False))
        rows, attrs, values, targets = rows[pick], attrs[pick], values[pick], targets[pick]
    return QuerySet(rows, attrs, values, targets, total)


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices (Q, k) of the k most similar gallery rows by inner product, best first."""
    k = min(k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s:s + chunk] @ gallery.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(top, order, 1)
    return out


def hit_rates(results: np.ndarray, gallery_codes: np.ndarray, targets: np.ndarray,
              ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Top-k accuracy: fraction of queries with an exact target match among the first k."""
    exact = (gallery_codes[results] == targets[:, None, :]).all(axis=2)  # (Q, K)
    return {k: float(exact[:, :k].any(axis=1).mean()) if len(results) else 0.0 for k in ks}


def ndcg(results: np.ndarray, gallery_codes: np.ndarray, targets: np.ndarray,
         ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """NDCG@k with relevance = fraction of attributes equal to the target."""
    rel = (gallery_codes[results] == targets[:, None, :]).mean(axis=2)  # (Q, K)
    gains = (2.0 ** rel - 1.0) / np.log2(np.arange(results.shape[1]) + 2.0)
    ideal = 1.0 / np.log2(np.arange(results.shape[1]) + 2.0)
    return {k: float((gains[:, :k].sum(1) / ideal[:k].sum()).mean()) if len(results) else 0.0 for k in ks}


def per_attribute_hits(results: np.ndarray, gallery_codes: np.ndarray, queries: QuerySet,
                       names: Sequence[str], ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[int, float]]:
    """Top-k accuracy split by the (first) changed attribute."""
    out = {}
    for a, name in enumerate(names):
        mask = queries.attrs[:, 0] == a
        if mask.any():
            out[name] = hit_rates(results[mask], gallery_codes, queries.targets[mask], ks)
    return out

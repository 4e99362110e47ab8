"""The papers' manipulation-retrieval protocol, in numpy (no torch needed to evaluate).

Gallery = the whole test split. A query is (item, attribute(s), new value(s)); it is kept
only when some gallery item carries the full target label combination. A hit at k means
one of the top-k results has exactly that combination. NDCG@k scores each result by the
fraction of attributes matching the target; the ideal ranking is all ones.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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
    keys = combination_keys(codes, sizes)
    uniq_keys, first = np.unique(keys, return_index=True)
    combos = codes[first].astype(np.int64)  # the gallery's distinct label combinations
    weights = np.cumprod([1, *[s + 1 for s in sizes[::-1]]])[:A][::-1].astype(np.int64)  # each digit's place value
    known = np.flatnonzero((codes != UNKNOWN).all(axis=1))
    base = codes[known].astype(np.int64)
    rows_all, attrs_all, values_all, targets_all = [], [], [], []
    for attr_set in combinations(attributes if attributes is not None else range(A), changes):
        changed = list(attr_set)
        # a target keeps every other attribute: it is a gallery combination with the query's "rest" key,
        # whose changed attributes are all known and all differ from the query's
        rest_of_combo = uniq_keys - ((combos[:, changed] + 1) * weights[changed]).sum(axis=1)
        usable = (combos[:, changed] != UNKNOWN).all(axis=1)
        # grouped by rest key, then in value order (the order of a grid over the changed values)
        order = np.lexsort([*(combos[:, a] for a in changed[::-1]), rest_of_combo])
        order = order[usable[order]]
        group_keys = rest_of_combo[order]
        rest_of_query = keys[known] - ((base[:, changed] + 1) * weights[changed]).sum(axis=1)
        lo = np.searchsorted(group_keys, rest_of_query, side="left")
        counts = np.searchsorted(group_keys, rest_of_query, side="right") - lo
        r_idx = np.repeat(np.arange(len(known)), counts)
        c_idx = order[np.arange(len(r_idx)) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)]
        differs = (combos[c_idx][:, changed] != base[r_idx][:, changed]).all(axis=1)
        r_idx, c_idx = r_idx[differs], c_idx[differs]
        rows_all.append(known[r_idx])
        attrs_all.append(np.tile(np.asarray(attr_set), (len(r_idx), 1)))
        values_all.append(combos[c_idx][:, changed])
        targets_all.append(combos[c_idx].astype(codes.dtype))
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
    attrs = np.concatenate(attrs_all) if attrs_all else np.zeros((0, changes), np.int64)
    values = np.concatenate(values_all) if values_all else np.zeros((0, changes), np.int64)
    targets = np.concatenate(targets_all) if targets_all else np.zeros((0, A), codes.dtype)
    total = len(rows)
    if max_queries is not None and total > max_queries:
        pick = np.sort(np.random.default_rng(seed).choice(total, max_queries, replace=False))
        rows, attrs, values, targets = rows[pick], attrs[pick], values[pick], targets[pick]
    return QuerySet(rows, attrs, values, targets, total)


def per_attribute_queries(codes: np.ndarray, sizes: Sequence[int], per_attribute: int, seed: int = 0) -> QuerySet:
    """Single-attribute queries, up to ``per_attribute`` changing each attribute (each sampled as
    ``manipulation_queries`` samples): a uniform sample gives a rare attribute a few hundred
    queries, too few to tell its Top-30 to within a point."""
    parts = [manipulation_queries(codes, sizes, max_queries=per_attribute, seed=seed, attributes=[a])
             for a in range(len(sizes))]
    return QuerySet(*(np.concatenate([getattr(q, f) for q in parts]) for f in ("rows", "attrs", "values", "targets")),
                    sum(q.candidates for q in parts))


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices (Q, k) of the k most similar gallery rows by inner product, best first; chunks of
    queries run on a few threads (numpy's product and partition release the GIL)."""
    k = min(k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    if k == 0:
        return out

    def one(s: int) -> None:
        sims = queries[s:s + chunk] @ gallery.T
        top = np.argpartition(sims, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(top, order, 1)

    starts = range(0, len(queries), chunk)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1, len(starts)))) as pool:
        list(pool.map(one, starts))
    return out


def hit_rates(results: np.ndarray, gallery_codes: np.ndarray, targets: np.ndarray,
              ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Top-k accuracy: fraction of queries with an exact target match among the first k."""
    return {k: float(query_hits(results, gallery_codes, targets, k).mean()) if len(results) else 0.0 for k in ks}


def query_hits(results: np.ndarray, gallery_codes: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Per query, whether an exact target match is among the first k (bool, (Q,)): what
    ``hit_rates`` averages, kept per query so two methods can be compared query by query."""
    if not len(results):
        return np.zeros(0, bool)
    return (gallery_codes[results[:, :k]] == targets[:, None, :]).all(axis=2).any(axis=1)


def paired_lead(hits_a: np.ndarray, hits_b: np.ndarray) -> tuple[float, float]:
    """How far method b's hit rate is above a's on the same queries, and that lead's standard error.

    Paired: only the queries the two methods disagree on carry information, so the error is
    far smaller than two independent rates' would be (McNemar's setting)."""
    if hits_a.shape != hits_b.shape:
        raise ValueError(f"paired hits need the same queries: shapes {hits_a.shape} and {hits_b.shape}")
    n = len(hits_a)
    if n == 0:
        return 0.0, 0.0
    diff = hits_b.astype(np.float64) - hits_a.astype(np.float64)
    lead = float(diff.mean())
    return lead, float(np.sqrt(max(float((diff ** 2).mean()) - lead ** 2, 0.0) / n))


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

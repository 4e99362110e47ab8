"""Is the embedding usable? How its squared norm is shared among attribute chunks, how far
apart scores are, and whether manipulation keeps the attributes it was not asked to change.

A chunk holding nearly all of the norm makes every other attribute invisible to search; scores
that differ in the fourth decimal mean no threshold can say "no good match"; results that drop
the unchanged attributes answer "in red" with a red item of another kind (the papers' "Query"
column, DAtRNet Table 3); results without the requested value answer "in red" with the blue
original's neighbours. Top-k counts only exact combinations, so it sees neither half alone.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..schema import UNKNOWN
from .protocol import QuerySet


def chunk_shares(vectors: np.ndarray, layout: Sequence[tuple[int, int]], names: Sequence[str]) -> dict[str, float]:
    """Mean share of each item's squared norm that lies in each attribute's chunk."""
    total = np.maximum(np.einsum("ij,ij->i", vectors, vectors), 1e-12)
    return {name: float((np.einsum("ij,ij->i", vectors[:, s:e], vectors[:, s:e]) / total).mean())
            for name, (s, e) in zip(names, layout)}


def score_spread(vectors: np.ndarray, queries: int = 500, far: int = 100, seed: int = 0) -> dict[str, float]:
    """Cosine of items to their 1st and ``far``-th nearest other item, and of random pairs (medians)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), min(queries, len(vectors)), replace=False)
    sims = vectors[pick] @ vectors.T
    sims[np.arange(len(pick)), pick] = -np.inf
    ordered = -np.sort(-sims, axis=1)
    far = min(far, vectors.shape[0] - 2)
    pairs = rng.integers(0, len(vectors), (2, 2000))
    random_pairs = np.einsum("ij,ij->i", vectors[pairs[0]], vectors[pairs[1]])
    return {"first_neighbour": float(np.median(ordered[:, 0])), f"neighbour_{far + 1}": float(np.median(ordered[:, far])),
            "random_pair": float(np.median(random_pairs))}


def preservation(results: np.ndarray, gallery_codes: np.ndarray, queries: QuerySet, k: int = 10) -> dict[str, Any]:
    """Share of the top-k results that keep each attribute the query did not change (its labelled
    value), per attribute and on average: manipulation should change one thing, not everything."""
    top = results[:, :k]
    names_rate: dict[int, list[float]] = {}
    for qi in range(len(queries)):
        changed = set(queries.attrs[qi].tolist())
        for a in range(gallery_codes.shape[1]):
            if a in changed or queries.targets[qi, a] == UNKNOWN:
                continue
            names_rate.setdefault(a, []).append(float((gallery_codes[top[qi], a] == queries.targets[qi, a]).mean()))
    per = {a: float(np.mean(v)) for a, v in sorted(names_rate.items())}
    return {"per_attribute": per, "mean": float(np.mean(list(per.values()))) if per else 0.0}


def requested_share(results: np.ndarray, gallery_codes: np.ndarray, queries: QuerySet, k: int = 10) -> dict[str, Any]:
    """Share of the top-k results that carry the requested value of each changed attribute, per
    (first) changed attribute and on average: what a shopper asking for "red" sees first."""
    top = results[:, :k]
    carried = np.ones(top.shape, bool)
    for c in range(queries.attrs.shape[1]):
        carried &= gallery_codes[top, queries.attrs[:, c:c + 1]] == queries.values[:, c:c + 1]
    rate = carried.mean(1) if top.size else np.zeros(len(queries))
    per = {int(a): float(rate[queries.attrs[:, 0] == a].mean()) for a in np.unique(queries.attrs[:, 0])}
    return {"per_attribute": per, "mean": float(rate.mean()) if len(rate) else 0.0}

"""How good is a bundle? The papers' manipulation protocol with the baselines, in one place.

Methods ranked on the same queries:
- ``adde_m``: the memory-block residual q + M (onehot(new) - onehot(old)).
- ``mean_swap``: FashionSearchNet/DAtRNet style; the changed attribute's chunk is replaced by
  the mean chunk of the wanted value (means from a reference set, normally training images).
- ``attribute_based``: the heads' predicted attributes with the changed one replaced; the
  gallery is ranked by agreement of predicted attributes, ties by embedding similarity.
- ``no_manipulation``: the query's own nearest neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .evaluation import DEFAULT_KS, QuerySet, adde_queries, exact_topk, hit_rates, ndcg, per_attribute_hits
from .schema import UNKNOWN, AttributeSchema

METHODS = ("adde_m", "mean_swap", "attribute_based", "no_manipulation")


@dataclass
class Gallery:
    ids: list[str]
    vectors: np.ndarray  # (n, D) L2-normalised
    codes: np.ndarray  # (n, A) labels, -1 unknown
    predicted: np.ndarray  # (n, A) the heads' argmax


def value_means(vectors: np.ndarray, codes: np.ndarray, schema: AttributeSchema,
                layout: Sequence[tuple[int, int]]) -> np.ndarray:
    """(D, J): column j holds the mean chunk of value j in its attribute's slice, zeros elsewhere."""
    means = np.zeros((vectors.shape[1], schema.total_values), np.float32)
    for a, (offset, size) in enumerate(zip(schema.offsets, schema.sizes)):
        start, stop = layout[a]
        for v in range(size):
            rows = codes[:, a] == v
            if rows.any():
                means[start:stop, offset + v] = vectors[rows, start:stop].mean(0)
    return means


def mean_swap_queries(gallery: Gallery, means: np.ndarray, schema: AttributeSchema,
                      layout: Sequence[tuple[int, int]], queries: QuerySet) -> np.ndarray:
    q = gallery.vectors[queries.rows].copy()
    offsets = np.asarray(schema.offsets)
    for c in range(queries.attrs.shape[1]):
        for a in np.unique(queries.attrs[:, c]):
            sel = np.flatnonzero(queries.attrs[:, c] == a)
            start, stop = layout[a]
            q[sel, start:stop] = means[start:stop, offsets[a] + queries.values[sel, c]].T
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def attribute_based_topk(gallery: Gallery, queries: QuerySet, k: int, chunk: int = 1024) -> np.ndarray:
    """Rank by number of predicted attributes equal to the wanted ones, ties by cosine."""
    wanted = gallery.predicted[queries.rows].copy()
    for c in range(queries.attrs.shape[1]):
        wanted[np.arange(len(queries)), queries.attrs[:, c]] = queries.values[:, c]
    out = np.empty((len(queries), min(k, len(gallery.ids))), np.int64)
    for s in range(0, len(queries), chunk):
        agree = (gallery.predicted[None, :, :] == wanted[s:s + chunk, None, :]).sum(2).astype(np.float32)
        sims = gallery.vectors[queries.rows[s:s + chunk]] @ gallery.vectors.T
        score = agree + 0.25 * (sims + 1.0)  # cosine only breaks ties: 0.25*(cos+1) < 1
        top = np.argpartition(-score, out.shape[1] - 1, axis=1)[:, :out.shape[1]]
        order = np.argsort(-np.take_along_axis(score, top, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(top, order, 1)
    return out


def method_queries(method: str, gallery: Gallery, prototypes: np.ndarray, means: np.ndarray,
                   schema: AttributeSchema, layout: Sequence[tuple[int, int]], queries: QuerySet) -> np.ndarray:
    """The query vectors a vector-search method sends to the index."""
    if method == "adde_m":
        return adde_queries(gallery.vectors, prototypes, schema.offsets, gallery.codes, queries)
    if method == "mean_swap":
        return mean_swap_queries(gallery, means, schema, layout, queries)
    if method == "no_manipulation":
        return gallery.vectors[queries.rows]
    raise ValueError(f"{method!r} is not a vector-search method")


def evaluate_methods(gallery: Gallery, prototypes: np.ndarray, means: np.ndarray, schema: AttributeSchema,
                     layout: Sequence[tuple[int, int]], queries: QuerySet, ks: Sequence[int] = DEFAULT_KS,
                     approximate: Callable[[np.ndarray, int], np.ndarray] | None = None) -> dict:
    """Top-k, NDCG@k and per-attribute Top-k for every method; ``approximate`` (the
    production index, query vectors -> gallery rows) repeats the vector methods through it."""
    kmax = max(ks)
    top_k, ndcgs, per_attr, approx = {}, {}, {}, {}
    for method in METHODS:
        if method == "attribute_based":
            results = attribute_based_topk(gallery, queries, kmax)
        else:
            q = method_queries(method, gallery, prototypes, means, schema, layout, queries)
            results = exact_topk(q, gallery.vectors, kmax)
            if approximate is not None:
                approx[method] = hit_rates(approximate(q, kmax), gallery.codes, queries.targets, ks)
        top_k[method] = hit_rates(results, gallery.codes, queries.targets, ks)
        ndcgs[method] = ndcg(results, gallery.codes, queries.targets, ks)
        per_attr[method] = per_attribute_hits(results, gallery.codes, queries, schema.names, ks)
    return {"queries": len(queries), "valid_queries": queries.candidates, "top_k": top_k, "ndcg": ndcgs,
            "per_attribute": per_attr, "top_k_hnsw": approx}


def conditional_similarity(gallery: Gallery, schema: AttributeSchema, layout: Sequence[tuple[int, int]],
                           k: int = 10, triplets: int = 2000, max_queries: int = 3000, seed: int = 0) -> dict:
    """Per attribute: how often the top-k neighbours on that attribute's chunk share the
    query's value (vs the full embedding), and CSN-style triplet accuracy on the chunk."""
    rng = np.random.default_rng(seed)
    out = {}
    for a, name in enumerate(schema.names):
        start, stop = layout[a]
        known = np.flatnonzero(gallery.codes[:, a] != UNKNOWN)
        if len(known) < k + 2:
            continue
        chunk = gallery.vectors[known, start:stop]
        chunk = chunk / np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
        labels = gallery.codes[known, a]
        qs = rng.choice(len(known), min(max_queries, len(known)), replace=False)

        def precision(space: np.ndarray) -> float:
            top = exact_topk(space[qs], space, k + 1)[:, 1:]  # drop the query itself
            return float((labels[top] == labels[qs, None]).mean())

        anc = rng.integers(0, len(known), triplets)
        same = np.array([rng.choice(np.flatnonzero(labels == labels[i])) for i in anc])
        diff_pool = [np.flatnonzero(labels != labels[i]) for i in anc]
        ok = np.array([len(p) > 0 for p in diff_pool])
        diff = np.array([rng.choice(p) if len(p) else 0 for p in diff_pool])
        d_pos = np.linalg.norm(chunk[anc] - chunk[same], axis=1)
        d_neg = np.linalg.norm(chunk[anc] - chunk[diff], axis=1)
        full = gallery.vectors[known]
        f_pos = np.linalg.norm(full[anc] - full[same], axis=1)
        f_neg = np.linalg.norm(full[anc] - full[diff], axis=1)
        out[name] = {
            f"precision_at_{k}": precision(chunk),
            f"precision_at_{k}_full_embedding": precision(full),
            "triplet_accuracy": float((d_pos < d_neg)[ok & (same != anc)].mean()),
            "triplet_accuracy_full_embedding": float((f_pos < f_neg)[ok & (same != anc)].mean()),
            "chance_precision": float(np.sum((np.bincount(labels) / len(labels)) ** 2)),
        }
    return out

"""How good is a bundle? The papers' manipulation protocol over model families and baselines.

Rows ranked on the same queries:
- one row per model family (``fashsdk.families``): its own batched query arithmetic, the
  same code the runtime serves (e.g. ``adde``; ``mean_swap`` is the chunk_replace family with
  value means from reference images);
- ``attribute_based``: the heads' predicted attributes with the changed one replaced; the
  gallery is ranked by agreement of predicted attributes, ties by embedding similarity;
- ``no_manipulation``: the query's own nearest neighbours.

A family row whose bundle carries a label rerank (fashsdk.tasks.label_rerank) is ranked twice:
``NAME+rerank`` (what the SDK serves: the family's nearest candidates and value candidates,
reordered) and ``NAME`` (cosine alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..families import NO_CHANGE, Family
from ..schema import UNKNOWN, AttributeSchema
from ..tasks.label_rerank import LabelRerank, wanted_values
from .protocol import DEFAULT_KS, QuerySet, exact_topk, hit_rates, ndcg, per_attribute_hits
from .shape import preservation, requested_share

BASELINES = ("attribute_based", "no_manipulation")
RERANKED = "+rerank"  # suffix of a row reordered by its bundle's label rerank


@dataclass
class Gallery:
    ids: list[str]
    vectors: np.ndarray  # (n, D) L2-normalised
    codes: np.ndarray  # (n, A) labels, -1 unknown
    predicted: np.ndarray  # (n, A) the heads' argmax


def family_queries(family: Family, gallery: Gallery, queries: QuerySet) -> np.ndarray:
    """The vectors a family searches with for a query set (the query items are fully labelled)."""
    return family.change_batch(gallery.vectors[queries.rows], gallery.codes[queries.rows], queries.attrs,
                               queries.values)


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


def value_candidates(vectors: np.ndarray, current: np.ndarray, moved: np.ndarray, queries: QuerySet,
                     count: int) -> np.ndarray:
    """(Q, count) gallery rows: each query's nearest items whose ``current`` value (label, else
    prediction) is the wanted one for every changed attribute, found exactly, as the served
    ``where`` search finds them; -1 pads where fewer items carry those values."""
    out = np.full((len(queries), count), -1, np.int64)
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for q, (attrs, values) in enumerate(zip(queries.attrs.tolist(), queries.values.tolist())):
        groups.setdefault(tuple((a, v) for a, v in zip(attrs, values) if a != NO_CHANGE), []).append(q)
    for key, rows in groups.items():
        selected = np.flatnonzero(np.logical_and.reduce([current[:, a] == v for a, v in key]))
        take = min(count, len(selected))
        if take:
            nearest = exact_topk(moved[rows], vectors[selected], take)
            out[np.asarray(rows)[:, None], np.arange(take)] = selected[nearest]
    return out


def rerank_pool(vectors: np.ndarray, moved: np.ndarray, nearest: np.ndarray, extra: np.ndarray | None,
                chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(rows (Q, K), cosines (Q, K)): each query's ``nearest`` gallery rows followed by the ``extra``
    rows (its value candidates, -1 pads; None: none) they lack, the rerank's pool; a repeat or a pad
    becomes a copy of the query's first row with cosine -inf, so it sorts last."""
    rows, repeat = nearest, np.zeros((len(nearest), 0), bool)
    if extra is not None:
        offset = np.arange(len(nearest))[:, None] * len(vectors)  # per-query keys: one isin for all queries
        repeat = (extra < 0) | np.isin(extra + offset, nearest + offset)
        rows = np.concatenate([nearest, np.where(repeat, nearest[:, :1], extra)], axis=1)
    cosine = np.empty(rows.shape, np.float32)
    for s in range(0, len(rows), chunk):  # (chunk, K, D) at a time: all queries at once can take gigabytes
        cosine[s:s + chunk] = np.einsum("qd,qkd->qk", moved[s:s + chunk], vectors[rows[s:s + chunk]])
    cosine[:, nearest.shape[1]:][repeat] = -np.inf
    return rows, cosine


def reranked(rerank: LabelRerank, gallery: Gallery, log_probs: np.ndarray, moved: np.ndarray,
             candidates: np.ndarray, extra: np.ndarray | None, queries: QuerySet) -> np.ndarray:
    """Gallery rows of each query's rerank pool (``candidates`` and the value candidates ``extra``)
    reordered by the label rerank; ``moved`` are the changed query vectors, ``log_probs`` the
    rerank's (n, J) over the gallery."""
    rows, cosine = rerank_pool(gallery.vectors, moved, candidates, extra)
    wanted, changed = wanted_values(gallery.codes[queries.rows], queries.attrs, queries.values, NO_CHANGE)
    order, _ = rerank.order(cosine, log_probs, rows, wanted, changed)
    return np.take_along_axis(rows, order, axis=1)


def evaluate_methods(galleries: Mapping[str, Gallery], families: Mapping[str, Family], schema: AttributeSchema,
                     queries: QuerySet, ks: Sequence[int] = DEFAULT_KS,
                     approximate: Mapping[str, Callable[[np.ndarray, int], np.ndarray]] | None = None,
                     rerankers: Mapping[str, LabelRerank] | None = None) -> dict:
    """Top-k, NDCG@k and per-attribute Top-k for every family row and the baselines.

    ``galleries[row]`` is the gallery in that row's embedding space (rows of one checkpoint
    share one); the baselines use the first. ``approximate[row]`` (the production index: query
    vectors -> gallery rows) repeats that row's search through the index. ``rerankers[row]``
    adds the row ``row+rerank``, that family's candidates reordered by the label rerank.
    """
    kmax = max(ks)
    top_k, ndcgs, per_attr, approx = {}, {}, {}, {}
    first = next(iter(galleries.values()))
    rows: dict[str, np.ndarray] = {}
    for name, family in families.items():
        gallery = galleries[name]
        q = family_queries(family, gallery, queries)
        rerank = (rerankers or {}).get(name)
        wide = kmax if rerank is None else max(kmax, rerank.candidates)
        nearest = exact_topk(q, gallery.vectors, wide)  # best first, so its first kmax are the plain row
        if rerank is not None:
            log_probs = rerank.log_probs(gallery.vectors)
            # found by the model's predicted values, never by the labels that define the hits (an index
            # that holds labels serves them, and does as well as they are right); one set for both paths
            extra = (value_candidates(gallery.vectors, gallery.predicted, q, queries, rerank.value_candidates)
                     if rerank.value_candidates > 0 else None)
            rows[name + RERANKED] = reranked(rerank, gallery, log_probs, q, nearest, extra, queries)[:, :kmax]
            if approximate is not None and name in approximate:
                found = reranked(rerank, gallery, log_probs, q, approximate[name](q, wide), extra, queries)[:, :kmax]
                approx[name + RERANKED] = hit_rates(found, gallery.codes, queries.targets, ks)
        rows[name] = nearest[:, :kmax]
        if approximate is not None and name in approximate:
            approx[name] = hit_rates(approximate[name](q, kmax), gallery.codes, queries.targets, ks)
    rows["attribute_based"] = attribute_based_topk(first, queries, kmax)
    rows["no_manipulation"] = exact_topk(first.vectors[queries.rows], first.vectors, kmax)
    kept, requested = {}, {}
    for name, results in rows.items():
        top_k[name] = hit_rates(results, first.codes, queries.targets, ks)
        ndcgs[name] = ndcg(results, first.codes, queries.targets, ks)
        per_attr[name] = per_attribute_hits(results, first.codes, queries, schema.names, ks)
        kept[name] = by_name(preservation(results, first.codes, queries, k=10), schema.names)
        requested[name] = by_name(requested_share(results, first.codes, queries, k=10), schema.names)
    return {"queries": len(queries), "valid_queries": queries.candidates, "top_k": top_k, "ndcg": ndcgs,
            "per_attribute": per_attr, "top_k_hnsw": approx, "preservation_at_10": kept,
            "requested_at_10": requested}


def by_name(share: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """A per-attribute share ({"mean", "per_attribute": {index: value}}) keyed by attribute name."""
    return {"mean": share["mean"], **{names[a]: v for a, v in share["per_attribute"].items()}}


def conditional_similarity(gallery: Gallery, schema: AttributeSchema, layout: Sequence[tuple[int, int]],
                           k: int = 10, triplets: int = 2000, max_queries: int = 3000, seed: int = 0) -> dict:
    """Per attribute: how often the top-k neighbours in that attribute's subspace (its chunk,
    re-normalised: what ``Retriever.similar`` searches) share the query's value, against the
    full embedding, and CSN-style triplet accuracy in both."""
    from ..index.subspaces import chunks

    rng = np.random.default_rng(seed)
    out = {}
    for a, name in enumerate(schema.names):
        known = np.flatnonzero(gallery.codes[:, a] != UNKNOWN)
        if len(known) < k + 2:
            continue
        chunk = chunks(gallery.vectors[known], layout[a])
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

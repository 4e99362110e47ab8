"""Top-k over one vector space: a graph walk (with exact re-rank when the graph holds a
projection) or an exact scan, plus dropping each query's own item from its results.

These are the index's read paths, free functions over its parts so that the full space,
the per-value partitions and the per-attribute subspaces share them.
"""
from __future__ import annotations

import numpy as np

from .graph import ProjectedGraph, candidate_count
from .vector_store import VectorStore, best_first


def graph_topk(graph: ProjectedGraph, store: VectorStore | None, queries: np.ndarray, want: int, count: int,
               threads: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(Q, want) slots and scores from ``count`` graph candidates, or None when fewer are reachable.

    With an identity projection over float32 (``store`` None) the graph's scores are exact;
    otherwise the candidates are re-ranked exactly on the store's full vectors.
    """
    try:
        cand, distance = graph.candidates(queries, count, threads)
    except RuntimeError:  # fewer reachable nodes than asked (heavy deletions)
        return None
    if store is None:
        return cand[:, :want], 1.0 - distance[:, :want]
    return best_first(cand, store.score(queries, cand), want)


def one_in_graph(graph: ProjectedGraph, query: np.ndarray, want: int, count: int, k: int,
                 skip: int) -> tuple[list[list[int]], list[np.ndarray]] | None:
    """The SDK's common call (one query, exact graph scores) with as few numpy calls as possible:
    after a graph walk the caches are cold and each small call costs microseconds. Same results as
    ``graph_topk`` + ``drop_excluded``; None when fewer nodes are reachable than asked."""
    try:
        labels, distances = graph.graph.knn_query(query, k=count, num_threads=1)
    except RuntimeError:
        return None
    row = labels[0, :want].tolist()
    cut = row.index(skip) if skip >= 0 and skip in row else -1
    near = distances[0]
    if cut >= 0:  # then want = k + 1 (or n): dropping one leaves at most k
        del row[cut]
        scores = 1.0 - np.concatenate((near[:cut], near[cut + 1:want]))  # np.delete costs ~15 us here
    else:
        scores = 1.0 - near[:k]
    return [row[:k]], [scores]


def scan_slots(vectors: np.ndarray, slots: np.ndarray, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``want`` among ``slots`` whose float32 rows are ``vectors`` (len(slots), D)."""
    scores = queries @ vectors.T
    return best_first(np.broadcast_to(slots, scores.shape), scores, min(want, len(slots)))


def drop_excluded(slots: np.ndarray, scores: np.ndarray, skip: list[int] | None,
                  k: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Each query's top-k slots with its excluded slot dropped; list work is O(k) per query."""
    out_rows: list[list[int]] = []
    out_scores: list[np.ndarray] = []
    for qi, row in enumerate(slots.tolist()):
        cut = -1
        if skip is not None and skip[qi] >= 0:
            try:
                cut = row.index(skip[qi], 0, k + 1)
            except ValueError:
                cut = -1
        if cut < 0:
            out_rows.append(row[:k])
            out_scores.append(np.array(scores[qi, :k]))
        else:
            del row[cut]
            out_rows.append(row[:k])
            out_scores.append(np.concatenate((scores[qi, :cut], scores[qi, cut + 1:k + 1])))
    return out_rows, out_scores


__all__ = ["candidate_count", "drop_excluded", "graph_topk", "one_in_graph", "scan_slots"]

"""Pick the graph's candidate count for this catalog by measuring recall, not by a size rule.

How many candidates a query needs for a given recall depends on the embedding (how flat the
scores near the top are), not only on the catalog's size, so after a build the index times
nothing but measures: it makes probe queries that look like manipulated ones (an item with one
attribute's chunk taken from another item, renormalised; without a layout, the midpoint of two
items), finds their exact top 10 by a scan, and keeps the smallest count on a ladder whose
recall@10 reaches the target. Probes come from the catalog itself, so this holds on catalogs
and models the defaults were never measured on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .graph import ProjectedGraph

if TYPE_CHECKING:
    from .catalog_index import CatalogIndex

TARGET_RECALL = 0.98  # recall@10 on probes, which measured no easier than real manipulated queries
PROBES = 512
LADDER = (16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
K = 10
MIN_CALIBRATED_ITEMS = 4 * LADDER[-1]  # smaller graphs keep the size rule (graph.candidate_count)


def probe_queries(vectors: np.ndarray, layout: list[tuple[int, int]] | None, seed: int) -> np.ndarray:
    """(len(vectors), D) unit queries: each row with one attribute chunk swapped in from another
    row (the shape of a manipulated query), or, without a layout, the midpoint of two rows."""
    rng = np.random.default_rng(seed)
    donors = vectors[rng.permutation(len(vectors))]
    if layout:
        out = vectors.copy()
        chunk = rng.integers(0, len(layout), len(vectors))
        for a, (start, stop) in enumerate(layout):
            rows = chunk == a
            out[rows, start:stop] = donors[rows, start:stop]
    else:
        out = vectors + donors
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), np.float32)


def graph_recall(graph: ProjectedGraph, store_scores: object, probes: np.ndarray, truth: np.ndarray, count: int,
                 threads: int) -> float:
    """recall@10 of the graph's top 10 from ``count`` candidates: on its native walk when it has one
    (one query at a time, as searches use it), else hnswlib's (re-ranked when projected)."""
    from .reads import graph_topk

    if graph.walk is not None:  # the path single searches take
        rows = [graph.walk.search(q, count, K)[0] for q in probes]
    else:
        graph.set_beam(count)
        found = graph_topk(graph, store_scores, probes, K, count, threads)  # type: ignore[arg-type]
        if found is None:
            return 0.0
        rows = found[0].tolist()
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(rows, truth))
    return hits / (K * len(truth))


def calibrate(index: "CatalogIndex", target: float = TARGET_RECALL, probes: int = PROBES) -> int | None:
    """The smallest ladder count whose probe recall@10 reaches ``target`` (the top of the ladder if
    none does); None when there is no graph. Call under the write lock: it moves the graph's beam."""
    graph = index.graph
    alive = index.table.live_slots()
    if graph is None or len(alive) <= MIN_CALIBRATED_ITEMS:
        return None
    rng = np.random.default_rng(len(alive))
    picked = np.sort(rng.choice(alive, min(probes, len(alive)), replace=False))
    queries = probe_queries(index.store.rows(picked).astype(np.float32), index.layout, len(alive))
    truth = index.store.scan_topk(queries, index.table.used, index.table.alive, K)[0]
    store = None if graph.projection.identity and index.precision == "float32" else index.store
    beam = graph.beam
    chosen = LADDER[-1]
    for count in LADDER:
        if count >= len(alive):
            break
        if graph_recall(graph, store, queries, truth, count, index.threads) >= target:
            chosen = count
            break
    graph.set_beam(beam)
    return chosen


# ---- similar: the subspace graphs' beam ----------------------------------------------------------
SIMILAR_TARGET = 0.99  # similar's queries are catalog items, so the probes are real queries
SIMILAR_LADDER = (16, 24, 32, 48, 64, 96)
SIMILAR_PROBES = 256
TIE = 1e-5  # an item scoring within this of the exact 10th best is as good a result (chunks repeat)


def similar_beam(index: "CatalogIndex", attribute: int, target: float = SIMILAR_TARGET,
                 probes: int = SIMILAR_PROBES) -> int:
    """The smallest beam on SIMILAR_LADDER whose recall@10 on probe items reaches ``target`` in
    ``attribute``'s subspace graph (the ladder's top if none does). Probes are live items asking
    for their own neighbours, as ``similar`` does; a found item counts when it scores at least
    the exact 10th best (near-duplicate chunks tie). Call under the write lock."""
    from .subspaces import chunks

    graph = index.subspaces.graphs[attribute]
    span = index.subspaces.layout[attribute]
    alive = index.table.live_slots()
    picked = np.sort(np.random.default_rng(len(alive) + attribute).choice(alive, min(probes, len(alive)),
                                                                         replace=False))
    queries = chunks(index.store.rows(picked).astype(np.float32), span)
    best = np.full((len(picked), K), -np.inf, np.float32)
    for slots, vectors in index.store.iter_rows(alive, max(256, (1 << 22) // (span[1] - span[0]))):
        scores = queries @ chunks(vectors, span).T
        scores[slots[None, :] == picked[:, None]] = -np.inf  # a query never finds itself
        joined = np.concatenate([best, scores], axis=1)
        best = np.take_along_axis(joined, np.argpartition(-joined, K - 1, axis=1)[:, :K], axis=1)
    tenth = best.min(axis=1) - TIE
    beam = graph.beam
    chosen = SIMILAR_LADDER[-1]
    for count in SIMILAR_LADDER:
        if subspace_recall(graph, queries, picked, tenth, count) >= target:
            chosen = count
            break
    graph.set_beam(beam)
    return chosen


def subspace_recall(graph: ProjectedGraph, queries: np.ndarray, own: np.ndarray, tenth: np.ndarray,
                    beam: int) -> float:
    """Share of each probe's top 10 (itself excluded) scoring at least its exact 10th best, on the
    path ``similar`` takes: the native walk from the item itself, else hnswlib at that ef."""
    good = 0
    graph.set_beam(beam)
    for q, slot, floor in zip(queries, own.tolist(), tenth):
        if graph.walk is not None:
            scores = graph.walk.search(q, max(beam, K + 1), K, slot, slot)[1]
        else:
            try:
                labels, distance = graph.candidates(q[None], K + 1, 1)
            except RuntimeError:  # fewer reachable nodes than asked
                continue
            scores = (1.0 - distance[0])[labels[0] != slot][:K]
        good += int((np.asarray(scores) >= floor).sum())
    return good / (K * len(queries))

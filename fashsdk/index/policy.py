"""When the index has a graph, when it is rebuilt, and how a build lays it out.

- While the catalog is small enough that scanning every vector beats a graph walk (about
  EXACT_MAX_VALUES stored values) there is no graph and every search is exact.
- The first time it grows past that, the projection is fitted on (a sample of) the live
  items and the graph is built, inserting items grouped by attribute combination.
- Items written later are projected with the stored projection. The projection is
  refitted and the graph rebuilt when at least as many items were written since the build
  as the catalog held then AND they lose clearly more energy to the projection than the
  fit sample did (the catalog drifted); rebuilding costs about as much as the writes that
  triggered it, so the amortised cost of a write stays bounded.
- If removals shrink the catalog to half the exact-scan size, the graph is dropped.
- Graphs of LAYOUT_MIN_NODES or more are renumbered for memory locality after a build.
- After a build (and ``optimize``) the candidate count per query is measured on probe queries
  to reach a recall target (calibration.py), unless the caller fixed ``ef_search``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .calibration import MIN_CALIBRATED_ITEMS
from .calibration import calibrate as measured_count
from .graph import DEFAULT_PARAMS, GraphParams, ProjectedGraph, candidate_count, locality_order
from .native_walk import MIN_WALK_NODES, walk_for
from .projection import fit_projection

if TYPE_CHECKING:
    from .catalog_index import CatalogIndex

log = logging.getLogger("fashsdk")
EXACT_MAX_VALUES = 1 << 19  # items x dim below which an exact scan beats the graph (benchmarks.search)
FIT_SAMPLE = 32768
REFIT_WRITES = 1.0  # items written since the build, relative to the catalog size then
REFIT_DRIFT = 1.5
REFIT_SLACK = 1e-4
LAYOUT_MIN_NODES = 1 << 16  # smaller graphs mostly stay in cache: renumbering gains nothing there
LAYOUT_PROBES = 32  # queries whose results must survive the renumbering unchanged


def exact_limit(index: "CatalogIndex", dim: int | None = None) -> int:
    """Largest catalog scanned exactly in a space of ``dim`` (default: the full vectors)."""
    if index.exact_max_items is not None:
        return index.exact_max_items
    return EXACT_MAX_VALUES // (dim or index.dim)


def maintain(index: "CatalogIndex") -> None:
    """Build, refit or drop the graphs per the rules above (write lock held)."""
    n, limit = len(index.table), exact_limit(index)
    graph = index.graph
    if graph is None:
        if n > limit:
            build(index)
    elif n <= limit // 2:
        index.graph = None
        index.partitions.clear()
    elif graph.drift_count and graph.drift_count >= REFIT_WRITES * graph.built_count:
        drift = graph.drift_sum / graph.drift_count
        if drift > REFIT_DRIFT * graph.projection.fit_residual + REFIT_SLACK:
            build(index)
    for a in list(index.subspaces.graphs):
        span = index.subspaces.layout[a]
        if n <= exact_limit(index, span[1] - span[0]) // 2:
            del index.subspaces.graphs[a]
    set_beam(index)


def candidates(index: "CatalogIndex", want: int) -> int:
    """Full-graph candidates for a query keeping ``want``: the index's ef_search (at least ``want``),
    else the count calibrated at build time, else the size rule (graph.candidate_count), which
    both keep at least 3 x want; at most the catalog."""
    if index.ef_search is not None:  # the caller's count, taken as hnswlib takes its ef (at least what is kept)
        return min(max(index.ef_search, want), len(index.table))
    graph = index.graph
    base = graph.calibrated if graph is not None else None
    return min(candidate_count(len(index.table), want, index.dim, base), len(index.table))


def set_beam(index: "CatalogIndex") -> None:
    """The graph's beam for the common query (k=10, one item excluded)."""
    if index.graph is not None:
        index.graph.set_beam(candidates(index, 11))


def attach_walk(index: "CatalogIndex") -> bool:
    """Give the graph a native walk (native_walk) if it has none and can use one: full float32
    vectors in the graph, and a catalog large enough to be calibrated. True if one was made."""
    graph = index.graph
    if graph is None or graph.walk is not None or not graph.projection.identity or index.precision != "float32" \
            or len(index.table) <= MIN_CALIBRATED_ITEMS:
        return False
    graph.walk = walk_for(graph, index.store.data, index.table.alive)
    return graph.walk is not None


def attach_side_walks(index: "CatalogIndex") -> None:
    """Native walks for the per-value graphs (int8 codes, re-ranked on the float32 store, else their
    own vectors) and the subspace graphs (float32 codes: an attribute's chunks hold near-duplicates
    whose differences int8 erases, recall@10 0.95 against 0.998 at the same beam) that lack one
    and are big enough."""
    exact = index.store.data if index.precision == "float32" else None
    for graph in index.partitions.graphs.values():
        if graph.walk is None and graph.count >= MIN_WALK_NODES:
            graph.walk = walk_for(graph, exact, index.table.alive)
    for graph in index.subspaces.graphs.values():
        if graph.walk is None and graph.count >= MIN_WALK_NODES:
            graph.walk = walk_for(graph, None, index.table.alive, float_codes=True)


def calibrate(index: "CatalogIndex") -> None:
    """Attach a native walk where possible, then measure the candidate count that reaches the
    recall target on the path searches take (calibration.py), unless it was measured on this
    same walk and node count."""
    graph = index.graph
    if graph is None:
        return
    fresh = attach_walk(index)
    attach_side_walks(index)
    if fresh or graph.calibrated is None or graph.calibrated_nodes != graph.count:
        graph.calibrated, graph.calibrated_nodes = measured_count(index), graph.count
        set_beam(index)


def build(index: "CatalogIndex") -> None:
    """Fit the projection and build the full-vector graph from the live items."""
    alive = index.table.live_slots()
    log.info("building the search graph over %d items", len(alive))
    sample = alive
    rows = min(FIT_SAMPLE, max(8192, (1 << 25) // index.dim))  # 8k rows of 4080-d fit 128 dims well
    if len(alive) > rows:
        sample = np.sort(np.random.default_rng(len(alive)).choice(alive, rows, replace=False))
    projection = fit_projection(index.store.rows(sample), index.projection_dim)
    params = GraphParams(index.M or DEFAULT_PARAMS.M, index.ef_construction or DEFAULT_PARAMS.ef_construction)
    graph = ProjectedGraph(projection, index.store.capacity, params)
    graph.built_count = len(alive)
    alive = alive[locality_order(index.table.current_codes(alive))]
    for chunk, vectors in index.store.iter_rows(alive, max(256, (1 << 23) // index.dim)):
        graph.add(vectors, chunk, index.threads, track_drift=False)
    index.graph = graph
    index.partitions.clear()  # rebuilt on demand over the same items
    lay_out(index)
    calibrate(index)


def lay_out(index: "CatalogIndex") -> bool:
    """Renumber the graph breadth-first within attribute combinations (graph_layout) when it is
    large and nodes were appended since the last time; False when nothing was done."""
    graph = index.graph
    if graph is None or graph.count < LAYOUT_MIN_NODES or graph.laid_out == graph.count:
        return False

    def combination_of(labels: np.ndarray) -> np.ndarray:
        codes = index.table.current_codes(labels.astype(np.int64))
        return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)

    alive = index.table.live_slots()
    probes = alive[np.random.default_rng(len(alive)).choice(len(alive), min(LAYOUT_PROBES, len(alive)), replace=False)]
    return graph.relayout(combination_of, index.store.rows(np.sort(probes)))

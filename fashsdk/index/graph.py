"""Stage one of a search: an hnswlib graph over the projected vectors, giving candidates.

The graph holds W^T x (p dims, inner product) under the index's own slot numbers as labels,
so a candidate is directly a row of the full-vector store. Removing marks the label
deleted; adding a reused slot updates that graph node in place (hnswlib's addPoint on an
existing label), so churn does not grow the graph. Each batch is inserted grouped by
attribute combination (``locality_order``), so graph neighbours lie near each other in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .native_walk import NativeWalk
from .projection import Projection

ADD_BATCH = 65536  # rows projected at once while building
ORDER_BLOCK = 16384  # rows grouped by attribute combination before insertion (locality_order)


@dataclass(frozen=True)
class GraphParams:
    M: int
    ef_construction: int


# M and efConstruction at every size: larger M changed recall by < 0.002 at 100k, efC 150 is
# where recall stops paying for build time (docs/performance.md, "Graph parameters").
DEFAULT_PARAMS = GraphParams(16, 150)


def candidate_count(n: int, want: int, dim: int, base: int | None = None) -> int:
    """How many graph candidates a query asks for (hnswlib's ef; the re-rank's input).

    Manipulated queries sit far from every item, so scores are flat near the top and the
    graph must return more candidates than k. ``base`` (the index's ef_search, else the count
    its build measured: fashsdk.index.calibration) overrides the size rule, which only serves
    graphs that were never calibrated (docs/performance.md, "Candidate counts"); the count is
    at least 3 x want either way.
    """
    if base is None:
        wide = dim >= 1024
        if n <= 20_000:
            base = 64
        elif n <= 150_000:
            base = 64 if wide else 96
        else:
            base = 96 if wide else 224
    return max(base, 3 * want, want + 8)


def locality_order(codes: np.ndarray, block: int = ORDER_BLOCK) -> np.ndarray:
    """A permutation of the rows that sorts each block of ``block`` rows by attribute
    combination (the attributes' current values, in schema order), keeping blocks in place.

    hnswlib lays nodes out in insertion order, and items of one combination sit close
    together in the embedding, so inserting them next to each other makes the graph's
    neighbours neighbours in memory too; inserting whole clusters in a row weakens the graph,
    so the sort stays within blocks (block sizes measured in docs/performance.md).
    """
    order = np.arange(len(codes))
    for start in range(0, len(codes), block):
        part = codes[start:start + block]
        keys = tuple(part[:, a] for a in range(part.shape[1] - 1, -1, -1))  # lexsort: last key is primary
        order[start:start + len(part)] = start + np.lexsort(keys)
    return order


class ProjectedGraph:
    def __init__(self, projection: Projection, capacity: int, params: GraphParams) -> None:
        import hnswlib

        self.projection = projection
        self.params = params
        self.graph = hnswlib.Index(space="ip", dim=projection.out_dim)
        self.graph.init_index(max_elements=max(capacity, 1), M=params.M, ef_construction=params.ef_construction,
                              allow_replace_deleted=False)
        self.graph.set_num_threads(1)
        self.beam = 16  # hnswlib's ef: queries ask k = max(wanted, candidate count), and it uses max(ef, k)
        self.graph.set_ef(self.beam)
        self.drift_sum = 0.0  # residual energy summed over items added after the fit
        self.drift_count = 0
        self.built_count = 0  # live items when the graph was built
        self.laid_out = 0  # nodes when the graph was last renumbered for locality (graph_layout)
        self.calibrated: int | None = None  # candidates per query measured to reach the recall target
        self.calibrated_nodes = 0  # graph nodes when it was measured
        self.walk: NativeWalk | None = None  # a snapshot for the C walk (native_walk); writes drop it

    @classmethod
    def load(cls, projection: Projection, path: str, capacity: int, params: GraphParams) -> "ProjectedGraph":
        """Only call on a file whose checksum the caller verified: hnswlib trusts its input."""
        import hnswlib

        self = cls.__new__(cls)
        self.projection, self.params = projection, params
        self.graph = hnswlib.Index(space="ip", dim=projection.out_dim)
        self.graph.load_index(os.fsencode(path), max_elements=max(capacity, 1))  # bytes: non-UTF-8 paths too
        self.graph.set_num_threads(1)
        self.beam = 16
        self.graph.set_ef(self.beam)
        self.drift_sum, self.drift_count, self.built_count, self.laid_out = 0.0, 0, 0, 0
        self.calibrated, self.calibrated_nodes = None, 0
        self.walk = None
        return self

    @property
    def count(self) -> int:
        """Nodes in the graph, deleted ones included."""
        return int(self.graph.get_current_count())

    def set_beam(self, ef: int) -> None:
        """hnswlib's ef for queries that want few results: they then ask k = wanted, and skip
        returning and sorting the whole beam (call under the index's write lock: ef is shared)."""
        if ef != self.beam:
            self.graph.set_ef(ef)
            self.beam = ef

    def ask(self, count: int, want: int) -> int:
        """The k to pass hnswlib for ``count`` candidates of which the best ``want`` are kept."""
        return want if count <= self.beam else count

    def reserve(self, needed: int) -> None:
        """Room for ``needed`` nodes (labels are slots and may be larger: hnswlib maps them)."""
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, 2 * self.graph.get_max_elements()))

    def add(self, vectors: np.ndarray, slots: np.ndarray, threads: int, track_drift: bool = True) -> None:
        """Project and insert (or update in place) ``slots``; ``vectors`` (n, D) float32."""
        self.walk = None
        self.reserve(self.count + len(slots))
        for s in range(0, len(slots), ADD_BATCH):
            chunk = np.asarray(vectors[s:s + ADD_BATCH], np.float32)
            projected = self.projection.apply(chunk)
            if track_drift:
                self.drift_sum += float(self.projection.residuals(chunk, projected).sum())
                self.drift_count += len(chunk)
            self.graph.add_items(projected, slots[s:s + ADD_BATCH], num_threads=threads)

    def relayout(self, groups_of_labels: Callable[[np.ndarray], np.ndarray] | None, probes: np.ndarray) -> bool:
        """Renumber the graph's nodes for memory locality (fashsdk.index.graph_layout); ``probes``
        (Q, D) full vectors whose results must not change. False (graph kept) if hnswlib's
        state did not round-trip. Needs about three copies of the graph in memory meanwhile."""
        from .graph_layout import relaid

        fresh = relaid(self.graph, groups_of_labels, self.projection.apply(probes))
        self.walk = None
        if fresh is None:
            return False
        fresh.set_num_threads(1)
        fresh.set_ef(self.beam)
        self.graph = fresh
        self.laid_out = self.count
        return True

    def remove(self, slots: np.ndarray) -> None:
        self.walk = None
        for s in slots.tolist():
            self.graph.mark_deleted(s)

    def candidates(self, queries: np.ndarray, count: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(Q, count) slots and their projected inner-product *distances* (1 - score), best
        first; raises RuntimeError when fewer are reachable (hnswlib's own check)."""
        labels, distances = self.graph.knn_query(self.projection.apply(queries), k=count, num_threads=threads)
        return labels.view(np.int64), distances  # labels are slots < 2**63: a free reinterpretation

    def save(self, path: str) -> None:
        self.graph.save_index(os.fsencode(path))  # bytes: non-UTF-8 paths too

    def nbytes(self) -> int:
        """Graph memory as hnswlib lays it out: level 0 links + vector + label per node, plus
        upper-level links (about 1/M of nodes) and the projection matrix."""
        p, M, n = self.projection.out_dim, self.params.M, self.count
        level0 = 2 * M * 4 + 4 + 4 * p + 8
        upper = (M * 4 + 4) * n / max(M - 1, 1)
        matrix = 0 if self.projection.matrix is None else self.projection.matrix.nbytes
        return int(n * level0 + upper + matrix)

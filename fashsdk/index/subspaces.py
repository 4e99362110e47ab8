"""Per-attribute subspaces for conditional similarity ("similar with respect to colour only").

The embedding's chunk of attribute a, re-normalised, is that attribute's own space (the
papers' ADDE-C). Small catalogs are scanned exactly; above EXACT_MAX_VALUES stored values
each attribute gets an hnswlib graph over its chunks, built the first time ``similar`` asks
for it (or ahead, by ``CatalogIndex.prepare_similar``), kept up to date on every write and
saved with the index.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .graph import DEFAULT_PARAMS, ProjectedGraph
from .projection import Projection

# The beam of a subspace graph until calibration.similar_beam measures one for the catalog (and of
# graphs saved before it did): on the demo catalog's 64-d subspaces ef 48 kept recall@10 of ef 96
# (docs/performance.md, "Conditional similarity").
SIMILAR_BEAM = 48


def chunks(vectors: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """(n, d_a) float32 unit rows: one attribute's slice of full vectors, re-normalised."""
    part = np.ascontiguousarray(vectors[:, span[0]:span[1]], np.float32)
    return part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)


class Subspaces:
    def __init__(self, layout: Sequence[tuple[int, int]], threads: int) -> None:
        self.layout = [(int(a), int(b)) for a, b in layout]
        self.threads = threads
        self.graphs: dict[int, ProjectedGraph] = {}

    def build(self, attribute: int, batches: Iterable[tuple[np.ndarray, np.ndarray]], capacity: int) -> None:
        """The attribute's graph from (slots, full vectors) batches of the live items."""
        span = self.layout[attribute]
        graph = ProjectedGraph(Projection(None, capacity, 0.0, span[1] - span[0]), max(capacity, 1), DEFAULT_PARAMS)
        for slots, vectors in batches:
            graph.add(chunks(vectors, span), slots, self.threads, track_drift=False)
        self.adopt(attribute, graph)

    def adopt(self, attribute: int, graph: ProjectedGraph, beam: int = SIMILAR_BEAM) -> None:
        graph.set_beam(beam)
        self.graphs[attribute] = graph

    def add(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        for a, graph in self.graphs.items():
            graph.add(chunks(vectors, self.layout[a]), slots, self.threads, track_drift=False)

    def remove(self, slots: np.ndarray) -> None:
        for graph in self.graphs.values():
            graph.remove(slots)

    def clear(self) -> None:
        self.graphs.clear()

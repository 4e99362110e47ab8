"""Per-value graphs for ``where``-filtered search at catalog scale.

A filter such as {"gender": "Women"} keeps the items whose current value is one of the
allowed ones. The graph for (attribute, value) holds exactly those items, so a filtered
query walks the graphs of the allowed values of the filter's most selective attribute and
checks the other attributes on the candidates only; nothing costs O(catalog) per query.
Chosen by measurement over hnswlib's own filter callback (a Python call, GIL included, per
visited node) and over-fetching from the full graph (low recall for selective filters):
``python -m benchmarks.tasks`` measures all of them in one run (docs/performance.md, "Filters").

A value's graph is built the first time a filter needs it (about a second per 10k 256-d
items on 2 cores; ``CatalogIndex.prepare_filters`` builds them ahead), then kept up to date
on every write; it is derived data, so it is rebuilt after loading rather than saved.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .graph import DEFAULT_PARAMS, ProjectedGraph
from .projection import Projection

FILTER_SCAN_VALUES = 1 << 16  # selections up to this many stored values are scanned exactly instead
MAX_FILTER_CANDIDATES = 4096  # beyond this many candidates per value graph, an exact scan is cheaper


class Partitions:
    def __init__(self, dim: int, threads: int) -> None:
        self.dim, self.threads = dim, threads
        self.graphs: dict[tuple[int, int], ProjectedGraph] = {}

    def missing(self, attribute: int, values: frozenset[int]) -> list[int]:
        return sorted(v for v in values if (attribute, v) not in self.graphs)

    def build(self, attribute: int, value: int, batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int) -> None:
        """The graph of one (attribute, value) from (slots, vectors) batches of its ``size`` live items."""
        graph = ProjectedGraph(Projection(None, size, 0.0, self.dim), max(size, 1), DEFAULT_PARAMS)
        for slots, vectors in batches:
            graph.add(vectors, slots, self.threads, track_drift=False)
        self.graphs[(attribute, value)] = graph

    def add(self, slots: np.ndarray, current: np.ndarray, vectors: np.ndarray) -> None:
        for (a, v), graph in self.graphs.items():
            rows = np.flatnonzero(current[:, a] == v)
            if len(rows):
                graph.add(vectors[rows], slots[rows], self.threads, track_drift=False)

    def remove(self, slots: np.ndarray, current: np.ndarray) -> None:
        for (a, v), graph in self.graphs.items():
            graph.remove(slots[current[:, a] == v])

    def clear(self) -> None:
        self.graphs.clear()

    def candidates(self, attribute: int, live: dict[int, int], query: np.ndarray,
                   count: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``count`` nearest items from each allowed value's graph (``live``: value -> its
        live items): (slots, scores), unordered."""
        slots, scores = [], []
        for v in sorted(live):
            graph = self.graphs[(attribute, v)]
            if live[v] <= 0:
                continue
            if graph.walk is not None:  # native_walk: exact scores of the best, fewer if deletions hide some
                found, exact = graph.walk.search(query[0], count, min(count, live[v]))
                slots.append(np.array(found, np.int64))
                scores.append(exact)
                continue
            labels, distances = graph.graph.knn_query(query, k=min(count, live[v]), num_threads=1)
            slots.append(labels[0].view(np.int64))
            scores.append(1.0 - distances[0])
        if not slots:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(slots), np.concatenate(scores)

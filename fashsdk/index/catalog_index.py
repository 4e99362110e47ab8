"""A persistent, id-keyed catalog index: full vectors + attribute codes, searched in two stages.

An hnswlib graph over a compact projection of the vectors (projection.py, graph.py)
proposes candidates, re-ranked exactly on the full vectors (vector_store.py); up to 512-d
the projection is the identity, so the graph's scores are already exact. Small catalogs
have no graph and are scanned exactly; when graphs are built, refitted or dropped is
policy.py's job. ``where`` filters walk per-value graphs (partitions.py); ``similar``
searches one attribute's subspace (subspaces.py). This class holds the state and the lock;
the read paths are in reads.py, the write paths in writes.py, items and the "stored label,
else predicted" rule in items.py, saving and loading in persistence.py.

Items are keyed by the catalog's own ids (strings; ints are accepted and stringified).
Searches run concurrently with each other; writes take a write lock, so every result
reflects one committed state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import QueryError
from ..system import usable_cores
from . import policy, reads, writes
from .graph import ProjectedGraph
from .inputs import checked_codes, checked_layout, checked_query
from .items import ItemTable, id_list, normalize_id
from .partitions import Partitions
from .reads import Filter, Hits
from .rwlock import ReadWriteLock
from .subspaces import Subspaces
from .vector_store import PRECISIONS, VectorStore


class CatalogIndex:
    """Vectors (L2-normalised, inner-product space) plus attribute codes, keyed by id.

    Args:
        dim, num_attributes: vector width and number of attributes per item.
        layout: each attribute's [start, stop) slice of the vector (for ``similar``);
            None splits ``dim`` evenly when it divides.
        M, ef_construction: hnswlib graph settings; None picks them.
        ef_search: graph candidates per query (hnswlib's ef); None picks it by size and k.
        capacity: initial number of slots (grows as needed).
        precision: "float32" or "float16" storage of the full vectors.
        projection_dim: width of the projection the graph searches; None picks it.
        exact_max_items: catalogs up to this size are scanned exactly; None derives it.
        threads: threads for building graphs and batched searches.
    """

    def __init__(self, dim: int, num_attributes: int, *, layout: Sequence[tuple[int, int]] | None = None,
                 M: int | None = None, ef_construction: int | None = None, ef_search: int | None = None,
                 capacity: int = 1024, info: dict[str, Any] | None = None, precision: str = "float32",
                 projection_dim: int | None = None, exact_max_items: int | None = None,
                 threads: int | None = None) -> None:
        if dim < 1 or num_attributes < 1:
            raise ValueError("dim and num_attributes must be positive")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        for name, value in (("M", M), ("ef_construction", ef_construction), ("ef_search", ef_search),
                            ("projection_dim", projection_dim), ("exact_max_items", exact_max_items)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        if M is not None and not 2 <= M <= 256:
            raise ValueError(f"M must be between 2 and 256, got {M}")
        self.dim, self.num_attributes, self.precision = dim, num_attributes, precision
        self.layout = checked_layout(layout, dim, num_attributes)
        self.M, self.ef_construction, self._ef_search = M, ef_construction, ef_search
        self.projection_dim, self.exact_max_items = projection_dim, exact_max_items
        self.threads = threads or usable_cores()
        self.info = dict(info or {})
        self.store = VectorStore(dim, max(int(capacity), 1), precision)
        self.table = ItemTable(num_attributes, max(int(capacity), 1))
        self.graph: ProjectedGraph | None = None
        self.partitions = Partitions(dim, self.threads)
        self.subspaces = Subspaces(self.layout or [], self.threads)
        self.lock = ReadWriteLock()
        self.version = 0  # counts writes: caches derived from the items (outfit completion) compare it

    @property
    def ef_search(self) -> int | None:
        """Graph candidates per query (hnswlib's ef); None picks it by catalog size and k."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int | None) -> None:
        """Takes effect for the next search: the graph's beam follows (below it, a lower count
        would otherwise still walk the old beam)."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ValueError(f"ef_search must be a non-negative integer or None, got {value!r}")
        with self.lock.write():
            self._ef_search = None if value is None else int(value)
            policy.set_beam(self)

    # ---- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, item_id: object) -> bool:
        try:
            return normalize_id(item_id) in self.table
        except QueryError:
            return False

    @property
    def ids(self) -> list[str]:
        with self.lock.read():
            return [i for i in self.table.ids if i is not None]

    @property
    def mode(self) -> str:
        """"two-stage" (graph + exact re-rank) or "exact" (scan; small catalogs)."""
        return "exact" if self.graph is None else "two-stage"

    def get(self, item_id: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector, label codes, predicted codes) of an indexed item."""
        with self.lock.read():
            slot = self.table.slot_of(normalize_id(item_id))
            return self.store.rows(slot).copy(), self.table.codes[slot].copy(), self.table.predicted[slot].copy()

    def get_many(self, ids: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors (n, D), label codes (n, A), predicted codes (n, A)) of indexed items, one locked read."""
        keys = id_list(ids)
        with self.lock.read():
            table = self.table
            try:  # one dict lookup per id (a label rerank reads hundreds per query)
                slots = np.fromiter(map(table.slot.__getitem__, keys), np.int64, len(keys))
            except KeyError:
                slots = np.array([table.slot_of(k) for k in keys], np.int64)  # raises, naming the id
            return self.store.rows(slots), table.codes[slots], table.predicted[slots]

    def hits_of(self, ids: Sequence[object]) -> list[Hits]:
        """Indexed items as one-row Hits each (score 1): their codes and predictions, one locked read."""
        keys = id_list(ids)
        with self.lock.read():
            table = self.table
            slots = np.array([table.slot_of(k) for k in keys], np.int64)
            codes, predicted, confidence = table.codes[slots], table.predicted[slots], table.confidence[slots]
        one = np.ones(1, np.float32)
        return [Hits([k], one.copy(), codes[n:n + 1], predicted[n:n + 1], confidence[n:n + 1])
                for n, k in enumerate(keys)]

    def vectors_and_codes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Snapshot of all live items: ids, vectors (n, D) float32, label codes (n, A)."""
        with self.lock.read():
            slots = self.table.live_slots()
            ids = self.table.ids
            return [ids[s] for s in slots.tolist()], self.store.rows(slots), self.table.codes[slots].copy()  # type: ignore[misc]

    def search(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
               where: Filter | None = None, attribute: int | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-k ids and cosine scores per query; ``exclude[i]`` drops one id from query i. Like
        ``hits`` without the label lookups, which cost about as much as a walk of a small graph."""
        found = self._read(queries, k, exact, exclude, where, attribute, labelled=False)
        if len(found) == 1:
            return [found[0].ids], [found[0].scores]
        return [h.ids for h in found], [h.scores for h in found]

    def hits(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
             where: Filter | None = None, attribute: int | None = None) -> list[Hits]:
        """Per query: top-k ids, scores and codes, read under one lock (a concurrent ``remove``
        cannot take a result between the search and the lookup). With ``attribute``, queries
        are (Q, d_a) vectors in that attribute's subspace (conditional similarity)."""
        return self._read(queries, k, exact, exclude, where, attribute, labelled=True)

    def _read(self, queries: np.ndarray, k: int, exact: bool, exclude: Sequence[str | None] | None,
              where: Filter | None, attribute: int | None, labelled: bool) -> list[Hits]:
        queries, k, skip_keys = checked_query(queries, k, exclude, self.dim, self.layout, attribute)
        where = where or {}
        for _ in range(8):  # a concurrent write may drop a lazily built graph between the two locks
            with self.lock.read():
                found = reads.read(self, queries, k, exact, skip_keys, where, attribute, labelled)
            if found is not None:
                return found
            reads.prepare(self, where, attribute, exact)  # the graph it needs is missing: build it
        raise QueryError("the index kept changing during this search; retry")  # pragma: no cover

    def prepare_filters(self, attributes: Iterable[int]) -> None:
        """Build the per-value graphs ``where`` filters on these attributes will walk (else the first
        filtered search on each value builds its own)."""
        with self.lock.write():
            if self.graph is not None:
                sizes = self.table.counts
                reads.build_missing(self, [("partition", a, v) for a in attributes
                                     for v in range(sizes.shape[1] - 1) if sizes[a, v + 1] and (a, v) not in self.partitions.graphs])

    def prepare_similar(self, attributes: Iterable[int]) -> None:
        """Build the subspace graphs ``similar`` on these attributes will walk (saved with the index)."""
        with self.lock.write():
            n = len(self.table)
            reads.build_missing(self, [("subspace", a, 0) for a in attributes if a not in self.subspaces.graphs
                                 and self.layout and n > policy.exact_limit(self, self.layout[a][1] - self.layout[a][0])])

    def stats(self) -> dict[str, Any]:
        """What the index is doing and what it costs: mode, parameters, bytes by part."""
        with self.lock.read():
            used, n = self.table.used, len(self.table)
            graph = self.graph
            ids_bytes = sum(len(i) + 49 for i in self.table.ids if i is not None) + 104 * n  # str objects + dict entries
            side = sum(g.nbytes() for g in (*self.subspaces.graphs.values(), *self.partitions.graphs.values()))
            out: dict[str, Any] = {
                "mode": self.mode, "count": n, "slots": used, "dim": self.dim, "precision": self.precision,
                "exact_max_items": policy.exact_limit(self), "subspace_graphs": sorted(self.subspaces.graphs),
                "partition_graphs": len(self.partitions.graphs),
                "bytes": {"vectors": self.store.nbytes(used), "codes": 4 * used * self.num_attributes,
                          "graph": graph.nbytes() if graph else 0,
                          "walk": graph.walk.nbytes() if graph and graph.walk else 0, "side_graphs": side, "ids_estimate": ids_bytes}}
            if graph is not None:
                proj = graph.projection
                out.update({"projection_dim": proj.out_dim, "fit_count": proj.fit_count,
                            "built_count": graph.built_count, "written_since_build": graph.drift_count,
                            "laid_out_nodes": graph.laid_out, "fit_residual": proj.fit_residual,
                            "M": graph.params.M, "ef_construction": graph.params.ef_construction,
                            "candidates_k10": policy.candidates(self, 11), "calibrated_candidates": graph.calibrated,
                            "walk": "native" if graph.walk is not None else "hnswlib",
                            "drift_residual": graph.drift_sum / graph.drift_count if graph.drift_count else None})
            return out

    # ---- writing -------------------------------------------------------------------
    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Add new items; an id already present (or repeated in ``ids``) is an error.

        ``codes`` are the known labels (-1 = unknown); ``predicted`` the model's own
        reading of each attribute, used as the current value when a label is unknown, and
        ``confidence`` its probability (shown with results that carry a predicted value).
        """
        keys = id_list(ids)
        vectors, codes_arr, predicted_arr = writes.check_items(self, keys, vectors, codes, predicted)
        confidence = writes.checked_confidence(confidence, len(keys), self.num_attributes)
        with self.lock.write():
            present = [k for k in keys if k in self.table]
            if present:
                raise QueryError(f"{len(present)} ids are already indexed (first: {present[:3]}); "
                                 "remove them first or use update()")
            writes.add_locked(self, keys, vectors, codes_arr, predicted_arr, confidence)
            self.version += 1
            policy.maintain(self)

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id; unknown ids are an error and nothing is removed."""
        keys = list(dict.fromkeys(id_list(ids)))
        with self.lock.write():
            self._require_present(keys, "removed")
            writes.remove_locked(self, keys)
            self.version += 1
            policy.maintain(self)

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Replace the vectors and codes of existing ids, atomically for readers."""
        self._replace(ids, vectors, codes, predicted, confidence, upsert=False)

    def upsert(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Add new ids and replace existing ones (vectors and codes), in one atomic write."""
        self._replace(ids, vectors, codes, predicted, confidence, upsert=True)

    def _replace(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None,
                 predicted: np.ndarray | None, confidence: np.ndarray | None, upsert: bool) -> None:
        keys = id_list(ids)
        vectors, codes_arr, predicted_arr = writes.check_items(self, keys, vectors, codes, predicted)
        confidence = writes.checked_confidence(confidence, len(keys), self.num_attributes)
        with self.lock.write():
            if not upsert:
                self._require_present(keys, "updated: add them first")
            writes.remove_locked(self, [k for k in keys if k in self.table])
            writes.add_locked(self, keys, vectors, codes_arr, predicted_arr, confidence)
            self.version += 1
            policy.maintain(self)

    def set_labels(self, ids: Sequence[object], codes: np.ndarray) -> None:
        """Replace the stored labels (-1 = unknown) of existing ids, keeping their vectors."""
        keys = id_list(ids)
        codes_arr = checked_codes(codes, len(keys), self.num_attributes, "codes")
        if len(set(keys)) != len(keys):
            raise QueryError("an id appears more than once in this call")
        with self.lock.write():
            self._require_present(keys, "relabelled")
            slots = np.array([self.table.slot[k] for k in keys], np.int64)
            if self.partitions.graphs:
                self.partitions.remove(slots, self.table.current_codes(slots))
            self.table.set_codes(slots, codes_arr)
            if self.partitions.graphs:
                self.partitions.add(slots, self.table.current_codes(slots), self.store.rows(slots))
            self.version += 1

    def optimize(self) -> bool:
        """Renumber the graph so neighbours sit together in memory; call after bulk adds.

        hnswlib keeps nodes in insertion order, and at a million nodes a query waits on a
        cache miss per visited node; renumbering breadth-first within attribute combinations
        (graph_layout.py) keeps answers identical and walks faster (docs/performance.md).
        Full builds do it themselves. Then measures, on probe queries, how many candidates per
        query reach the recall target at the current size (calibration.py). Blocks readers
        and writers while it runs; returns whether the graph was renumbered.
        """
        with self.lock.write():
            moved = policy.lay_out(self)
            policy.calibrate(self)
            return moved

    def refit(self) -> None:
        """Refit the projection on the current items and rebuild the graph (or drop it if small)."""
        with self.lock.write():
            self.graph = None
            self.partitions.clear()
            policy.maintain(self)

    def _require_present(self, keys: list[str], action: str) -> None:
        missing = [k for k in keys if k not in self.table]
        if missing:
            raise QueryError(f"{len(missing)} ids are not in the index (first: {missing[:3]}); nothing {action}")

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a new generation of files, then switch ``index.json`` to it atomically."""
        from .persistence import save_index

        return save_index(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, trusted_keys: Iterable[str | Path] | None = None) -> "CatalogIndex":
        """Load a saved index; every file's size and sha256 is checked before anything parses it, and
        with trusted keys (``trusted_keys``, else FASHSDK_TRUSTED_KEYS) its signature before that."""
        from ..trust import trusted_keys as read_keys
        from .persistence import load_index

        return load_index(cls, Path(directory), read_keys(trusted_keys))

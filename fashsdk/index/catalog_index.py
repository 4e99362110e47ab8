"""A persistent, id-keyed catalog index: full vectors + attribute codes, searched in two stages.

An hnswlib graph over a compact projection of the vectors (projection.py, graph.py)
proposes candidates, re-ranked exactly on the full vectors (vector_store.py); up to 512-d
the projection is the identity, so the graph's scores are already exact. Small catalogs
have no graph and are scanned exactly; when graphs are built, refitted or dropped is
policy.py's job. ``where`` filters walk per-value graphs (partitions.py); ``similar``
searches one attribute's subspace (subspaces.py). Items, their labels and the "stored label,
else predicted" rule live in items.py; saving and loading in persistence.py.

Items are keyed by the catalog's own ids (strings; ints are accepted and stringified).
Searches run concurrently with each other; writes take a write lock, so every result
reflects one committed state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import QueryError
from ..system import usable_cores
from . import partitions as filtering
from . import policy
from .graph import ProjectedGraph, candidate_count, locality_order
from .items import ItemTable, id_list, normalize_id
from .partitions import Partitions
from .rwlock import ReadWriteLock
from .subspaces import Subspaces, chunks
from .topk import drop_excluded, graph_topk, one_in_graph, scan_slots
from .vector_store import PRECISIONS, VectorStore, best_first

Filter = dict[int, frozenset[int]]  # attribute index -> allowed value codes (AND across attributes)


@dataclass
class Hits:
    """One query's results: ids best first, cosine scores, stored label and predicted codes (k, A)."""

    ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray


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
        self.layout = _checked_layout(layout, dim, num_attributes)
        self.M, self.ef_construction, self.ef_search = M, ef_construction, ef_search
        self.projection_dim, self.exact_max_items = projection_dim, exact_max_items
        self.threads = threads or usable_cores()
        self.info = dict(info or {})
        self.store = VectorStore(dim, max(int(capacity), 1), precision)
        self.table = ItemTable(num_attributes, max(int(capacity), 1))
        self.graph: ProjectedGraph | None = None
        self.partitions = Partitions(dim, self.threads)
        self.subspaces = Subspaces(self.layout or [], self.threads)
        self.lock = ReadWriteLock()

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
            slots = np.array([self.table.slot_of(k) for k in keys], np.int64)
            return self.store.rows(slots), self.table.codes[slots], self.table.predicted[slots]

    def vectors_and_codes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Snapshot of all live items: ids, vectors (n, D) float32, label codes (n, A)."""
        with self.lock.read():
            slots = self.table.live_slots()
            ids = self.table.ids
            return [ids[s] for s in slots.tolist()], self.store.rows(slots), self.table.codes[slots].copy()  # type: ignore[misc]

    def search(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
               where: Filter | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-k ids and cosine scores per query; ``exclude[i]`` drops one id from query i."""
        hits = self.hits(queries, k, exact=exact, exclude=exclude, where=where)
        return [h.ids for h in hits], [h.scores for h in hits]

    def hits(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
             where: Filter | None = None, attribute: int | None = None) -> list[Hits]:
        """Per query: top-k ids, scores and codes, read under one lock (a concurrent ``remove``
        cannot take a result between the search and the lookup). With ``attribute``, queries
        are (Q, d_a) vectors in that attribute's subspace (conditional similarity)."""
        queries, k, skip_keys = self._check_query(queries, k, exclude, attribute)
        for _ in range(8):  # a concurrent write may drop a lazily built graph between the two locks
            self._prepare(where, attribute, exact)
            with self.lock.read():
                found = self._read(queries, k, exact, skip_keys, where or {}, attribute)
                if found is not None:
                    return found
        raise QueryError("the index kept changing during this search; retry")  # pragma: no cover

    def _check_query(self, queries: np.ndarray, k: int, exclude: Sequence[str | None] | None,
                     attribute: int | None) -> tuple[np.ndarray, int, list[str | None] | None]:
        queries = _float_matrix(queries, "query vectors")
        width = self.dim
        if attribute is not None:
            if self.layout is None:
                raise QueryError("this index has no attribute layout, so it cannot search one attribute's subspace")
            if not 0 <= attribute < self.num_attributes:
                raise QueryError(f"attribute index {attribute} is outside 0..{self.num_attributes - 1}")
            width = self.layout[attribute][1] - self.layout[attribute][0]
        if queries.ndim != 2 or queries.shape[1] != width:
            raise QueryError(f"query vectors have shape {queries.shape}, the index searches {width}-d vectors here")
        if not np.isfinite(queries).all():  # cheaper than a float64 sum, and no overflow warnings
            raise QueryError("query vectors contain NaN or infinity")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        skip_keys = None
        if exclude is not None:
            if len(exclude) != len(queries):
                raise QueryError(f"exclude has {len(exclude)} entries for {len(queries)} queries; give one per query")
            skip_keys = [None if e is None else normalize_id(e) for e in exclude]
        return queries, int(k), skip_keys

    def _read(self, queries: np.ndarray, k: int, exact: bool, skip_keys: list[str | None] | None, where: Filter,
              attribute: int | None) -> list[Hits] | None:
        """The read path under the read lock; None when a lazily built graph it needs is missing."""
        table = self.table
        n = len(table)
        if n == 0:
            raise QueryError("the index is empty: add catalog items before searching")
        skip = None if skip_keys is None else [-1 if e is None else table.slot.get(e, -1) for e in skip_keys]
        want = min(k + (1 if skip is not None and max(skip) >= 0 else 0), n)
        graph = self.graph
        if attribute is None and not where and len(queries) == 1 and not exact and graph is not None \
                and graph.projection.identity and self.precision == "float32":
            count = min(candidate_count(n, want, self.dim, self.ef_search), n)
            fast = one_in_graph(graph, queries, want, count, k, -1 if skip is None else skip[0])
            rows, scores = fast if fast is not None else drop_excluded(*self._scan(queries, want, None), skip, k)
        elif where or attribute is not None:
            found = [self._one(q[None], want, exact, where, attribute) for q in queries]
            if any(f is None for f in found):
                return None
            rows, scores = [], []
            for qi, (s, v) in enumerate(found):  # type: ignore[misc]
                r, sc = drop_excluded(s, v, None if skip is None else [skip[qi]], k)
                rows += r
                scores += sc
        else:
            rows, scores = drop_excluded(*self._slots(queries, want, exact, n), skip, k)
        ids = table.ids
        return [Hits([ids[s] for s in row], sc, table.codes[row], table.predicted[row])  # type: ignore[misc]
                for row, sc in zip(rows, scores)]

    def _slots(self, queries: np.ndarray, want: int, exact: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
        graph = self.graph
        if not exact and graph is not None:
            count = min(candidate_count(n, want, self.dim, self.ef_search), n)
            exact_scores = graph.projection.identity and self.precision == "float32"
            # one thread per call for single queries (callers parallelise); batches use the build threads
            found = graph_topk(graph, None if exact_scores else self.store, queries, want, count,
                               1 if len(queries) < 64 else self.threads)
            if found is not None:
                return found
        return self._scan(queries, want, None)

    def _scan(self, queries: np.ndarray, want: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        alive = self.table.alive if mask is None else mask
        return self.store.scan_topk(queries, self.table.used, alive, want)

    def _one(self, query: np.ndarray, want: int, exact: bool, where: Filter,
             attribute: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """One query with a filter and/or in a subspace: (1, <=want) slots and scores."""
        if attribute is not None:
            return self._similar_one(query, want, exact, where, attribute)
        counts = {a: self.table.count_of(a, allowed) for a, allowed in where.items()}
        pivot = min(counts, key=counts.__getitem__)
        if exact or self.graph is None or counts[pivot] * self.dim <= filtering.FILTER_SCAN_VALUES:
            return self._scan_selected(query, want, where, None)
        if self.partitions.missing(pivot, where[pivot]):
            return None
        live = {v: self.table.count_of(pivot, frozenset([v])) for v in where[pivot]}
        rest = {a: s for a, s in where.items() if a != pivot}
        count = candidate_count(counts[pivot], want, self.dim, self.ef_search)
        while True:
            try:
                slots, scores = self.partitions.candidates(pivot, live, query, count)
            except RuntimeError:  # fewer reachable nodes than asked: scan the selection instead
                return self._scan_selected(query, want, where, None)
            if rest:
                keep = _matches(self.table.current_codes(slots), rest)
                slots, scores = slots[keep], scores[keep]
            if len(slots) >= want or count >= max(live.values()):
                return best_first(slots[None], scores[None], min(want, len(slots)))
            count *= 4
            if count > filtering.MAX_FILTER_CANDIDATES:
                return self._scan_selected(query, want, where, None)

    def _scan_selected(self, query: np.ndarray, want: int, where: Filter,
                       span: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-want among the live items that pass ``where`` (in a subspace when ``span``)."""
        slots = np.flatnonzero(self.table.matching(where)) if where else self.table.live_slots()
        if not len(slots):
            return np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32)
        vectors = self.store.rows(slots)
        if span is not None:
            vectors = chunks(vectors, span)
        return scan_slots(vectors, slots, query, want)

    def _similar_one(self, query: np.ndarray, want: int, exact: bool, where: Filter,
                     attribute: int) -> tuple[np.ndarray, np.ndarray] | None:
        span = self.layout[attribute]  # type: ignore[index]
        n = len(self.table)
        graph = self.subspaces.graphs.get(attribute)
        selected = min((self.table.count_of(a, s) for a, s in where.items()), default=n)
        if exact or n <= policy.exact_limit(self, span[1] - span[0]) or selected * (span[1] - span[0]) <= filtering.FILTER_SCAN_VALUES:
            return self._scan_selected(query, want, where, span)
        if graph is None:
            return None
        count = min(candidate_count(n, want, span[1] - span[0], self.ef_search), n)
        while True:
            found = graph_topk(graph, None, query, count, count, 1)
            if found is None:
                return self._scan_selected(query, want, where, span)
            slots, scores = found[0][0], found[1][0]
            if where:
                keep = _matches(self.table.current_codes(slots), where)
                slots, scores = slots[keep], scores[keep]
            if len(slots) >= want or count >= n:
                return slots[None, :want], scores[None, :want]
            count *= 4
            if count > filtering.MAX_FILTER_CANDIDATES:
                return self._scan_selected(query, want, where, span)

    def _prepare(self, where: Filter | None, attribute: int | None, exact: bool) -> None:
        """Build, under the write lock, the partition or subspace graphs this search will walk."""
        if exact:
            return
        with self.lock.read():
            todo = self._missing(where, attribute)
        if todo:
            with self.lock.write():
                self._build_missing(self._missing(where, attribute))

    def _missing(self, where: Filter | None, attribute: int | None) -> list[tuple[str, int, int]]:
        n = len(self.table)
        if attribute is not None:
            span = self.layout[attribute]  # type: ignore[index]
            big = n > policy.exact_limit(self, span[1] - span[0])
            return [("subspace", attribute, 0)] if big and attribute not in self.subspaces.graphs else []
        if not where or self.graph is None:
            return []
        counts = {a: self.table.count_of(a, allowed) for a, allowed in where.items()}
        pivot = min(counts, key=counts.__getitem__)
        if counts[pivot] * self.dim <= filtering.FILTER_SCAN_VALUES:
            return []
        return [("partition", pivot, v) for v in self.partitions.missing(pivot, where[pivot])]

    def _build_missing(self, todo: list[tuple[str, int, int]]) -> None:
        step = max(256, (1 << 23) // self.dim)
        live = self.table.live_slots()
        for kind, a, v in todo:
            if kind == "subspace":
                self.subspaces.build(a, self.store.iter_rows(live, step), self.store.capacity)
            else:
                slots = live[self.table.current_codes(live)[:, a] == v]
                self.partitions.build(a, v, self.store.iter_rows(slots, step), len(slots))

    def prepare_filters(self, attributes: Iterable[int]) -> None:
        """Build the per-value graphs ``where`` filters on these attributes will walk (else the first
        filtered search on each value builds its own)."""
        with self.lock.write():
            if self.graph is not None:
                sizes = self.table.counts
                self._build_missing([("partition", a, v) for a in attributes
                                     for v in range(sizes.shape[1] - 1) if sizes[a, v + 1] and (a, v) not in self.partitions.graphs])

    def prepare_similar(self, attributes: Iterable[int]) -> None:
        """Build the subspace graphs ``similar`` on these attributes will walk (saved with the index)."""
        with self.lock.write():
            n = len(self.table)
            self._build_missing([("subspace", a, 0) for a in attributes if a not in self.subspaces.graphs
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
                          "graph": graph.nbytes() if graph else 0, "side_graphs": side, "ids_estimate": ids_bytes}}
            if graph is not None:
                proj = graph.projection
                out.update({"projection_dim": proj.out_dim, "fit_count": proj.fit_count,
                            "built_count": graph.built_count, "written_since_build": graph.drift_count,
                            "laid_out_nodes": graph.laid_out, "fit_residual": proj.fit_residual,
                            "M": graph.params.M, "ef_construction": graph.params.ef_construction,
                            "candidates_k10": min(candidate_count(n, 11, self.dim, self.ef_search), n),
                            "drift_residual": graph.drift_sum / graph.drift_count if graph.drift_count else None})
            return out

    # ---- writing -------------------------------------------------------------------
    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None) -> None:
        """Add new items; an id already present (or repeated in ``ids``) is an error.

        ``codes`` are the known labels (-1 = unknown); ``predicted`` the model's own
        reading of each attribute, used as the current value when a label is unknown.
        """
        keys = id_list(ids)
        vectors, codes_arr, predicted_arr = self._check_items(keys, vectors, codes, predicted)
        with self.lock.write():
            present = [k for k in keys if k in self.table]
            if present:
                raise QueryError(f"{len(present)} ids are already indexed (first: {present[:3]}); "
                                 "remove them first or use update()")
            self._add_locked(keys, vectors, codes_arr, predicted_arr)
            policy.maintain(self)

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id; unknown ids are an error and nothing is removed."""
        keys = list(dict.fromkeys(id_list(ids)))
        with self.lock.write():
            self._require_present(keys, "removed")
            self._remove_locked(keys)
            policy.maintain(self)

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None) -> None:
        """Replace the vectors and codes of existing ids, atomically for readers."""
        keys = id_list(ids)
        vectors, codes_arr, predicted_arr = self._check_items(keys, vectors, codes, predicted)
        with self.lock.write():
            self._require_present(keys, "updated: add them first")
            self._remove_locked(keys)
            self._add_locked(keys, vectors, codes_arr, predicted_arr)
            policy.maintain(self)

    def set_labels(self, ids: Sequence[object], codes: np.ndarray) -> None:
        """Replace the stored labels (-1 = unknown) of existing ids, keeping their vectors."""
        keys = id_list(ids)
        codes_arr = _checked_codes(codes, len(keys), self.num_attributes, "codes")
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

    def optimize(self) -> bool:
        """Renumber the graph so neighbours sit together in memory; call after bulk adds.

        hnswlib keeps nodes in insertion order, and at a million nodes a query waits on a
        cache miss per visited node; renumbering breadth-first within attribute combinations
        (graph_layout.py) keeps answers identical and walks faster (docs/performance.md).
        Full builds do it themselves. Blocks readers and writers while it runs; returns
        whether the graph was renumbered.
        """
        with self.lock.write():
            return policy.lay_out(self)

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

    def _check_items(self, keys: list[str], vectors: np.ndarray, codes: np.ndarray | None,
                     predicted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vectors = _float_matrix(vectors, "vectors")
        if vectors.shape != (len(keys), self.dim):
            raise QueryError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        if not np.isfinite(vectors.sum(dtype=np.float64)):  # no n x D temporary, unlike isfinite().all()
            raise QueryError("vectors contain NaN or infinity")
        codes_arr = _checked_codes(codes, len(keys), self.num_attributes, "codes")
        predicted_arr = codes_arr if predicted is None else _checked_codes(predicted, len(keys), self.num_attributes,
                                                                           "predicted")
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise QueryError(f"id {dup!r} appears more than once in this call")
        return vectors, codes_arr, predicted_arr

    def _add_locked(self, keys: list[str], vectors: np.ndarray, codes: np.ndarray, predicted: np.ndarray) -> None:
        slots = self.table.slots_for(len(keys))
        needed = int(slots.max()) + 1 if len(slots) else 0
        self.table.reserve(needed)
        self.store.reserve(needed)
        self.store.put(slots, vectors)
        self.table.put(keys, slots, codes, predicted)
        current = self.table.current_codes(slots)
        if self.graph is not None:
            order = locality_order(current)
            self.graph.add(np.asarray(vectors)[order], slots[order], self.threads)
        self.subspaces.add(slots, vectors)
        self.partitions.add(slots, current, vectors)

    def _remove_locked(self, keys: list[str]) -> None:
        slots = np.array([self.table.slot[k] for k in keys], np.int64)
        self.partitions.remove(slots, self.table.current_codes(slots))
        self.table.release(keys)
        self.subspaces.remove(slots)
        if self.graph is not None:
            self.graph.remove(slots)

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a new generation of files, then switch ``index.json`` to it atomically."""
        from .persistence import save_index

        return save_index(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path) -> "CatalogIndex":
        """Load a saved index; every file's size and sha256 is checked before anything parses it."""
        from .persistence import load_index

        return load_index(cls, Path(directory))


def _matches(codes: np.ndarray, where: Filter) -> np.ndarray:
    keep = np.ones(len(codes), bool)
    for a, allowed in where.items():
        keep &= np.isin(codes[:, a], np.fromiter(allowed, np.int64, len(allowed)))
    return keep


def _checked_layout(layout: Sequence[tuple[int, int]] | None, dim: int, num_attributes: int) -> list[tuple[int, int]] | None:
    if layout is None:
        if dim % num_attributes:
            return None
        d = dim // num_attributes
        return [(a * d, (a + 1) * d) for a in range(num_attributes)]
    spans = [(int(s), int(e)) for s, e in layout]
    position = 0
    for start, stop in spans:
        if start != position or stop <= start:
            raise ValueError(f"layout {spans} must cover [0, {dim}) in contiguous, non-empty slices")
        position = stop
    if position != dim or len(spans) != num_attributes:
        raise ValueError(f"layout {spans} must give {num_attributes} slices covering [0, {dim})")
    return spans


def _float_matrix(values: object, what: str) -> np.ndarray:
    """A 2-D float32 array from real numbers; anything else is a QueryError naming ``what``."""
    if type(values) is np.ndarray and values.dtype == np.float32 and values.flags.c_contiguous and values.ndim <= 2:
        return values if values.ndim == 2 else values.reshape(1, -1)  # the common case, no copies
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise QueryError(f"{what} must be a numeric array ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise QueryError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(np.atleast_2d(arr), dtype=np.float32)


def _checked_codes(codes: np.ndarray | None, n: int, num_attributes: int, what: str) -> np.ndarray:
    if codes is None:
        return np.full((n, num_attributes), -1, np.int16)
    try:
        arr = np.asarray(codes)
    except (ValueError, TypeError) as exc:
        raise QueryError(f"{what} must be an integer array ({exc})") from None
    integral = arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
    if arr.size and not integral:
        raise QueryError(f"{what} must be integer value codes (-1 = unknown), got dtype {arr.dtype}")
    if arr.size != n * num_attributes:
        raise QueryError(f"{what} have shape {arr.shape}, expected ({n}, {num_attributes})")
    if arr.size and (arr.min() < -1 or arr.max() > np.iinfo(np.int16).max):
        raise QueryError(f"{what} must lie in [-1, {np.iinfo(np.int16).max}] (-1 = unknown)")
    return arr.astype(np.int16).reshape(n, num_attributes)

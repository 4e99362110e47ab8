"""A persistent, id-keyed catalog index: full vectors + attribute codes, searched in two stages.

Search: an hnswlib graph over a compact projection of the vectors (fashsdk.projection,
fashsdk.ann) proposes candidates, which are re-ranked exactly on the full vectors
(fashsdk.vector_store). Up to 512-d the "projection" is the identity: the graph then
holds the float32 vectors themselves and its scores need no re-rank (measured: a
projection only pays for wide embeddings such as the paper's 4080-d). While the catalog is small enough that scanning every vector is
cheaper than a graph search (about EXACT_MAX_VALUES stored values, measured by
``python -m benchmarks.search``), there is no graph at all and every search is exact.

When the projection is (re)fitted: it is fitted on (a sample of) the live items the first
time the catalog grows past the exact-scan size. Items added (or updated) later are
projected with the stored projection. It is refitted, and the graph rebuilt, when at least
as many items have been written since the build as the catalog held then, AND those items
lose clearly more energy to the projection than the fit sample did (mean residual >
REFIT_DRIFT x fit residual + REFIT_SLACK), i.e. the catalog drifted away from what the
projection was fitted on; or on demand with ``refit()``. Rebuilding costs about as much as
the writes that triggered it, so the amortised cost of a write stays bounded.
If removals shrink the catalog to half the exact-scan size, the graph is dropped.

After bulk adds, ``optimize()`` renumbers the graph so graph neighbours lie together in memory
(fashsdk.graph_layout; full builds do it themselves); items added later are appended in arrival
order until the next ``optimize()``.

Items are keyed by the catalog's own ids (strings; ints are accepted and stringified).
Saving writes a new generation of files and then atomically replaces ``index.json``,
which names that generation and pins every file by sha256: a crash at any moment leaves
the previous generation loadable, and a tampered file is refused before hnswlib reads it.
Version-1 indexes (graph over the full vectors) still load: their vectors are kept and the
graph is rebuilt in the current layout.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .ann import GraphParams, ProjectedGraph, candidate_count, graph_params, locality_order
from .errors import IndexFileError, QueryError
from .files import (atomic_save_npy, atomic_write_json, check_seal, contained_file, fsync_dir, load_npy, read_json,
                    seal, sha256_file)
from .projection import Projection, fit_projection
from .rwlock import ReadWriteLock
from .vector_store import PRECISIONS, VectorStore, best_first

FORMAT = "fashsdk-index"
FORMAT_VERSION = 2
SIDECAR = "index.json"

EXACT_MAX_VALUES = 1 << 19  # items x dim below which an exact scan beats the graph (benchmarks.search)
FIT_SAMPLE = 32768
REFIT_WRITES = 1.0  # items written since the build, relative to the catalog size then
REFIT_DRIFT = 1.5
REFIT_SLACK = 1e-4
LAYOUT_MIN_NODES = 1 << 16  # graphs this large are renumbered for locality after a build (optimize)
LAYOUT_PROBES = 32  # queries whose results must survive the renumbering unchanged
_V1_ROLES = ("graph", "vectors", "codes", "predicted", "ids")


def normalize_id(item_id: object) -> str:
    """Catalog ids are strings; ints (not bools) are accepted and stringified."""
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
        raise QueryError(f"item id {item_id!r} has type {type(item_id).__name__}; ids must be str or int")
    text = str(item_id)
    if not text or len(text) > 512 or "\x00" in text:
        raise QueryError(f"item id {item_id!r} must be a non-empty string of at most 512 characters without NUL")
    return text


def _id_list(ids: object) -> list[str]:
    """A sequence of ids (not one bare string, which would otherwise iterate as characters)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise QueryError(f"ids must be a list of ids, got {type(ids).__name__} {ids!r:.60}; wrap one id in a list")
    return [normalize_id(i) for i in ids]


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


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class CatalogIndex:
    """Vectors (L2-normalised, inner-product space) plus attribute codes, keyed by id.

    Args:
        dim, num_attributes: vector width and number of attributes per item.
        M, ef_construction: hnswlib graph settings; None picks them by catalog size.
        ef_search: graph candidates re-ranked exactly per query (also hnswlib's ef);
            None picks it by catalog size and k.
        capacity: initial number of slots (grows as needed).
        precision: "float32" or "float16" storage of the full vectors.
        projection_dim: width of the projection the graph searches; None picks it
            from the data (the share of energy it keeps).
        exact_max_items: catalogs up to this size are scanned exactly, without a
            graph; None derives it from EXACT_MAX_VALUES / dim.
        threads: threads for building the graph (searches always use one per call).
    """

    def __init__(self, dim: int, num_attributes: int, *, M: int | None = None, ef_construction: int | None = None,
                 ef_search: int | None = None, capacity: int = 1024, info: dict[str, Any] | None = None,
                 precision: str = "float32", projection_dim: int | None = None,
                 exact_max_items: int | None = None, threads: int | None = None) -> None:
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
        self.dim = dim
        self.num_attributes = num_attributes
        self.M, self.ef_construction, self.ef_search = M, ef_construction, ef_search
        self.projection_dim, self.exact_max_items = projection_dim, exact_max_items
        self.precision = precision
        self.threads = threads or _default_threads()
        self.info = dict(info or {})
        capacity = max(int(capacity), 1)
        self._store = VectorStore(dim, capacity, precision)
        self._codes = np.full((capacity, num_attributes), -1, np.int16)
        self._predicted = np.full((capacity, num_attributes), -1, np.int16)
        self._alive = np.zeros(capacity, bool)
        self._ids: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._graph: ProjectedGraph | None = None
        self._lock = ReadWriteLock()

    # ---- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, item_id: object) -> bool:
        try:
            return normalize_id(item_id) in self._slot
        except QueryError:
            return False

    @property
    def ids(self) -> list[str]:
        with self._lock.read():
            return [i for i in self._ids if i is not None]

    @property
    def mode(self) -> str:
        """"two-stage" (graph + exact re-rank) or "exact" (scan; small catalogs)."""
        return "exact" if self._graph is None else "two-stage"

    def slot_of(self, item_id: object) -> int:
        key = normalize_id(item_id)
        slot = self._slot.get(key)
        if slot is None:
            raise QueryError(f"id {key!r} is not in the index ({len(self)} items); add it first or query by image")
        return slot

    def get(self, item_id: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector, label codes, predicted codes) of an indexed item."""
        with self._lock.read():
            slot = self.slot_of(item_id)
            return self._store.rows(slot).copy(), self._codes[slot].copy(), self._predicted[slot].copy()

    def codes_of(self, ids: Sequence[str]) -> np.ndarray:
        """Label codes (n, A) of indexed ids, for attaching attributes to results."""
        with self._lock.read():
            if not ids:
                return np.zeros((0, self.num_attributes), np.int16)
            return self._codes[[self.slot_of(i) for i in ids]].copy()

    def alive_slots(self) -> np.ndarray:
        with self._lock.read():
            return np.flatnonzero(self._alive[:len(self._ids)]).astype(np.int64)

    def vectors_and_codes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Snapshot of all live items: ids, vectors (n, D) float32, codes (n, A)."""
        with self._lock.read():
            slots = np.flatnonzero(self._alive[:len(self._ids)])
            ids = self._ids
            return [ids[s] for s in slots.tolist()], self._store.rows(slots), self._codes[slots].copy()  # type: ignore[misc]

    def search(self, queries: np.ndarray, k: int, *, exact: bool = False,
               exclude: Sequence[str | None] | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-k ids and cosine scores per query; ``exclude[i]`` drops one id from query i."""
        ids, scores, _ = self._search(queries, k, exact, exclude, with_codes=False)
        return ids, scores

    def search_with_codes(self, queries: np.ndarray, k: int, *, exact: bool = False,
                          exclude: Sequence[str | None] | None = None
                          ) -> tuple[list[list[str]], list[np.ndarray], list[np.ndarray]]:
        """``search`` plus each result's label codes (k, A), read under the same lock: a
        concurrent ``remove`` cannot take a result between the search and the lookup."""
        ids, scores, codes = self._search(queries, k, exact, exclude, with_codes=True)
        return ids, scores, codes  # type: ignore[return-value]

    def _search(self, queries: np.ndarray, k: int, exact: bool, exclude: Sequence[str | None] | None,
                with_codes: bool) -> tuple[list[list[str]], list[np.ndarray], list[np.ndarray] | None]:
        queries = _float_matrix(queries, "query vectors")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise QueryError(f"query vectors have shape {queries.shape}, the index holds {self.dim}-d vectors")
        if not np.isfinite(queries).all():  # cheaper than a float64 sum, and no overflow warnings
            raise QueryError("query vectors contain NaN or infinity")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        skip_keys: list[str | None] | None = None
        if exclude is not None:
            if len(exclude) != len(queries):
                raise QueryError(f"exclude has {len(exclude)} entries for {len(queries)} queries; give one per query")
            skip_keys = [None if e is None else normalize_id(e) for e in exclude]
        with self._lock.read():
            n = len(self._slot)
            if n == 0:
                raise QueryError("the index is empty: add catalog items before searching")
            skip = None  # plain ints: per-call numpy on tiny arrays costs microseconds each
            if skip_keys is not None:
                slot_of = self._slot.get
                skip = [-1 if e is None else slot_of(e, -1) for e in skip_keys]
            want = min(k + (1 if skip is not None and max(skip) >= 0 else 0), n)
            graph = self._graph
            if (len(queries) == 1 and not exact and graph is not None and graph.projection.identity
                    and self.precision == "float32"):
                rows, scores = self._search_one_in_graph(graph, queries, want, n, k, -1 if skip is None else skip[0])
            else:
                slots, scores_matrix = self._search_slots(queries, want, exact, n)
                rows, scores = self._drop_skipped(slots, scores_matrix, skip, k)
            ids = self._ids
            out_ids = [[ids[s] for s in row] for row in rows]
            codes = [self._codes[row] for row in rows] if with_codes else None  # fancy indexing copies
            return out_ids, scores, codes  # type: ignore[return-value]

    def _search_one_in_graph(self, graph: ProjectedGraph, query: np.ndarray, want: int, n: int, k: int,
                             skip: int) -> tuple[list[list[int]], list[np.ndarray]]:
        """The common call (one query, the graph holds the float32 vectors, so its scores are
        exact) with as few numpy calls as possible: after a graph walk the caches are cold and
        each small call costs microseconds (measured: the general path added ~60 us to a
        ~150 us walk). Same results as ``_search_slots`` + ``_drop_skipped``."""
        count = min(candidate_count(n, want, self.dim, self.ef_search), n)
        try:
            labels, distances = graph.graph.knn_query(query, k=count, num_threads=1)
        except RuntimeError:  # fewer reachable nodes than asked (heavy deletions): the general path scans
            slots, scores = self._search_slots(query, want, True, n)
            return self._drop_skipped(slots, scores, None if skip < 0 else [skip], k)
        row = labels[0, :want].tolist()
        cut = row.index(skip) if skip >= 0 and skip in row else -1
        near = distances[0]
        if cut >= 0:  # then want = k + 1 (or n): dropping one leaves at most k
            del row[cut]
            scores = 1.0 - np.concatenate((near[:cut], near[cut + 1:want]))  # np.delete costs ~15 us here
        else:
            scores = 1.0 - near[:k]
        return [row[:k]], [scores]

    def _search_slots(self, queries: np.ndarray, want: int, exact: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
        graph = self._graph
        if not exact and graph is not None:
            count = min(candidate_count(n, want, self.dim, self.ef_search), n)
            try:
                # one thread per call for single queries (callers parallelise); batches use the build threads
                cand, distance = graph.candidates(queries, count, 1 if len(queries) < 64 else self.threads)
            except RuntimeError:
                cand = None  # fewer reachable nodes than asked (heavy deletions): scan instead
            if cand is not None:
                if graph.projection.identity and self.precision == "float32":
                    # the graph holds these very float32 vectors: its scores are already exact
                    return cand[:, :want], 1.0 - distance[:, :want]
                return best_first(cand, self._store.score(queries, cand), want)
        return self._store.scan_topk(queries, len(self._ids), self._alive, want)

    @staticmethod
    def _drop_skipped(slots: np.ndarray, scores: np.ndarray, skip: list[int] | None,
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
                out_scores.append(scores[qi, :k].copy())
            else:
                del row[cut]
                out_rows.append(row[:k])
                out_scores.append(np.concatenate((scores[qi, :cut], scores[qi, cut + 1:k + 1])))
        return out_rows, out_scores

    def stats(self) -> dict[str, Any]:
        """What the index is doing and what it costs: mode, parameters, bytes by part."""
        with self._lock.read():
            used, n = len(self._ids), len(self._slot)
            graph = self._graph
            ids_bytes = sum(len(i) + 49 for i in self._ids if i is not None) + 104 * n  # str objects + dict entries
            out: dict[str, Any] = {
                "mode": self.mode, "count": n, "slots": used, "dim": self.dim, "precision": self.precision,
                "exact_max_items": self._exact_limit(),
                "bytes": {"vectors": self._store.nbytes(used), "codes": 4 * used * self.num_attributes,
                          "graph": graph.nbytes() if graph else 0, "ids_estimate": ids_bytes}}
            if graph is not None:
                proj = graph.projection
                out.update({"projection_dim": proj.out_dim, "fit_count": proj.fit_count,
                            "built_count": graph.built_count, "written_since_build": graph.drift_count,
                            "laid_out_nodes": graph.laid_out,
                            "fit_residual": proj.fit_residual, "M": graph.params.M,
                            "ef_construction": graph.params.ef_construction,
                            "candidates_k10": min(candidate_count(n, 11, self.dim, self.ef_search), n),
                            "drift_residual": graph.drift_sum / graph.drift_count if graph.drift_count else None})
            return out

    # ---- writing -------------------------------------------------------------------
    def _check_items(self, keys: list[str], vectors: np.ndarray, codes: np.ndarray | None,
                     predicted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vectors = _float_matrix(vectors, "vectors")
        if vectors.shape != (len(keys), self.dim):
            raise QueryError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        if not np.isfinite(vectors.sum(dtype=np.float64)):  # no n x D temporary, unlike isfinite().all()
            raise QueryError("vectors contain NaN or infinity")
        codes_arr = self._check_codes(codes, len(keys), "codes")
        predicted_arr = codes_arr if predicted is None else self._check_codes(predicted, len(keys), "predicted")
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise QueryError(f"id {dup!r} appears more than once in this call")
        return vectors, codes_arr, predicted_arr

    def _check_codes(self, codes: np.ndarray | None, n: int, what: str) -> np.ndarray:
        if codes is None:
            return np.full((n, self.num_attributes), -1, np.int16)
        try:
            arr = np.asarray(codes)
        except (ValueError, TypeError) as exc:
            raise QueryError(f"{what} must be an integer array ({exc})") from None
        integral = arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
        if arr.size and not integral:
            raise QueryError(f"{what} must be integer value codes (-1 = unknown), got dtype {arr.dtype}")
        if arr.size != n * self.num_attributes:
            raise QueryError(f"{what} have shape {arr.shape}, expected ({n}, {self.num_attributes})")
        if arr.size and (arr.min() < -1 or arr.max() > np.iinfo(np.int16).max):
            raise QueryError(f"{what} must lie in [-1, {np.iinfo(np.int16).max}] (-1 = unknown)")
        return arr.astype(np.int16).reshape(n, self.num_attributes)

    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None) -> None:
        """Add new items; an id already present (or repeated in ``ids``) is an error.

        ``codes`` are the known labels (-1 = unknown); ``predicted`` the model's own
        reading of each attribute, used as the current value when a label is unknown.
        """
        keys = _id_list(ids)
        vectors, codes_arr, predicted_arr = self._check_items(keys, vectors, codes, predicted)
        with self._lock.write():
            present = [k for k in keys if k in self._slot]
            if present:
                raise QueryError(f"{len(present)} ids are already indexed (first: {present[:3]}); "
                                 "remove them first or use update()")
            self._add_locked(keys, vectors, codes_arr, predicted_arr)
            self._maintain()

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id; unknown ids are an error and nothing is removed."""
        keys = list(dict.fromkeys(_id_list(ids)))
        with self._lock.write():
            missing = [k for k in keys if k not in self._slot]
            if missing:
                raise QueryError(f"{len(missing)} ids are not in the index (first: {missing[:3]}); nothing removed")
            self._remove_locked(keys)
            self._maintain()

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None) -> None:
        """Replace the vectors/codes of existing ids, atomically for readers."""
        keys = _id_list(ids)
        vectors, codes_arr, predicted_arr = self._check_items(keys, vectors, codes, predicted)
        with self._lock.write():
            missing = [k for k in keys if k not in self._slot]
            if missing:
                raise QueryError(f"{len(missing)} ids are not in the index (first: {missing[:3]}); "
                                 "nothing updated: add them first")
            self._remove_locked(keys)
            self._add_locked(keys, vectors, codes_arr, predicted_arr)
            self._maintain()

    def optimize(self) -> bool:
        """Renumber the graph so neighbours sit together in memory; call after bulk adds.

        Why: hnswlib keeps nodes in insertion order, and at 1M nodes a query is bound by
        memory latency; renumbering (breadth-first within attribute combinations,
        ``fashsdk.graph_layout``) cut the 1M walk to 0.87x in a raw A/B and p50 by
        1.05-1.13x in three of benchmarks.search's same-run A/Bs (0.98-1.10x in four at 100k).
        Full builds do it by themselves; items added later are appended in arrival order until
        the next ``optimize()``. Blocks writers and readers while it runs (12 s and about three
        graph copies of memory at 1M 256-d items). Returns whether the graph was renumbered.
        """
        with self._lock.write():
            return self._layout_graph()

    def refit(self) -> None:
        """Refit the projection on the current items and rebuild the graph (or drop it if small)."""
        with self._lock.write():
            self._graph = None
            self._maintain()

    def _add_locked(self, keys: list[str], vectors: np.ndarray, codes: np.ndarray, predicted: np.ndarray) -> None:
        reuse = [self._free.pop() for _ in range(min(len(self._free), len(keys)))]
        start = len(self._ids)
        slots = np.array(reuse + list(range(start, start + len(keys) - len(reuse))), np.int64)
        self._reserve(start + len(keys) - len(reuse))
        self._store.put(slots, vectors)
        self._codes[slots] = codes
        self._predicted[slots] = predicted
        self._alive[slots] = True
        self._ids.extend([None] * (len(keys) - len(reuse)))
        for key, slot in zip(keys, slots.tolist()):
            self._ids[slot] = key
            self._slot[key] = slot
        if self._graph is not None:
            order = locality_order(self._current_codes(slots))
            self._graph.add(np.asarray(vectors)[order], slots[order], self.threads)

    def _remove_locked(self, keys: list[str]) -> None:
        slots = np.array([self._slot.pop(k) for k in keys], np.int64)
        self._alive[slots] = False
        for s in slots.tolist():
            self._ids[s] = None
        self._free.extend(slots.tolist()[::-1])
        if self._graph is not None:
            self._graph.remove(slots)

    def _exact_limit(self) -> int:
        return self.exact_max_items if self.exact_max_items is not None else EXACT_MAX_VALUES // self.dim

    def _maintain(self) -> None:
        """Build, refit or drop the graph per the rules in the module docstring (write lock held)."""
        n, limit = len(self._slot), self._exact_limit()
        graph = self._graph
        if graph is None:
            if n > limit:
                self._build()
        elif n <= limit // 2:
            self._graph = None
        elif graph.drift_count and graph.drift_count >= REFIT_WRITES * graph.built_count:
            drift = graph.drift_sum / graph.drift_count
            if drift > REFIT_DRIFT * graph.projection.fit_residual + REFIT_SLACK:
                self._build()

    def _build(self) -> None:
        alive = np.flatnonzero(self._alive[:len(self._ids)])
        sample = alive
        rows = min(FIT_SAMPLE, max(8192, (1 << 25) // self.dim))  # 8k rows of 4080-d fit 128 dims well
        if len(alive) > rows:
            sample = np.sort(np.random.default_rng(len(alive)).choice(alive, rows, replace=False))
        projection = fit_projection(self._store.rows(sample), self.projection_dim)
        auto = graph_params(len(alive))
        params = GraphParams(self.M or auto.M, self.ef_construction or auto.ef_construction)
        graph = ProjectedGraph(projection, self._store.capacity, params)
        graph.built_count = len(alive)
        alive = alive[locality_order(self._current_codes(alive))]
        for chunk, vectors in self._store.iter_rows(alive, max(256, (1 << 23) // self.dim)):
            graph.add(vectors, chunk, self.threads, track_drift=False)
        self._graph = graph
        self._layout_graph()

    def _layout_graph(self) -> bool:
        """``optimize`` under the write lock; nothing to do below LAYOUT_MIN_NODES (the graph's
        working set then mostly stays in cache) or when no node was appended since the last time."""
        graph = self._graph
        if graph is None or graph.count < LAYOUT_MIN_NODES or graph.laid_out == graph.count:
            return False

        def combination_of(labels: np.ndarray) -> np.ndarray:
            codes = self._current_codes(labels.astype(np.int64))
            return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)

        alive = np.flatnonzero(self._alive[:len(self._ids)])
        probes = alive[np.random.default_rng(len(alive)).choice(len(alive), min(LAYOUT_PROBES, len(alive)), replace=False)]
        return graph.relayout(combination_of, self._store.rows(np.sort(probes)))

    def _current_codes(self, slots: np.ndarray) -> np.ndarray:
        """Each item's attribute values: its label, else the model's prediction."""
        codes = self._codes[slots]
        return np.where(codes >= 0, codes, self._predicted[slots])

    def _reserve(self, needed: int) -> None:
        capacity = self._store.capacity
        if needed <= capacity:
            return
        self._store.reserve(needed)
        new_capacity = self._store.capacity
        codes = np.full((new_capacity, self.num_attributes), -1, np.int16)
        codes[:capacity] = self._codes
        predicted = np.full((new_capacity, self.num_attributes), -1, np.int16)
        predicted[:capacity] = self._predicted
        alive = np.zeros(new_capacity, bool)
        alive[:capacity] = self._alive
        self._codes, self._predicted, self._alive = codes, predicted, alive
        if self._graph is not None:
            self._graph.reserve(new_capacity)

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a new generation of files, then switch ``index.json`` to it atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        gen = secrets.token_hex(6)
        names = {"vectors": f"vectors-{gen}.npy", "codes": f"codes-{gen}.npy",
                 "predicted": f"predicted-{gen}.npy", "ids": f"ids-{gen}.json"}
        with self._lock.read():
            graph = self._graph
            if graph is not None:
                names["graph"] = f"graph-{gen}.hnsw"
                if not graph.projection.identity:
                    names["projection"] = f"projection-{gen}.npy"
            used = len(self._ids)
            if graph is not None:
                tmp_graph = directory / f".{names['graph']}.tmp"
                graph.save(str(tmp_graph))
                _fsync_file(tmp_graph)
                os.replace(tmp_graph, directory / names["graph"])
                if graph.projection.matrix is not None:
                    atomic_save_npy(directory / names["projection"], graph.projection.matrix)
            atomic_save_npy(directory / names["vectors"], self._store.data[:used])
            atomic_save_npy(directory / names["codes"], self._codes[:used])
            atomic_save_npy(directory / names["predicted"], self._predicted[:used])
            atomic_write_json(directory / names["ids"], self._ids)
            sidecar = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "space": "ip",
                "dim": self.dim, "num_attributes": self.num_attributes, "precision": self.precision,
                "slots": used, "count": len(self._slot), "mode": self.mode,
                "settings": {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                             "projection_dim": self.projection_dim, "exact_max_items": self.exact_max_items},
                "graph": None if graph is None else {
                    "M": graph.params.M, "ef_construction": graph.params.ef_construction, "nodes": graph.count,
                    "projection_dim": graph.projection.out_dim, "identity": graph.projection.identity,
                    "fit_count": graph.projection.fit_count,
                    "fit_residual": graph.projection.fit_residual, "built_count": graph.built_count,
                    "drift_sum": graph.drift_sum,
                    "drift_count": graph.drift_count, "laid_out": graph.laid_out},
                "info": self.info,
                "files": {role: {"name": name, "sha256": sha256_file(directory / name),
                                 "bytes": (directory / name).stat().st_size} for role, name in names.items()},
            }
        old = _read_sidecar_quietly(directory / SIDECAR)
        atomic_write_json(directory / SIDECAR, seal(sidecar))  # sealed: a flipped bit is refused on load
        fsync_dir(directory)
        for meta in (old or {}).get("files", {}).values():
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(name, str) and name not in names.values():
                try:
                    contained_file(directory, name, "old index sidecar", IndexFileError).unlink()
                except (IndexFileError, FileNotFoundError):
                    pass
        return directory / SIDECAR

    @classmethod
    def load(cls, directory: str | Path) -> "CatalogIndex":
        """Load a saved index; every file's size and sha256 is checked before anything parses it."""
        directory = Path(directory)
        sidecar_path = directory / SIDECAR
        where = f"index sidecar {str(sidecar_path)!r}"
        if not directory.is_dir():
            raise IndexFileError(f"index directory {str(directory)!r} does not exist; build it with 'fashsdk index'")
        meta = read_json(sidecar_path, "index sidecar", IndexFileError)
        check_seal(meta, sidecar_path, "index sidecar", IndexFileError)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFileError(f"{str(sidecar_path)!r} is not a fashsdk index sidecar")
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise IndexFileError(f"{where} has format_version {version!r}; this fashsdk reads 1 to "
                                 f"{FORMAT_VERSION}: upgrade fashsdk or rebuild the index")
        try:
            dim, num_attributes, slots = _int(meta["dim"]), _int(meta["num_attributes"]), _int(meta["slots"])
            count = _int(meta["count"])
            precision = "float32" if version == 1 else meta["precision"]
            graph_meta = None if version == 1 else meta["graph"]
            settings = {} if version == 1 else dict(meta["settings"])
            roles = list(_V1_ROLES) if version == 1 else ["vectors", "codes", "predicted", "ids"]
            if graph_meta is not None:
                p, nodes, M, efc = (_int(graph_meta[key]) for key in ("projection_dim", "nodes", "M", "ef_construction"))
                identity = graph_meta.get("identity", False)  # absent in the first v2 files: projected
                if not isinstance(identity, bool):
                    raise TypeError(f"graph identity must be true or false, got {identity!r}")
                roles += ["graph"] if identity else ["graph", "projection"]
                fit_count, fit_res = _int(graph_meta["fit_count"]), float(graph_meta["fit_residual"])
                built_count = _int(graph_meta.get("built_count", fit_count))
                drift_sum, drift_count = float(graph_meta["drift_sum"]), _int(graph_meta["drift_count"])
                laid_out = _int(graph_meta.get("laid_out", 0))  # absent before graph layout existed
            files = {role: meta["files"][role] for role in roles}
            options = {key: (None if settings.get(key) is None else _int(settings[key]))
                       for key in ("M", "ef_construction", "ef_search", "projection_dim", "exact_max_items")}
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
        if not (0 < dim <= 65536 and 0 < num_attributes <= 4096 and 0 <= count <= slots <= 1 << 31
                and isinstance(precision, str) and precision in PRECISIONS):
            raise IndexFileError(f"{where} has out-of-range parameters")
        if graph_meta is not None and not (0 < p <= dim and 2 <= M <= 256 and 0 < efc <= 100000
                                           and count <= nodes <= slots and (p == dim or not identity)):
            raise IndexFileError(f"{where} has out-of-range graph parameters")
        paths = {role: _verified_file(directory, f, role, where) for role, f in files.items()}
        ids = read_json(paths["ids"], "index ids", IndexFileError)
        vectors = load_npy(paths["vectors"], "index vectors", IndexFileError)
        codes = load_npy(paths["codes"], "index codes", IndexFileError)
        predicted = load_npy(paths["predicted"], "index predicted codes", IndexFileError)
        if (predicted.shape != codes.shape or predicted.dtype != np.int16 or not isinstance(ids, list)
                or len(ids) != slots or vectors.shape != (slots, dim) or vectors.dtype != PRECISIONS[precision]
                or codes.shape != (slots, num_attributes) or codes.dtype != np.int16
                or not all(i is None or isinstance(i, str) for i in ids)
                or sum(i is not None for i in ids) != count):
            raise IndexFileError(f"index files in {str(directory)!r} disagree with the sidecar "
                                 "(ids/vectors/codes shape, dtype or count)")
        info = meta.get("info")
        try:
            index = cls(dim, num_attributes, capacity=1, info=info if isinstance(info, dict) else {},
                        precision=precision, **options)
        except ValueError as exc:
            raise IndexFileError(f"{where} has invalid settings ({exc})") from None
        if slots:  # adopt the loaded arrays: no second copy of a multi-GB vector file
            index._store.data = np.ascontiguousarray(vectors)
            index._codes, index._predicted = np.ascontiguousarray(codes), np.ascontiguousarray(predicted)
            index._alive = np.zeros(slots, bool)
        index._ids = list(ids)
        index._slot = {i: s for s, i in enumerate(ids) if i is not None}
        if len(index._slot) != count:
            raise IndexFileError(f"index ids in {str(paths['ids'])!r} contain duplicates")
        index._alive[:slots] = [i is not None for i in ids]
        index._free = [s for s in range(slots - 1, -1, -1) if ids[s] is None]
        if graph_meta is not None:
            if identity:
                projection = Projection(None, fit_count, fit_res, dim)
            else:
                matrix = load_npy(paths["projection"], "index projection", IndexFileError)
                if matrix.shape != (dim, p) or matrix.dtype != np.float32 or not np.isfinite(matrix).all():
                    raise IndexFileError(f"index projection {str(paths['projection'])!r} disagrees with the sidecar")
                projection = Projection(matrix, fit_count, fit_res)
            graph = ProjectedGraph.load(projection, str(paths["graph"]), max(slots, 1), GraphParams(M, efc))
            if graph.count != nodes:
                raise IndexFileError(f"index graph {str(paths['graph'])!r} holds {graph.count} nodes, "
                                     f"the sidecar says {nodes}")
            graph.drift_sum, graph.drift_count, graph.built_count = drift_sum, drift_count, built_count
            graph.laid_out = laid_out if laid_out <= nodes else 0
            index._graph = graph
        elif version == 1 or count > index._exact_limit():
            with index._lock.write():
                index._maintain()  # v1: its graph searched the full vectors; rebuild in the current layout
        return index


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _verified_file(directory: Path, entry: object, role: str, where: str) -> Path:
    if not isinstance(entry, dict):
        raise IndexFileError(f"{where}: entry {role!r} is malformed")
    path = contained_file(directory, entry.get("name"), where, IndexFileError)
    if not path.is_file():
        raise IndexFileError(f"index file {str(path)!r} named by the sidecar is missing")
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise IndexFileError(f"index file {str(path)!r} fails its checksum: it was truncated or modified; "
                             "restore it or rebuild the index")
    return path


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _read_sidecar_quietly(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path, "index sidecar", IndexFileError)
        return data if isinstance(data, dict) else None
    except IndexFileError:
        return None

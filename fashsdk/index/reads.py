"""The index's read paths: top-k in the full space, under a ``where`` filter, or in one
attribute's subspace, by graph walk (exact re-rank when the graph holds a projection) or by
exact scan, with each query's own item dropped from its results.

Free functions over a CatalogIndex's parts, called under its read lock; ``prepare`` builds,
under the write lock, the per-value and subspace graphs a search is about to walk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import QueryError
from . import partitions as filtering
from . import policy
from .calibration import similar_beam
from .graph import ProjectedGraph, candidate_count
from .native_walk import search_many
from .subspaces import chunks
from .vector_store import VectorStore, best_first

if TYPE_CHECKING:
    from .catalog_index import CatalogIndex

Filter = dict[int, frozenset[int]]  # attribute index -> allowed value codes (AND across attributes)
_NO_COLUMNS = np.zeros((0, 0), np.int16)  # the label columns of Hits read without them (``search``)
_NO_COLUMNS.flags.writeable = False


@dataclass
class Hits:
    """One query's results: ids best first, cosine scores, stored label and predicted codes (k, A) and
    the predictions' probabilities (k, A)."""

    ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray


def read(index: "CatalogIndex", queries: np.ndarray, k: int, exact: bool, skip_keys: list[str | None] | None, where: Filter,
          attribute: int | None, labelled: bool = True) -> list[Hits] | None:
    """The read path under the read lock; None when a lazily built graph it needs is missing.
    Without ``labelled`` the Hits carry ids and scores only (their label columns are empty)."""
    table = index.table
    n = len(table.slot)
    if n == 0:
        raise QueryError("the index is empty: add catalog items before searching")
    if len(queries) == 1 and not exact and not where:  # the common call, on a native walk: fewest steps
        found = walked_one(index, queries[0], k, None if skip_keys is None else skip_keys[0], attribute, n)
        if found is not None:
            return [labelled_hits(index, *found) if labelled else id_hits(index, *found)]
    skip = None if skip_keys is None else [-1 if e is None else table.slot.get(e, -1) for e in skip_keys]
    want = min(k + (1 if skip is not None and max(skip) >= 0 else 0), n)
    graph = index.graph
    if attribute is None and not where and len(queries) == 1 and not exact and graph is not None \
            and graph.projection.identity and index.precision == "float32":
        excluded = -1 if skip is None else skip[0]
        fast = one_in_graph(graph, queries, want, policy.candidates(index, want), k, excluded)
        rows, scores = fast if fast is not None else drop_excluded(*_scan(index, queries, want, None), skip, k)
    elif where or attribute is not None:
        found = [_one(index, q[None], want, exact, where, attribute, -1 if skip is None else skip[qi])
                 for qi, q in enumerate(queries)]
        if any(f is None for f in found):
            return None
        rows, scores = [], []
        for qi, (s, v) in enumerate(found):  # type: ignore[misc]
            r, sc = drop_excluded(s, v, None if skip is None else [skip[qi]], k)
            rows += r
            scores += sc
    else:
        walked = None if exact or len(queries) == 1 else walked_many(index, queries, k, skip, n)
        if walked is not None:  # the answers single calls give, walked in parallel
            return _batch_hits(index, walked[0], walked[1], None, k)
        slots, found_scores = _slots(index, queries, want, exact, n)
        if len(queries) > 1 and (skip is None or want == k + 1):
            return _batch_hits(index, slots, found_scores, skip, k)
        rows, scores = drop_excluded(slots, found_scores, skip, k)
    make = labelled_hits if labelled else id_hits
    return [make(index, row, sc) for row, sc in zip(rows, scores)]


def labelled_hits(index: "CatalogIndex", row: list[int], scores: np.ndarray) -> Hits:
    """Hits for one query's result slots; one int64 array and ``take`` per column (indexing with
    the list itself converts it once per column and costs ~4 us each)."""
    table = index.table
    at = np.array(row, np.int64)
    ids = table.ids
    return Hits([ids[s] for s in row], scores, table.codes.take(at, 0), table.predicted.take(at, 0),  # type: ignore[misc]
                table.confidence.take(at, 0))


def id_hits(index: "CatalogIndex", row: list[int], scores: np.ndarray) -> Hits:
    """Hits with ids and scores only (``search``): their label columns are empty."""
    ids = index.table.ids
    return Hits([ids[s] for s in row], scores, _NO_COLUMNS, _NO_COLUMNS, _NO_COLUMNS)  # type: ignore[misc]


def _batch_hits(index: "CatalogIndex", slots: np.ndarray, scores: np.ndarray, skip: list[int] | None,
                k: int) -> list[Hits]:
    """Many queries' Hits in a few whole-array steps (per-query numpy calls cost more than the
    rows): each row's excluded slot dropped, then exactly k results per query (``slots`` holds
    k + 1 per query when there is an exclusion, so every row keeps k)."""
    if skip is not None:
        excluded = slots == np.asarray(skip, np.int64)[:, None]
        order = np.argsort(excluded, axis=1, kind="stable")[:, :k]  # the excluded slot sorts last
        slots, scores = np.take_along_axis(slots, order, 1), np.take_along_axis(scores, order, 1)
    else:
        slots, scores = slots[:, :k], scores[:, :k]
    table = index.table
    ids = table.ids
    codes, predicted, confidence = table.codes[slots], table.predicted[slots], table.confidence[slots]
    scores = np.ascontiguousarray(scores, np.float32)
    return [Hits([ids[s] for s in row], scores[q], codes[q], predicted[q], confidence[q])  # type: ignore[misc]
            for q, row in enumerate(slots.tolist())]


def _slots(index: "CatalogIndex", queries: np.ndarray, want: int, exact: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
    graph = index.graph
    if not exact and graph is not None:
        count = policy.candidates(index, want)
        exact_scores = graph.projection.identity and index.precision == "float32"
        # one thread per call for single queries (callers parallelise); batches use the build threads
        found = graph_topk(graph, None if exact_scores else index.store, queries, want, count,
                           1 if len(queries) < 64 else index.threads)
        if found is not None:
            return found
    return _scan(index, queries, want, None)


def _scan(index: "CatalogIndex", queries: np.ndarray, want: int,
          mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    alive = index.table.alive if mask is None else mask
    return index.store.scan_topk(queries, index.table.used, alive, want)


def _one(index: "CatalogIndex", query: np.ndarray, want: int, exact: bool, where: Filter,
         attribute: int | None, own: int) -> tuple[np.ndarray, np.ndarray] | None:
    """One query with a filter and/or in a subspace: (1, <=want) slots and scores; ``own`` is the
    slot of the query's own item (excluded later), or -1."""
    if attribute is not None:
        return _similar_one(index, query, want, exact, where, attribute, own)
    counts = {a: index.table.count_of(a, allowed) for a, allowed in where.items()}
    pivot = min(counts, key=counts.__getitem__)
    if exact or index.graph is None or counts[pivot] * index.dim <= filtering.FILTER_SCAN_VALUES:
        return _scan_selected(index, query, want, where, None)
    if index.partitions.missing(pivot, where[pivot]):
        return None
    live = {v: index.table.count_of(pivot, frozenset([v])) for v in where[pivot]}
    rest = {a: s for a, s in where.items() if a != pivot}
    count = candidate_count(counts[pivot], want, index.dim, index.ef_search)
    while True:
        try:
            slots, scores = index.partitions.candidates(pivot, live, query, count)
        except RuntimeError:  # fewer reachable nodes than asked: scan the selection instead
            return _scan_selected(index, query, want, where, None)
        if rest:
            keep = _matches(index.table.current_codes(slots), rest)
            slots, scores = slots[keep], scores[keep]
        if len(slots) >= want or count >= max(live.values()):
            return best_first(slots[None], scores[None], min(want, len(slots)))
        count *= 4
        if count > filtering.MAX_FILTER_CANDIDATES:
            return _scan_selected(index, query, want, where, None)


def _scan_selected(index: "CatalogIndex", query: np.ndarray, want: int, where: Filter,
                   span: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-want among the live items that pass ``where`` (in a subspace when ``span``)."""
    table, store = index.table, index.store
    if not where and span is None:
        return _scan(index, query, want, None)
    slots = np.flatnonzero(table.matching(where)) if where else table.live_slots()
    if not len(slots):
        return np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32)
    if span is None:
        return scan_slots(store.rows(slots), slots, query, want)
    if store.dtype == np.float32:  # only the chunk's columns are read, not whole rows
        block = store.data[:table.used, span[0]:span[1]] if not where else store.data[slots, span[0]:span[1]]
        scores = (block @ query[0]) / np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), 1e-12)
        if not where:
            scores = scores[slots]
        return best_first(slots[None], scores[None].astype(np.float32), min(want, len(slots)))
    return scan_slots(chunks(store.rows(slots), span), slots, query, want)


def _similar_one(index: "CatalogIndex", query: np.ndarray, want: int, exact: bool, where: Filter,
                 attribute: int, own: int) -> tuple[np.ndarray, np.ndarray] | None:
    span = index.layout[attribute]  # type: ignore[index]
    n = len(index.table)
    graph = index.subspaces.graphs.get(attribute)
    width = span[1] - span[0]
    selected = min((index.table.count_of(a, s) for a, s in where.items()), default=n)
    if exact or n <= policy.exact_limit(index, width) or selected * width <= filtering.FILTER_SCAN_VALUES:
        return _scan_selected(index, query, want, where, span)
    if graph is None:
        return None
    if not where:  # neighbours of a real item in a space of near-duplicates: a narrow beam suffices
        if graph.walk is not None:  # starting from the item itself, when it is indexed
            rows, scores = graph.walk.search(query[0], max(graph.beam, want), want, -1, own)
            if len(rows) >= min(want, n):
                return np.array([rows], np.int64), scores[None]
        return graph_topk(graph, None, query, want, min(max(graph.beam, want), n), 1) or \
            _scan_selected(index, query, want, where, span)
    count = min(candidate_count(n, want, width, index.ef_search), n)
    while True:
        found = graph_topk(graph, None, query, count, count, 1)
        if found is None:
            return _scan_selected(index, query, want, where, span)
        slots, scores = found[0][0], found[1][0]
        if where:
            keep = _matches(index.table.current_codes(slots), where)
            slots, scores = slots[keep], scores[keep]
        if len(slots) >= want or count >= n:
            return slots[None, :want], scores[None, :want]
        count *= 4
        if count > filtering.MAX_FILTER_CANDIDATES:
            return _scan_selected(index, query, want, where, span)


def prepare(index: "CatalogIndex", where: Filter | None, attribute: int | None, exact: bool) -> None:
    """Build, under the write lock, the partition or subspace graphs this search will walk."""
    if exact:
        return
    with index.lock.read():
        todo = _missing(index, where, attribute)
    if todo:
        with index.lock.write():
            build_missing(index, _missing(index, where, attribute))


def _missing(index: "CatalogIndex", where: Filter | None, attribute: int | None) -> list[tuple[str, int, int]]:
    n = len(index.table)
    if attribute is not None:
        span = index.layout[attribute]  # type: ignore[index]
        big = n > policy.exact_limit(index, span[1] - span[0])
        return [("subspace", attribute, 0)] if big and attribute not in index.subspaces.graphs else []
    if not where or index.graph is None:
        return []
    counts = {a: index.table.count_of(a, allowed) for a, allowed in where.items()}
    pivot = min(counts, key=counts.__getitem__)
    if counts[pivot] * index.dim <= filtering.FILTER_SCAN_VALUES:
        return []
    return [("partition", pivot, v) for v in index.partitions.missing(pivot, where[pivot])]


def build_missing(index: "CatalogIndex", todo: list[tuple[str, int, int]]) -> None:
    step = max(256, (1 << 23) // index.dim)
    live = index.table.live_slots()
    for kind, a, v in todo:
        if kind == "subspace":
            index.subspaces.build(a, index.store.iter_rows(live, step), index.store.capacity)
        else:
            slots = live[index.table.current_codes(live)[:, a] == v]
            index.partitions.build(a, v, index.store.iter_rows(slots, step), len(slots))
    if todo:
        policy.attach_side_walks(index)
    for kind, a, _ in todo:
        if kind == "subspace":  # measured on the walk it will take, so after the walks are attached
            index.subspaces.graphs[a].set_beam(similar_beam(index, a))


def graph_topk(graph: ProjectedGraph, store: VectorStore | None, queries: np.ndarray, want: int, count: int,
               threads: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(Q, want) slots and scores from ``count`` graph candidates, or None when fewer are reachable.

    With an identity projection over float32 (``store`` None) the graph's scores are exact;
    otherwise the candidates are re-ranked exactly on the store's full vectors.
    """
    try:
        cand, distance = graph.candidates(queries, count if store is not None else graph.ask(count, want), threads)
    except RuntimeError:  # fewer reachable nodes than asked (heavy deletions)
        return None
    if store is None:
        return cand[:, :want], 1.0 - distance[:, :want]
    return best_first(cand, store.score(queries, cand), want)


def walked_one(index: "CatalogIndex", query: np.ndarray, k: int, skip_key: str | None, attribute: int | None,
               n: int) -> tuple[list[int], np.ndarray] | None:
    """One unfiltered query on a native walk (native_walk), which drops the excluded item itself:
    the full graph's, or with ``attribute`` the subspace graph's, started from the query's own item
    (a ``similar`` query is a real item). None when that path does not apply (no walk: a write
    since the last build, no compiler, a small catalog scanned exactly) or when the walk reached
    fewer live items than asked (heavy deletions): ``read``'s general path answers then."""
    own = -1 if skip_key is None else index.table.slot.get(skip_key, -1)
    if attribute is None:
        graph = index.graph
        if graph is None or graph.walk is None:
            return None
        rows, scores = graph.walk.search(query, policy.candidates(index, min(k + (own >= 0), n)), k, own)
    else:
        graph = index.subspaces.graphs.get(attribute)
        span = index.layout[attribute]  # type: ignore[index]
        if graph is None or graph.walk is None or n <= policy.exact_limit(index, span[1] - span[0]):
            return None
        rows, scores = graph.walk.search(query, max(graph.beam, k + 1), k, own, own)
    if len(rows) < min(k, n - (own >= 0)):
        return None
    return rows, scores


def walked_many(index: "CatalogIndex", queries: np.ndarray, k: int, skip: list[int] | None,
                n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Unfiltered queries on the full graph's native walk, each with the count a single call uses,
    on the build threads from 64 queries up; None without a walk or when a query got fewer than k."""
    graph = index.graph
    if graph is None or graph.walk is None:
        return None
    skips = np.full(len(queries), -1, np.int64) if skip is None else np.asarray(skip, np.int64)
    with_own = policy.candidates(index, min(k + 1, n))
    counts = np.where(skips >= 0, with_own, policy.candidates(index, min(k, n)))
    slots, scores = search_many(graph.walk, queries, counts, k, skips, index.threads if len(queries) >= 64 else 1)
    if (slots < 0).any():  # fewer than k found: k beyond the catalog, or heavy deletions
        return None
    return slots, scores


def one_in_graph(graph: ProjectedGraph, query: np.ndarray, want: int, count: int, k: int,
                 skip: int) -> tuple[list[list[int]], list[np.ndarray]] | None:
    """The SDK's common call (one query, exact graph scores) with as few numpy calls as possible:
    after a graph walk the caches are cold and each small call costs microseconds. Same results as
    ``graph_topk`` + ``drop_excluded``; None when fewer nodes are reachable than asked."""
    try:
        labels, distances = graph.graph.knn_query(query, k=graph.ask(count, want), num_threads=1)
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


def _matches(codes: np.ndarray, where: Filter) -> np.ndarray:
    keep = np.ones(len(codes), bool)
    for a, allowed in where.items():
        keep &= np.isin(codes[:, a], np.fromiter(allowed, np.int64, len(allowed)))
    return keep

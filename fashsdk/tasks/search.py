"""Manipulation retrieval: an item plus {attribute: new value} -> catalog items that have the
new value and keep the rest; one query, or many in one call."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import QueryError
from ..families import NO_CHANGE, Family
from ..index import CatalogIndex
from ..schema import AttributeSchema, Change, Where
from .query import Encode, require_image, resolve
from .results import SearchResult, check_codes, to_results


def query_vector(index: CatalogIndex | None, family: Family, schema: AttributeSchema, encode: Encode, query: object,
                 change: Change | None) -> tuple[np.ndarray, str | None]:
    """The (changed) vector a search sends to the index, and the query's id when it is indexed."""
    parsed = schema.parse_change(change)
    item = resolve(query, index, schema, encode)
    return (family.change_one(item.vector, item.current, parsed) if parsed else item.vector), item.id


def search(index: CatalogIndex, family: Family, schema: AttributeSchema, encode: Encode, query: object,
           change: Change | None, k: int, where: Where | None, exact: bool, include_query: bool) -> list[SearchResult]:
    filters = schema.parse_where(where)
    vector, query_id = query_vector(index, family, schema, encode, query, change)
    exclude = [query_id] if query_id is not None and not include_query else None
    hits = index.hits(vector[None, :], k, exact=exact, exclude=exclude, where=filters or None)
    return to_results(schema, hits[0])


def search_batch(index: CatalogIndex, family: Family, schema: AttributeSchema, encode: Encode,
                 queries: Sequence[object], changes: Change | Sequence[Change | None] | None, k: int,
                 where: Where | None, exact: bool, include_query: bool) -> list[list[SearchResult]]:
    """Many queries: ids read in one locked call, images encoded in batches, the family's batched
    arithmetic, and one multi-threaded graph search."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise QueryError(f"queries must be a list of ids or images, got {type(queries).__name__}")
    n = len(queries)
    if n == 0:
        return []
    per_query = _changes(changes, n)
    parsed = [schema.parse_change(c) for c in per_query]
    filters = schema.parse_where(where)
    vectors, current, ids = _resolve_all(index, schema, encode, queries)
    width = max((len(p) for p in parsed), default=0)
    if width:
        attrs = np.full((n, width), NO_CHANGE, np.int64)
        values = np.zeros((n, width), np.int64)
        for i, p in enumerate(parsed):
            attrs[i, :len(p)], values[i, :len(p)] = list(p.keys()), list(p.values())
        changed = np.flatnonzero((attrs != NO_CHANGE).any(axis=1))
        vectors[changed] = family.change_batch(vectors[changed], current[changed], attrs[changed], values[changed])
    exclude = None if include_query else ids
    hits = index.hits(vectors, k, exact=exact, exclude=exclude, where=filters or None)
    return [to_results(schema, h) for h in hits]


def _changes(changes: Change | Sequence[Change | None] | None, n: int) -> list[Change | None]:
    if changes is None or isinstance(changes, Mapping):
        return [changes] * n
    if isinstance(changes, (str, bytes)) or not isinstance(changes, Sequence) or len(changes) != n:
        raise QueryError(f"changes must be one mapping for every query or a list of {n} (one per query, None for "
                         f"no change), got {type(changes).__name__}")
    return list(changes)


def _resolve_all(index: CatalogIndex, schema: AttributeSchema, encode: Encode,
                 queries: Sequence[object]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(vectors (n, D), current codes (n, A), ids or None) for ids and images alike."""
    is_id = [isinstance(q, (int, np.integer)) and not isinstance(q, bool) or (isinstance(q, str) and q in index)
             for q in queries]
    vectors = np.zeros((len(queries), index.dim), np.float32)
    current = np.zeros((len(queries), len(schema.attributes)), np.int64)
    ids: list[str | None] = [None] * len(queries)
    id_rows = [i for i, flag in enumerate(is_id) if flag]
    if id_rows:
        vec, labels, predicted = index.get_many([queries[i] for i in id_rows])
        vectors[id_rows] = vec
        current[id_rows] = np.where(labels >= 0, labels, predicted)
        for i in id_rows:
            ids[i] = str(queries[i])
            check_codes(schema, current[i].tolist(), str(queries[i]))
    image_rows = [i for i, flag in enumerate(is_id) if not flag]
    for i in image_rows:
        require_image(queries[i])
    if image_rows:
        out = encode([queries[i] for i in image_rows])
        vectors[image_rows] = out.embedding
        current[image_rows] = schema.predicted_codes(out.logits)[0]
    return vectors, current, ids

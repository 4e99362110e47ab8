"""Manipulation retrieval, the tasks' common ground: a query (an indexed id or an image) becomes
an embedding and its current values, the family moves it for {attribute: new value}, the index
answers, and results come back with their attributes decoded; one query, or many in one call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ..encoding.backends import ModelOutputs
from ..errors import IndexFileError, QueryError
from ..families import NO_CHANGE, Family
from ..index import IndexBackend, Hits, normalize_id
from ..schema import UNKNOWN, AttributeSchema, Change, Where
from .label_rerank import LabelRerank, wanted_values, with_extra

Encode = Callable[[Sequence[object]], ModelOutputs]


class SearchResult(NamedTuple):
    """One result (a named tuple: results are built by the thousand in batch searches).

    ``attributes`` holds each attribute's stored label; where none was stored, the model's
    predicted value, and then ``predicted`` names that attribute with the prediction's
    probability (None when the index does not know it). None in ``attributes``: neither.
    Results come best first by ``score``: for a change on a bundle with a label rerank
    (fashsdk.tasks.label_rerank) that is the cosine plus weighted log-probabilities (<= 0) that the
    item carries the wanted values, so it can fall below the cosine.
    """

    id: str
    score: float  # cosine similarity to the (manipulated) query; after a label rerank, plus its log-p terms
    attributes: dict[str, str | None]
    predicted: dict[str, float | None]


def to_results(schema: AttributeSchema, hits: Hits, decoded: dict | None = None) -> list[SearchResult]:
    """Results with attributes decoded; plain Python per row (numpy calls on k-row arrays cost
    more than the work), each label combination decoded once per call (``decoded`` carries
    them across the queries of a batch). A code outside the schema is a typed error, never a
    wrong value."""
    names, tables = schema.names, schema.value_tables
    labels = hits.labels
    if labels.shape[1:] != (len(names),) or hits.predicted.shape != labels.shape:
        raise codes_error(schema, hits.ids[:3], labels)
    known = {} if decoded is None else decoded
    guesses: list[list[int]] | None = None  # the predictions, read only when some label is missing
    decoded_rows, predictions = [], []
    for n, row in enumerate(labels.tolist()):
        predicted: dict[str, float | None] = {}
        if min(row) < 0:  # an attribute without a stored label: its prediction stands in
            if guesses is None:
                guesses = hits.predicted.tolist()
            guess = guesses[n]
            for a, code in enumerate(row):
                if code < 0 and guess[a] >= 0:
                    p = float(hits.confidence[n, a])
                    predicted[names[a]] = None if p != p else round(p, 4)  # NaN: not recorded
            row = [g if c < 0 else c for c, g in zip(row, guess)]
        key = tuple(row)
        attributes = known.get(key)
        if attributes is None:
            try:
                attributes = known[key] = dict(zip(names, map(dict.__getitem__, tables, key)))
            except KeyError:
                check_codes(schema, key, hits.ids[n])
                raise
        decoded_rows.append(attributes.copy())
        predictions.append(predicted)
    return list(map(SearchResult._make, zip(hits.ids, hits.scores.tolist(), decoded_rows, predictions)))


def check_codes(schema: AttributeSchema, codes: Sequence[int], item_id: str) -> None:
    """One item's codes must fit the schema: an out-of-range code would silently pick another
    value's prototype or label."""
    sizes = schema.sizes
    if len(codes) != len(sizes) or not all(UNKNOWN <= c < n for c, n in zip(codes, sizes)):
        raise codes_error(schema, item_id, codes)


def codes_error(schema: AttributeSchema, item_ids: str | list[str], codes: object) -> IndexFileError:
    sizes = schema.sizes
    shape = np.shape(codes)
    if shape[-1:] != (len(sizes),):
        return IndexFileError(f"index items {item_ids!r} have attribute codes of shape {shape}, the bundle's "
                              f"schema has {len(sizes)} attributes; rebuild the index with this bundle")
    return IndexFileError(f"index item {item_ids!r} has attribute codes {list(codes)} outside the "  # type: ignore[call-overload]
                          f"bundle's schema (value counts {sizes}); rebuild the index with this bundle")


@dataclass
class QueryItem:
    vector: np.ndarray  # (D,) float32, L2-normalised
    current: list[int]  # value code per attribute: the stored label, else the model's prediction
    id: str | None  # the catalog id when the query is an indexed item


def resolve(query: object, index: IndexBackend | None, schema: AttributeSchema, encode: Encode) -> QueryItem:
    """An indexed id (a str that is an id wins over a file of the same name), else an image."""
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool) or (
            isinstance(query, str) and index is not None and query in index):
        if index is None:
            raise QueryError("no catalog is indexed: call add(...) or pass index=... to Retriever")
        query_id = normalize_id(query)
        vector, labels, predicted = index.get(query_id)
        current = np.where(labels >= 0, labels, predicted).tolist()
        check_codes(schema, current, query_id)
        return QueryItem(vector.astype(np.float32, copy=False), current, query_id)
    require_image(query)
    out = encode([query])
    predicted_rows, _ = schema.predicted_codes(out.logits)
    return QueryItem(out.embedding[0], predicted_rows[0].tolist(), None)


def require_image(query: object) -> None:
    """A str query that is not an indexed id must name an existing image file."""
    if isinstance(query, str) and not _is_file(query):
        raise QueryError(f"query {query!r} is neither an indexed id nor an existing image file")


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # name too long, embedded NUL
        return False


def changed_query(index: IndexBackend | None, family: Family, schema: AttributeSchema, encode: Encode, query: object,
                  change: Change | None) -> tuple[np.ndarray, QueryItem, dict[int, int]]:
    """The (changed) vector a search sends to the index, the query item and the parsed change."""
    parsed = schema.parse_change(change)
    item = resolve(query, index, schema, encode)
    return (family.change_one(item.vector, item.current, parsed) if parsed else item.vector), item, parsed


def query_vector(index: IndexBackend | None, family: Family, schema: AttributeSchema, encode: Encode, query: object,
                 change: Change | None) -> tuple[np.ndarray, str | None]:
    """The (changed) vector a search sends to the index, and the query's id when it is indexed."""
    vector, item, _ = changed_query(index, family, schema, encode, query, change)
    return vector, item.id


def search(index: IndexBackend, family: Family, schema: AttributeSchema, encode: Encode, query: object,
           change: Change | None, k: int, where: Where | None, exact: bool, include_query: bool,
           rerank: LabelRerank | None = None) -> list[SearchResult]:
    filters = schema.parse_where(where)
    vector, item, parsed = changed_query(index, family, schema, encode, query, change)
    exclude = [item.id] if item.id is not None and not include_query else None
    if rerank is None or not parsed:
        hits = index.hits(vector[None, :], k, exact=exact, exclude=exclude, where=filters or None)
        return to_results(schema, hits[0])
    count = max(k, rerank.candidates)
    hits = index.hits(vector[None, :], count, exact=exact, exclude=exclude, where=filters or None)[0]
    hits = _with_value_candidates(index, rerank, [hits], vector[None, :], parsed, filters, exact, exclude)[0]
    wanted, changed = wanted_values(np.array([item.current]), np.array([list(parsed)]),
                                    np.array([list(parsed.values())]), NO_CHANGE)
    return to_results(schema, rerank.rerank_hits(index, hits, wanted[0], changed[0], k))


def search_batch(index: IndexBackend, family: Family, schema: AttributeSchema, encode: Encode,
                 queries: Sequence[object], changes: Change | Sequence[Change | None] | None, k: int,
                 where: Where | None, exact: bool, include_query: bool,
                 rerank: LabelRerank | None = None) -> list[list[SearchResult]]:
    """Many queries: ids read in one locked call, images encoded in batches, the family's batched
    arithmetic, and one multi-threaded graph search (two with a rerank: changed queries fetch its
    candidates)."""
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
    if rerank is None or not width or not len(changed):
        hits = index.hits(vectors, k, exact=exact, exclude=exclude, where=filters or None)
    else:
        hits = _reranked_hits(index, rerank, vectors, current, attrs, values, changed, k, exact, exclude, filters)
    decoded: dict = {}
    return [to_results(schema, h, decoded) for h in hits]


def _reranked_hits(index: IndexBackend, rerank: LabelRerank, vectors: np.ndarray, current: np.ndarray,
                   attrs: np.ndarray, values: np.ndarray, changed: np.ndarray, k: int, exact: bool,
                   exclude: list[str | None] | None, filters: dict) -> list[Hits]:
    """Unchanged queries' top k, changed queries' rerank candidates reordered and cut to k."""
    hits: list[Hits | None] = [None] * len(vectors)
    plain = np.setdiff1d(np.arange(len(vectors)), changed)
    for rows, count in ((plain, k), (changed, max(k, rerank.candidates))):
        if len(rows):
            skip = None if exclude is None else [exclude[i] for i in rows.tolist()]
            for i, found in zip(rows.tolist(), index.hits(vectors[rows], count, exact=exact, exclude=skip,
                                                         where=filters or None)):
                hits[i] = found
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}  # queries asking for the same values
    for i in changed.tolist():
        groups.setdefault(tuple(sorted((int(a), int(v)) for a, v in zip(attrs[i], values[i]) if a != NO_CHANGE)),
                          []).append(i)
    for key, rows in groups.items():
        skip = None if exclude is None else [exclude[i] for i in rows]
        pools = _with_value_candidates(index, rerank, [hits[i] for i in rows], vectors[rows], dict(key), filters,
                                       exact, skip)
        for i, pool in zip(rows, pools):
            hits[i] = pool
    wanted, moved = wanted_values(current[changed], attrs[changed], values[changed], NO_CHANGE)
    for n, i in enumerate(changed.tolist()):
        hits[i] = rerank.rerank_hits(index, hits[i], wanted[n], moved[n], k)  # type: ignore[arg-type]
    return hits  # type: ignore[return-value]


def _with_value_candidates(index: IndexBackend, rerank: LabelRerank, pools: list[Hits], vectors: np.ndarray,
                           change: dict[int, int], filters: dict, exact: bool,
                           exclude: list[str | None] | None) -> list[Hits]:
    """The pools (nearest candidates) of queries that ask for the same ``change``, each with its value
    candidates added: one ``where`` search for those whose nearest candidates lack them."""
    where = rerank.value_filter(change, filters)
    rows = [] if where is None else [n for n, pool in enumerate(pools) if rerank.lacks_values(pool, change)]
    if rows:
        skip = None if exclude is None else [exclude[n] for n in rows]
        for n, found in zip(rows, index.hits(vectors[rows], rerank.value_candidates, exact=exact, exclude=skip,
                                             where=where)):
            pools[n] = with_extra(pools[n], found)
    return pools


def _changes(changes: Change | Sequence[Change | None] | None, n: int) -> list[Change | None]:
    if changes is None or isinstance(changes, Mapping):
        return [changes] * n
    if isinstance(changes, (str, bytes)) or not isinstance(changes, Sequence) or len(changes) != n:
        raise QueryError(f"changes must be one mapping for every query or a list of {n} (one per query, None for "
                         f"no change), got {type(changes).__name__}")
    return list(changes)


def _resolve_all(index: IndexBackend, schema: AttributeSchema, encode: Encode,
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
        bad = ((current[id_rows] < UNKNOWN) | (current[id_rows] >= np.asarray(schema.sizes))).any(axis=1)
        for i in np.asarray(id_rows)[bad]:
            check_codes(schema, current[i].tolist(), str(queries[i]))  # raises, naming the item
        for i in id_rows:
            ids[i] = str(queries[i])
    image_rows = [i for i, flag in enumerate(is_id) if not flag]
    for i in image_rows:
        require_image(queries[i])
    if image_rows:
        out = encode([queries[i] for i in image_rows])
        vectors[image_rows] = out.embedding
        current[image_rows] = schema.predicted_codes(out.logits)[0]
    return vectors, current, ids

"""Conditional similarity (the papers' ADDE-C): items similar with respect to one attribute
only, i.e. nearest neighbours in that attribute's chunk of the embedding, re-normalised."""
from __future__ import annotations

import numpy as np

from ..errors import QueryError
from ..index import IndexBackend
from ..index.subspaces import chunks
from ..schema import AttributeSchema, Where
from .search import Encode, SearchResult, resolve, to_results


def similar(index: IndexBackend, schema: AttributeSchema, encode: Encode, query: object, attribute: str, k: int,
            where: Where | None, exact: bool, include_query: bool) -> list[SearchResult]:
    if not isinstance(attribute, str):
        raise QueryError(f"attribute must be an attribute name such as {schema.names[0]!r}, got {attribute!r}")
    a = schema.attribute_index(attribute)
    filters = schema.parse_where(where)
    item = resolve(query, index, schema, encode)
    if index.layout is None:
        raise QueryError("this index has no attribute layout; rebuild it with this fashsdk to use similar()")
    span = index.layout[a]
    vector = chunks(item.vector[None, :], span)
    if not np.isfinite(vector).all() or float(np.abs(vector).sum()) == 0.0:
        raise QueryError(f"the query's {attribute!r} chunk is all zeros, so nothing is similar to it on that attribute")
    exclude = [item.id] if item.id is not None and not include_query else None
    hits = index.hits(vector, k, exact=exact, exclude=exclude, where=filters or None, attribute=a)
    return to_results(schema, hits[0])

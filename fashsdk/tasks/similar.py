"""Conditional similarity (the papers' ADDE-C): items similar with respect to one attribute
only, i.e. nearest neighbours in that attribute's chunk of the embedding, re-normalised."""
from __future__ import annotations

import math

import numpy as np

from ..errors import QueryError
from ..index import IndexBackend
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
    start, stop = index.layout[a]
    part = item.vector[start:stop].astype(np.float32, copy=False)
    norm = math.sqrt(float(np.dot(part, part)))  # NaN or infinity in the chunk makes this NaN or infinity
    if not 0.0 < norm < math.inf:
        raise QueryError(f"the query's {attribute!r} chunk is all zeros (or not finite), so nothing is similar to it on "
                         "that attribute")
    vector = (part / np.float32(norm))[None]  # the chunk, re-normalised, as the subspace graphs hold them
    exclude = [item.id] if item.id is not None and not include_query else None
    hits = index.hits(vector, k, exact=exact, exclude=exclude, where=filters or None, attribute=a)
    return to_results(schema, hits[0])

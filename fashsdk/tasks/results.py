"""What a task returns: results with their attributes decoded, and attribute predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import IndexFileError
from ..index import Hits
from ..schema import UNKNOWN, AttributeSchema


@dataclass(frozen=True)
class SearchResult:
    id: str
    score: float  # cosine similarity to the (manipulated) query, in the searched space
    attributes: dict[str, str | None] = field(default_factory=dict)  # stored labels; None = unknown


@dataclass(frozen=True)
class AttributePrediction:
    value: str
    probability: float


def to_results(schema: AttributeSchema, hits: Hits) -> list[SearchResult]:
    """Results with attributes decoded; plain Python per row (numpy calls on k-row arrays cost
    more than the work). A code outside the schema is a typed error, never a wrong value."""
    names, tables = schema.names, schema.value_tables
    if hits.labels.shape[1:] != (len(names),):
        raise codes_error(schema, hits.ids[:3], hits.labels)
    rows = hits.labels.tolist()
    try:
        return [SearchResult(i, s, {n: t[c] for n, t, c in zip(names, tables, row)})
                for i, s, row in zip(hits.ids, hits.scores.tolist(), rows)]
    except KeyError:
        for item_id, row in zip(hits.ids, rows):
            check_codes(schema, row, item_id)
        raise


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

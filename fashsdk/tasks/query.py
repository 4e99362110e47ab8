"""Turning what a user passes as a query (an indexed id, or an image) into an embedding and
the item's current value per attribute."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..encoding.backends import ModelOutputs
from ..errors import QueryError
from ..index import CatalogIndex, normalize_id
from ..schema import AttributeSchema
from .results import check_codes

Encode = Callable[[Sequence[object]], ModelOutputs]


@dataclass
class QueryItem:
    vector: np.ndarray  # (D,) float32, L2-normalised
    current: list[int]  # value code per attribute: the stored label, else the model's prediction
    id: str | None  # the catalog id when the query is an indexed item


def resolve(query: object, index: CatalogIndex | None, schema: AttributeSchema, encode: Encode) -> QueryItem:
    """An indexed id (a str that is an id wins over a file of the same name), else an image."""
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool) or (
            isinstance(query, str) and index is not None and query in index):
        if index is None:
            raise QueryError("no catalog is indexed: call add(...) or pass index=... to Retriever")
        query_id = normalize_id(query)
        vector, labels, predicted = index.get(query_id)
        current = np.where(labels >= 0, labels, predicted).tolist()
        check_codes(schema, current, query_id)
        return QueryItem(vector.astype(np.float32), current, query_id)
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


__all__ = ["Encode", "QueryItem", "require_image", "resolve"]

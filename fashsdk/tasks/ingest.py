"""Indexing a catalog: encode (id, image) pairs and add them with their known labels, all or nothing."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from ..encoding import Encoder
from ..errors import QueryError
from ..index import CatalogIndex, normalize_id
from ..schema import UNKNOWN, AttributeSchema
from ..sources.preprocess import ImageInput

Labels = Mapping[str, "str | None"]


def add_items(index: CatalogIndex, encoder: Encoder, schema: AttributeSchema,
              items: Iterable[tuple[object, ImageInput]], labels: Mapping[object, Labels] | None,
              skip_errors: bool, progress: Callable[[int], None] | None) -> list[tuple[str, str]]:
    """Encode and index; on any failure the items this call added are removed again before the
    error is raised. Returns the (id, reason) pairs skipped for bad images when ``skip_errors``."""
    codes_of = label_codes(schema, labels)
    unknown = np.full(len(schema.attributes), UNKNOWN, np.int16)
    failures: list[tuple[str, str]] = []
    added: list[str] = []
    try:
        for keys, out, failed in encoder.encode_stream(_new_ids(items, index), skip_errors=skip_errors,
                                                       on_batch=progress):
            failures.extend((str(k), r) for k, r in failed)
            if not keys:
                continue
            codes = np.stack([codes_of.get(k, unknown) for k in keys])
            predicted, _ = schema.predicted_codes(out.logits)
            index.add(keys, out.embedding, codes, predicted)
            added.extend(keys)
    except BaseException:
        try:
            index.remove([k for k in added if k in index])
        except QueryError:  # another thread removed some of them meanwhile
            pass
        raise
    return failures


def label_codes(schema: AttributeSchema, labels: Mapping[object, Labels] | None) -> dict[str, np.ndarray]:
    """Validate every label before any encoding: unknown names fail fast, ids are normalised."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise QueryError(f"labels must map item ids to {{attribute: value}}, got {type(labels).__name__}")
    out: dict[str, np.ndarray] = {}
    for item_id, row in labels.items():
        key = normalize_id(item_id)
        if key in out:
            raise QueryError(f"labels name item {key!r} twice (as {item_id!r} and as another id type)")
        if not isinstance(row, Mapping) or not all(isinstance(v, str) or v is None for v in row.values()):
            raise QueryError(f"labels[{item_id!r}] must map attribute names to value strings (or None), got {row!r}")
        try:
            out[key] = schema.encode(row)
        except QueryError as exc:
            raise QueryError(f"labels[{item_id!r}]: {exc}") from None
    return out


def _new_ids(items: Iterable[tuple[object, ImageInput]], index: CatalogIndex) -> Iterator[tuple[str, ImageInput]]:
    """Normalised ids, refusing repeats in this call and ids already indexed before encoding them."""
    seen: set[str] = set()
    for pair in items:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise QueryError(f"add() takes (id, image) pairs, got {type(pair).__name__}")
        key = normalize_id(pair[0])
        if key in seen:
            raise QueryError(f"id {key!r} appears more than once in this add() call")
        if key in index:
            raise QueryError(f"id {key!r} is already indexed; remove it first to replace it")
        seen.add(key)
        yield key, pair[1]

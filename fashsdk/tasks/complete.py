"""Outfit completion (the papers' ADDE-O): the items of a target category that best complete an
outfit, ranked exactly by the outfit head's distance through one inner product per candidate
(outfit_head.py). The candidates' gallery features are computed once per index state and
grouped by outfit category, so a query scans only its target category's rows."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import QueryError
from ..index import Hits, IndexBackend
from ..schema import AttributeSchema, Where
from .outfit_head import OutfitHead
from .search import Encode, SearchResult, resolve, to_results

MAX_ITEMS = 16  # outfit items per query
FLOAT32_UNIT = 2.0 ** -24  # float32's unit roundoff


@dataclass
class _Group:
    ids: list[str]
    features: np.ndarray  # (n, A p + A) float64: the ranking must match the model's distance to the last bit
    current: np.ndarray  # (n, A) value codes: the stored label, else the prediction
    stored: Hits  # every row's labels, predictions and their probabilities, for the results
    scan: np.ndarray  # the features in float32: half the bytes for the scan over the whole category
    largest_norm: float  # the largest |g|: the float32 scan's rounding bound

    @classmethod
    def of(cls, ids: list[str], features: np.ndarray, current: np.ndarray, stored: Hits) -> "_Group":
        norm = float(np.linalg.norm(features, axis=1).max()) if len(features) else 0.0
        return cls(ids, features, current, stored, features.astype(np.float32), norm)

    def distances(self, rows: np.ndarray, u: np.ndarray, constant: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions into ``rows``, exact float64 distances) of the k nearest, nearest first.

        A float32 scan finds every row that can be among the k nearest: with the features and the
        query rounded once each and d accumulation roundings, its error is below (d + 2) * 2^-24 *
        |g| |u| (doubled here for safety, with the group's largest |g|), so a row whose float32
        distance exceeds the k-th float32 distance by more than twice that bound cannot be in the
        top k. Those few rows are then ranked in float64, exactly as the model's distance."""
        scan = self.scan if len(rows) == len(self.ids) else self.scan[rows]
        approx = scan @ u.astype(np.float32)
        bound = 2.0 * (len(u) + 2) * FLOAT32_UNIT * float(np.linalg.norm(u)) * self.largest_norm
        kth = np.partition(approx, k - 1)[k - 1] if k < len(approx) else approx.max()
        keep = np.flatnonzero(approx <= kth + 2.0 * bound)
        exact = self.features[rows[keep]] @ u + constant
        order = _top(exact, min(k, len(keep)))
        return keep[order], exact[order]


class CompletionTable:
    """Gallery features of every indexed item, by outfit category; rebuilt when the index changes
    (an index without a ``version`` counter is read again on every call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._groups: dict[int, _Group] = {}

    def groups(self, index: IndexBackend, head: OutfitHead) -> dict[int, _Group]:
        version = getattr(index, "version", None)
        key = (id(index), version) if version is not None else None
        with self._lock:
            if key is None or key != self._key:
                self._groups, self._key = self._build(index, head), key
            return self._groups

    @staticmethod
    def _build(index: IndexBackend, head: OutfitHead) -> dict[int, _Group]:
        ids = index.ids
        if not ids:
            raise QueryError("the index is empty: add catalog items before completing outfits")
        vectors, labels, predicted = index.get_many(ids)
        confidence = np.concatenate([h.confidence for h in index.hits_of(ids)])
        current = np.where(labels >= 0, labels, predicted)
        categories = head.categories_of(current)
        features = head.gallery_features(vectors)
        out = {}
        for c in range(len(head.categories)):
            rows = np.flatnonzero(categories == c)
            members = [ids[r] for r in rows]
            stored = Hits(members, np.ones(len(rows), np.float32), labels[rows], predicted[rows], confidence[rows])
            out[c] = _Group.of(members, features[rows], current[rows], stored)
        return out


def complete(index: IndexBackend, head: OutfitHead, table: CompletionTable, schema: AttributeSchema, encode: Encode,
             items: Sequence[object], category: str, k: int, where: Where | None) -> list[SearchResult]:
    """Top-k items of ``category`` for the outfit ``items`` (ids or images), best first; a
    result's score is minus the model's outfit distance D(O, x)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not 1 <= len(items) <= MAX_ITEMS:
        raise QueryError(f"items must be a list of 1 to {MAX_ITEMS} outfit items (ids or images), got {items!r:.80}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    target = head.category_index(category)
    filters = schema.parse_where(where)
    resolved = [resolve(item, index, schema, encode) for item in items]
    current = np.array([r.current for r in resolved], np.int64)
    sources = head.categories_of(current)
    _check_sources(head, schema, [r.id for r in resolved], current, sources)
    u, constant = head.query(np.stack([r.vector for r in resolved]), sources, target)
    group = table.groups(index, head)[target]
    rows = np.arange(len(group.ids))
    for a, allowed in filters.items():
        rows = rows[np.isin(group.current[rows, a], list(allowed))]
    if not len(rows):
        return []
    outfit_ids = {r.id for r in resolved if r.id is not None}
    # the outfit's own items are dropped below
    order, distance = group.distances(rows, u, constant, min(k + len(outfit_ids), len(rows)))
    found = [(int(rows[i]), float(-d)) for i, d in zip(order.tolist(), distance.tolist())
             if group.ids[rows[i]] not in outfit_ids][:k]
    if not found:  # the category holds only the outfit's own items
        return []
    at = np.array([r for r, _ in found], np.int64)
    stored = group.stored  # labels, predictions and their probabilities as indexed when the table was built
    hits = Hits([group.ids[r] for r, _ in found], np.array([d for _, d in found], np.float32), stored.labels[at],
                stored.predicted[at], stored.confidence[at])
    return to_results(schema, hits)


def _top(distance: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest distances, smallest first (ties by position)."""
    part = np.argpartition(distance, k - 1)[:k]
    return part[np.lexsort((part, distance[part]))]


def _check_sources(head: OutfitHead, schema: AttributeSchema, item_ids: list[str | None], current: np.ndarray,
                   sources: np.ndarray) -> None:
    """Every outfit item must belong to an outfit category, else the attention has no row for it."""
    attribute = schema.attributes[head.attribute]
    for item, source, value in zip(item_ids, sources.tolist(), current[:, head.attribute].tolist()):
        if source < 0:
            what = f"item {item!r}" if item is not None else "an uploaded image"
            shown = attribute.values[value] if 0 <= value < len(attribute.values) else "unknown"
            raise QueryError(f"{what} has {attribute.name} {shown!r}, which belongs to no outfit category "
                             f"({', '.join(head.categories)}); leave it out of the outfit")

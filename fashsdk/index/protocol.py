"""What the SDK asks of a catalog index: the one protocol every index backend meets.

``CatalogIndex`` (hnswlib graphs in this process, the default) and ``MilvusIndex`` (a Milvus
collection, Milvus Lite in a local file or a Milvus cluster) both satisfy it, so
``Retriever``, the tasks and the server run unchanged on either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from .reads import Filter, Hits


@runtime_checkable
class IndexBackend(Protocol):
    """Id-keyed, L2-normalised vectors with attribute codes (label, prediction, its probability).

    Writes: ``add`` (new ids), ``upsert``/``update`` (replace), ``remove``, ``set_labels``.
    Reads: ``hits`` (top-k per query, optionally under a ``where`` filter of attribute ->
    allowed codes on each item's current value: stored label, else prediction; or in one
    attribute's subspace), ``get``/``get_many``/``hits_of`` by id.
    """

    dim: int
    num_attributes: int
    layout: list[tuple[int, int]] | None
    info: dict[str, Any]

    @property
    def mode(self) -> str: ...

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool: ...

    def get(self, item_id: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def get_many(self, ids: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def hits_of(self, ids: Sequence[object]) -> list[Hits]: ...

    def hits(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
             where: Filter | None = None, attribute: int | None = None) -> list[Hits]: ...

    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None: ...

    def upsert(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None: ...

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None: ...

    def remove(self, ids: Iterable[object]) -> None: ...

    def set_labels(self, ids: Sequence[object], codes: np.ndarray) -> None: ...

    def prepare_filters(self, attributes: Iterable[int]) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def save(self, directory: str | Path | None = None) -> Path | None: ...

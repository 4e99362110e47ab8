"""What each endpoint does, without HTTP: a ``Retriever``'s tasks for a server's untrusted input.

Two rules the SDK leaves to its caller hold here:
- a query is an id of the index or uploaded bytes, never a client string used as a path (the
  SDK reads a str that is not an id as an image file): ids are checked against the index
  before the call, the encoder refuses anything but bytes, and an id that vanished in between
  is a 404;
- encoding (decode + model) is timed apart from the search, through the encode function the
  tasks take, so /metrics and each response can tell them apart.
"""
from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import FashsdkError, QueryError
from ..index import Hits
from ..retriever import Retriever
from ..schema import Change, Where
from ..tasks import Prediction, SearchResult, predict, search, similar
from ..tasks.search import to_results
from .errors import NotFound
from .images import CatalogImages

Query = str | bytes  # an id of the index, or an uploaded image's bytes


@dataclass
class Timer:
    """One request's time in its worker thread, and the part of it spent encoding (the rest is search)."""

    encode: float = 0.0
    started: float = 0.0
    finished: float = 0.0


@dataclass
class _View:
    """The catalog's ids and current values (label, else prediction), for browsing with filters."""

    ids: list[str]
    codes: np.ndarray  # (n, A) value codes, -1 unknown


class Service:
    """One retriever served to many threads; every method may raise ``FashsdkError`` or ``ApiError``."""

    def __init__(self, retriever: Retriever, images: CatalogImages | None = None,
                 image_url: Callable[[str], str] = lambda item_id: item_id) -> None:
        if retriever.index is None:
            raise QueryError("the server needs a catalog index: pass index=... to Retriever (fashsdk serve --index)")
        self.retriever, self.index, self.schema = retriever, retriever.index, retriever.schema
        self.images, self._image_url = images, image_url
        self._view: _View | None = None
        self._view_lock = threading.Lock()

    # ---- start-up ----------------------------------------------------------------------
    def warm_up(self, filters: bool = False) -> None:
        """Open the engine, run it once and snapshot the catalog, so the first request pays none of it;
        with ``filters``, also build every per-value graph ``where`` walks (else the first filtered
        search on a value builds its own: about 0.4 s on 9k items; all of them take 15 s and 280 MB
        on 44k)."""
        blank = io.BytesIO()
        Image.new("RGB", (64, 80), (200, 200, 200)).save(blank, "PNG")
        self.retriever.encode([blank.getvalue()])
        self._catalog_view()
        if filters:
            self.index.prepare_filters(range(len(self.schema.attributes)))

    # ---- queries -------------------------------------------------------------------------
    def search(self, query: Query, change: Change | None, k: int, where: Where | None, include_query: bool,
               timer: Timer) -> list[dict[str, Any]]:
        r = self.retriever
        with self._checked(query):
            found = search(self.index, r.family, self.schema, self._encoder(timer), query, change, k, where, False,
                           include_query, r.rerank)
        return self.items(found)

    def similar(self, query: Query, attribute: str, k: int, where: Where | None, timer: Timer) -> list[dict[str, Any]]:
        with self._checked(query):
            found = similar(self.index, self.schema, self._encoder(timer), query, attribute, k, where, False, False)
        return self.items(found)

    def predict(self, query: Query, top: int, timer: Timer) -> Prediction:
        with self._checked(query):
            return predict(self.index, self.schema, self._encoder(timer), [query], top)[0]

    def embed(self, query: Query, timer: Timer) -> np.ndarray:
        with self._checked(query):
            if isinstance(query, str):
                return self.index.get(query)[0].astype(np.float32)
            return self._encoder(timer)([query]).embedding[0]

    def _encoder(self, timer: Timer) -> Callable[[Sequence[object]], object]:
        """The tasks' encode function: uploaded bytes only, timed."""
        def encode(images: Sequence[object]):  # type: ignore[no-untyped-def]
            if not all(isinstance(i, (bytes, bytearray)) for i in images):
                raise NotFound("the item is no longer in the catalog index")  # an id removed since it was checked
            start = time.perf_counter()
            try:
                return self.retriever.encode(list(images))
            finally:
                timer.encode += time.perf_counter() - start
        return encode

    @contextlib.contextmanager
    def _checked(self, query: Query) -> Iterator[None]:
        if isinstance(query, str):
            self.require_id(query)
        elif not isinstance(query, (bytes, bytearray)) or not query:
            raise QueryError("upload an image file (JPEG, PNG, WebP, ...); the upload was empty")
        try:
            yield
        except FashsdkError:
            if isinstance(query, str) and query not in self.index:
                raise NotFound(f"unknown item id {query!r}: it was removed from the catalog index") from None
            raise

    def require_id(self, item_id: str) -> None:
        if item_id not in self.index:
            raise NotFound(f"unknown item id {item_id!r}: no item of the catalog index has it "
                           "(POST /v1/browse lists the ids)")

    # ---- catalog -----------------------------------------------------------------------
    def item(self, item_id: str) -> dict[str, Any]:
        self.require_id(item_id)
        try:
            return self.items(to_results(self.schema, self.index.hits_of([item_id])[0]), scored=False)[0]
        except QueryError:
            self.require_id(item_id)
            raise

    def image(self, item_id: str) -> bytes:
        self.require_id(item_id)
        data = self.images.get(item_id) if self.images is not None else None
        if data is None:
            reason = ("the server was started without the catalog's images (fashsdk serve --images DIR_OR_TARS)"
                      if self.images is None else "the catalog's image sources have no file for it")
            raise NotFound(f"no image for item {item_id!r}: {reason}")
        return data

    def browse(self, offset: int, limit: int, where: Where | None) -> tuple[int, list[dict[str, Any]]]:
        """A page of items in index order that match ``where``, and how many match in all."""
        filters = self.schema.parse_where(where)
        for attempt in range(2):
            view = self._catalog_view(refresh=attempt > 0)
            mask = np.ones(len(view.ids), bool)
            for a, values in filters.items():
                mask &= np.isin(view.codes[:, a], np.fromiter(values, np.int64))
            chosen = np.flatnonzero(mask)
            page = [view.ids[i] for i in chosen[offset:offset + limit].tolist()]
            try:
                hits = self.index.hits_of(page) if page else []
            except QueryError:  # an item removed since the snapshot: take a new one
                continue
            return len(chosen), self.items(to_results(self.schema, _joined(hits)) if hits else [], scored=False)
        raise QueryError("the catalog kept changing while it was browsed; retry")

    def _catalog_view(self, refresh: bool = False) -> _View:
        with self._view_lock:
            view = self._view
            if view is None or refresh or len(view.ids) != len(self.index):
                ids = self.index.ids
                codes = np.full((len(ids), len(self.schema.attributes)), -1, np.int16)
                for start in range(0, len(ids), 4096):  # bounded copies of the vectors that get_many returns
                    _, labels, guessed = self.index.get_many(ids[start:start + 4096])
                    codes[start:start + len(labels)] = np.where(labels >= 0, labels, guessed)
                view = self._view = _View(ids, codes)
            return view

    def items(self, results: list[SearchResult], scored: bool = True) -> list[dict[str, Any]]:
        """Results as the JSON objects of the ``Item`` schema: plain dicts, because building a
        pydantic model per result cost more than the graph search on the hot path."""
        images, url = self.images, self._image_url
        return [{"id": r.id, "score": round(float(r.score), 6) if scored else None, "attributes": r.attributes,
                 "predicted": r.predicted, "image": url(r.id) if images is not None and r.id in images else None}
                for r in results]


def _joined(hits: list[Hits]) -> Hits:
    """One-row Hits (from ``hits_of``) as one table, so ``to_results`` decodes them in one pass."""
    return Hits([i for h in hits for i in h.ids], np.concatenate([h.scores for h in hits]),
                np.concatenate([h.labels for h in hits]), np.concatenate([h.predicted for h in hits]),
                np.concatenate([h.confidence for h in hits]))

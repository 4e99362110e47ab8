"""``Retriever``: the SDK's front door. Load a bundle, index a catalog, search with changes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .backends import EmbeddingBackend, ModelOutputs, open_backend
from .bundle import Bundle
from .encoder import Encoder
from .errors import ImageError, IndexFileError, QueryError
from .index import CatalogIndex, normalize_id
from .manipulation import indicator, manipulate, parse_change, predicted_codes
from .preprocess import ImageInput
from .schema import UNKNOWN

Labels = Mapping[str, "str | None"]


@dataclass(frozen=True)
class SearchResult:
    id: str
    score: float  # cosine similarity to the (manipulated) query
    attributes: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributePrediction:
    value: str
    probability: float


class Retriever:
    """Encode images with a bundle's fastest engine and search an id-keyed catalog index.

    Args:
        bundle: a bundle directory (or a loaded ``Bundle``).
        index: an index directory saved by ``save_index`` (optional; build one with ``add``).
        backend: "auto" (fastest engine present) or a name such as "onnxruntime-cpu-fp32".
        threads: inference threads (default: the cores this process may use).
    """

    def __init__(self, bundle: str | os.PathLike | Bundle, index: str | os.PathLike | CatalogIndex | None = None,
                 *, backend: str = "auto", threads: int | None = None, batch_size: int = 64) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.schema = self.bundle.schema
        self._backend_name, self._threads, self._batch_size = backend, threads, batch_size
        self._encoder: Encoder | None = None
        self.index: CatalogIndex | None = None
        if index is not None:
            self.index = index if isinstance(index, CatalogIndex) else CatalogIndex.load(index)
            self._check_index(self.index)

    # ---- model ---------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            backend: EmbeddingBackend = open_backend(self.bundle, self._backend_name, self._threads)
            self._encoder = Encoder(backend, self.bundle.preprocess, batch_size=self._batch_size)
        return self._encoder

    @property
    def backend_name(self) -> str:
        return self.encoder.backend.name

    def encode(self, images: Sequence[ImageInput]) -> ModelOutputs:
        """Embeddings (N, D) and logits (N, J) for a list of images."""
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            images = [images]  # type: ignore[list-item]
        return self.encoder.encode(list(images))

    def predict(self, image: ImageInput) -> dict[str, AttributePrediction]:
        """Each attribute's most likely value and its probability."""
        out = self.encode([image])
        codes, probs = predicted_codes(self.schema, out.logits)
        return {a.name: AttributePrediction(a.values[int(codes[0, i])], float(probs[0, i]))
                for i, a in enumerate(self.schema.attributes)}

    # ---- catalog ---------------------------------------------------------------------
    def _new_index(self) -> CatalogIndex:
        return CatalogIndex(self.bundle.dim, len(self.schema.attributes),
                            info={"bundle_sha256": self.bundle.sha256(), "attributes": self.schema.names})

    def _check_index(self, index: CatalogIndex) -> None:
        if index.dim != self.bundle.dim or index.num_attributes != len(self.schema.attributes):
            raise IndexFileError(f"the index holds {index.dim}-d vectors with {index.num_attributes} attributes, "
                                 f"the bundle makes {self.bundle.dim}-d with {len(self.schema.attributes)}: "
                                 "it was built with another model; rebuild it with this bundle")
        built_with = index.info.get("bundle_sha256")
        if built_with is not None and built_with != self.bundle.sha256():
            raise IndexFileError("the index was built with a different bundle (manifest sha256 differs); "
                                 "rebuild the index with this bundle so query and catalog vectors match")

    def add(self, items: Iterable[tuple[object, ImageInput]], labels: Mapping[str, Labels] | None = None, *,
            skip_errors: bool = False, progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
        """Encode and index (id, image) pairs; ``labels[id]`` gives known attributes.

        Returns the (id, reason) pairs skipped for bad images when ``skip_errors`` is set;
        otherwise the first bad image raises ImageError naming its id.
        """
        if self.index is None:
            self.index = self._new_index()
        failures: list[tuple[str, str]] = []
        pairs = ((normalize_id(i), img) for i, img in items)
        for keys, out, failed in self.encoder.encode_stream(pairs, skip_errors=skip_errors, on_batch=progress):
            failures.extend((str(k), r) for k, r in failed)
            if not keys:
                continue
            codes = np.stack([self.schema.encode((labels or {}).get(k, {})) for k in keys])
            predicted, _ = predicted_codes(self.schema, out.logits)
            self.index.add(keys, out.embedding, codes, predicted)
        return failures

    def remove(self, ids: Iterable[object]) -> None:
        self._require_index().remove(ids)

    def save_index(self, directory: str | os.PathLike) -> Path:
        return self._require_index().save(directory)

    def _require_index(self) -> CatalogIndex:
        if self.index is None:
            raise QueryError("no catalog is indexed: call add(...) or pass index=... to Retriever")
        return self.index

    # ---- search ----------------------------------------------------------------------
    def query_vector(self, query: object, change: Mapping[str, str] | None = None) -> tuple[np.ndarray, str | None]:
        """The (manipulated) query vector, and the query's own id when it is indexed."""
        parsed = parse_change(self.schema, change)
        query_id: str | None = None
        if isinstance(query, (int, np.integer)) and not isinstance(query, bool) or (
                isinstance(query, str) and self.index is not None and query in self.index):
            query_id = normalize_id(query)
            vector, labels, predicted = self._require_index().get(query_id)
            current = np.where(labels != UNKNOWN, labels, predicted)
        else:
            if isinstance(query, str) and not Path(query).exists():
                raise QueryError(f"query {query!r} is neither an indexed id nor an existing image file")
            try:
                out = self.encode([query])  # type: ignore[list-item]
            except ImageError:
                raise
            vector = out.embedding[0]
            current, _ = predicted_codes(self.schema, out.logits)
            current = current[0]
        if not parsed:
            return vector.astype(np.float32), query_id
        ind = indicator(self.schema, current, parsed)
        return manipulate(vector, self.bundle.prototypes, ind), query_id

    def search(self, query: object, change: Mapping[str, str] | None = None, k: int = 10, *,
               exact: bool = False, include_query: bool = False) -> list[SearchResult]:
        """Top-k catalog items for ``query`` (an indexed id or an image) after ``change``.

        ``change`` maps attribute names to wanted values, e.g. {"baseColour": "Red"};
        the query item itself is left out of its own results unless ``include_query``.
        """
        index = self._require_index()
        vector, query_id = self.query_vector(query, change)
        exclude = [query_id] if (query_id is not None and not include_query) else None
        ids, scores = index.search(vector[None, :], k, exact=exact, exclude=exclude)
        codes = index.codes_of(ids[0])
        return [SearchResult(i, float(s), self.schema.decode(c)) for i, s, c in zip(ids[0], scores[0], codes)]

    def describe(self) -> dict[str, Any]:
        """What this retriever runs: bundle, engine, schema, catalog size."""
        return {"bundle": str(self.bundle.directory), "backend": self.backend_name,
                "attributes": {a.name: list(a.values) for a in self.schema.attributes},
                "dim": self.bundle.dim, "catalog_items": len(self.index) if self.index else 0}

"""``Retriever``: the SDK's front door. Load a bundle, index a catalog, search with changes."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .backends import EmbeddingBackend, ModelOutputs, open_backend
from .bundle import Bundle
from .encoder import Encoder
from .errors import BundleError, FashsdkError, IndexFileError, QueryError
from .index import CatalogIndex, normalize_id
from .manipulation import manipulate_one, parse_change, predicted_codes
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

    Searching is safe from many threads while other threads add or remove items; every
    result reflects one committed state of the index.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle, index: str | os.PathLike | CatalogIndex | None = None,
                 *, backend: str = "auto", threads: int | None = None, batch_size: int = 64) -> None:
        for name, value in (("threads", threads), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise QueryError(f"{name} must be a positive integer, got {value!r}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.schema = self.bundle.schema
        # per-query lookups prepared once: prototypes as contiguous rows, code -> value tables
        self._prototype_rows = np.ascontiguousarray(self.bundle.prototypes.T, dtype=np.float32)
        self._offsets, self._sizes, self._names = self.schema.offsets, self.schema.sizes, self.schema.names
        self._value_tables: list[dict[int, str | None]] = [
            {UNKNOWN: None, **dict(enumerate(a.values))} for a in self.schema.attributes]
        self._backend_name, self._threads, self._batch_size = backend, threads, batch_size
        self._encoder: Encoder | None = None
        self._encoder_lock = threading.Lock()
        self.index: CatalogIndex | None = None
        if index is not None:
            self.index = index if isinstance(index, CatalogIndex) else CatalogIndex.load(index)
            self._check_index(self.index)

    # ---- model ---------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._encoder_lock:  # concurrent first searches open one engine, not several
                if self._encoder is None:
                    self._encoder = Encoder(self._open_backend(), self.bundle.preprocess, batch_size=self._batch_size)
        return self._encoder

    def _open_backend(self) -> EmbeddingBackend:
        """Open the engine and check it against its manifest once, with one blank image.

        A model that disagrees with the manifest (input size, embedding or logit width) is a
        BundleError here, instead of a native error or a wrong answer on the first real query.
        """
        where = f"bundle {str(self.bundle.directory)!r}"
        try:
            backend: EmbeddingBackend = open_backend(self.bundle, self._backend_name, self._threads)
        except FashsdkError:
            raise
        except Exception as exc:
            raise BundleError(f"{where}: its engine could not be opened ({type(exc).__name__}: {str(exc)[:300]})") from None
        spec = self.bundle.preprocess
        try:
            out = backend.run(np.zeros((1, 3, spec.height, spec.width), np.float32))
            shapes = (np.shape(out.embedding), np.shape(out.logits))
        except Exception as exc:
            raise BundleError(f"{where}: the model rejects the {spec.height}x{spec.width} input its manifest's "
                              f"preprocess asks for ({type(exc).__name__}: {str(exc)[:300]})") from None
        expected = ((1, self.bundle.dim), (1, self.schema.total_values))
        if shapes != expected:
            raise BundleError(f"{where}: the model outputs embedding/logits of shapes {shapes}, the manifest "
                              f"describes {expected}; the model and manifest do not belong together")
        return backend

    @property
    def backend_name(self) -> str:
        return self.encoder.backend.name

    def encode(self, images: Sequence[ImageInput]) -> ModelOutputs:
        """Embeddings (N, D) and logits (N, J) for a list of images (or one image)."""
        single = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)
        if isinstance(images, single) or (isinstance(images, np.ndarray) and images.ndim != 4):
            images = [images]  # type: ignore[list-item]
        images = list(images)
        if not images:
            return ModelOutputs(np.zeros((0, self.bundle.dim), np.float32),
                                np.zeros((0, self.schema.total_values), np.float32))
        return self.encoder.encode(images)

    def predict(self, image: ImageInput) -> dict[str, AttributePrediction]:
        """Each attribute's most likely value and its probability."""
        out = self.encode([image])
        codes, probs = predicted_codes(self.schema, out.logits)
        return {a.name: AttributePrediction(a.values[int(codes[0, i])], float(probs[0, i]))
                for i, a in enumerate(self.schema.attributes)}

    # ---- catalog ---------------------------------------------------------------------
    def _new_index(self) -> CatalogIndex:
        return CatalogIndex(self.bundle.dim, len(self.schema.attributes),
                            info={"bundle_sha256": self.bundle.sha256(), "embedding_sha256": self.bundle.embedding_sha256(),
                                  "attributes": self.schema.names})

    def _check_index(self, index: CatalogIndex) -> None:
        if index.dim != self.bundle.dim or index.num_attributes != len(self.schema.attributes):
            raise IndexFileError(f"the index holds {index.dim}-d vectors with {index.num_attributes} attributes, "
                                 f"the bundle makes {self.bundle.dim}-d with {len(self.schema.attributes)}: "
                                 "it was built with another model; rebuild it with this bundle")
        space, built_with = index.info.get("embedding_sha256"), index.info.get("bundle_sha256")
        if space is not None:  # engines registered since indexing do not matter, the embedding space does
            mismatch = space != self.bundle.embedding_sha256()
        else:  # indexes from before embedding_sha256 existed: the whole manifest must match
            mismatch = built_with is not None and built_with != self.bundle.sha256()
        if mismatch:
            raise IndexFileError("the index was built with a different bundle (model, prototypes or schema differ); "
                                 "rebuild the index with this bundle so query and catalog vectors match")

    def add(self, items: Iterable[tuple[object, ImageInput]], labels: Mapping[object, Labels] | None = None, *,
            skip_errors: bool = False, progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
        """Encode and index (id, image) pairs; ``labels[id]`` gives known attributes.

        All or nothing: if anything fails (a bad image without ``skip_errors``, a repeated
        or already indexed id), the items this call added are removed again before the
        error is raised. Returns the (id, reason) pairs skipped for bad images when
        ``skip_errors`` is set; otherwise the first bad image raises ImageError naming its id.
        """
        if self.index is None:
            self.index = self._new_index()
        index = self.index
        codes_of = self._label_codes(labels)
        failures: list[tuple[str, str]] = []
        added: list[str] = []
        try:
            for keys, out, failed in self.encoder.encode_stream(self._new_ids(items, index), skip_errors=skip_errors,
                                                                on_batch=progress):
                failures.extend((str(k), r) for k, r in failed)
                if not keys:
                    continue
                codes = np.stack([codes_of.get(k, self._unknown) for k in keys])
                predicted, _ = predicted_codes(self.schema, out.logits)
                index.add(keys, out.embedding, codes, predicted)
                added.extend(keys)
        except BaseException:
            try:
                index.remove([k for k in added if k in index])
            except QueryError:  # another thread removed some of them meanwhile
                pass
            raise
        return failures

    @property
    def _unknown(self) -> np.ndarray:
        return np.full(len(self.schema.attributes), UNKNOWN, np.int16)

    def _label_codes(self, labels: Mapping[object, Labels] | None) -> dict[str, np.ndarray]:
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
                out[key] = self.schema.encode(row)
            except QueryError as exc:
                raise QueryError(f"labels[{item_id!r}]: {exc}") from None
        return out

    @staticmethod
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
            current = [p if c == UNKNOWN else c for c, p in zip(labels.tolist(), predicted.tolist())]
            self._check_codes(current, query_id)
        else:
            if isinstance(query, str) and not _is_file(query):
                raise QueryError(f"query {query!r} is neither an indexed id nor an existing image file")
            out = self.encode([query])  # type: ignore[list-item]
            vector = out.embedding[0]
            predicted_rows, _ = predicted_codes(self.schema, out.logits)
            current = predicted_rows[0].tolist()
        if not parsed:
            return vector.astype(np.float32), query_id
        return manipulate_one(vector, self._prototype_rows, self._offsets, current, parsed), query_id

    def search(self, query: object, change: Mapping[str, str] | None = None, k: int = 10, *,
               exact: bool = False, include_query: bool = False) -> list[SearchResult]:
        """Top-k catalog items for ``query`` (an indexed id or an image) after ``change``.

        ``change`` maps attribute names to wanted values, e.g. {"baseColour": "Red"}
        (a dict holds one value per attribute; the CLI refuses a repeated --change);
        the query item itself is left out of its own results unless ``include_query``.
        A str that is an indexed id is the id, even if a file of that name exists;
        otherwise it must be an image file. ``k`` above the catalog size returns every item.
        Raises QueryError / ImageError / IndexFileError (all FashsdkError) on bad input.
        """
        index = self._require_index()
        vector, query_id = self.query_vector(query, change)
        exclude = [query_id] if (query_id is not None and not include_query) else None
        # codes come from the same locked read as the ids: a concurrent remove() cannot race them
        ids, scores, codes = index.search_with_codes(vector[None, :], k, exact=exact, exclude=exclude)
        return self._results(ids[0], scores[0], codes[0])

    def _results(self, ids: list[str], scores: np.ndarray, codes: np.ndarray) -> list[SearchResult]:
        """Results with attributes decoded; plain Python per row (numpy calls on k-row arrays
        cost more than the work). A code outside the schema is a typed error, never a
        silently wrong value."""
        if codes.shape[1:] != (len(self._names),):
            raise self._codes_error(ids[:3], codes)
        names, tables = self._names, self._value_tables
        rows = codes.tolist()
        try:
            return [SearchResult(i, s, {n: t[c] for n, t, c in zip(names, tables, row)})
                    for i, s, row in zip(ids, scores.tolist(), rows)]
        except KeyError:
            for item_id, row in zip(ids, rows):
                self._check_codes(row, item_id)
            raise

    def _check_codes(self, codes: Sequence[int], item_id: str) -> None:
        """One item's codes must fit the schema: an out-of-range code would silently pick
        another value's prototype or label."""
        if len(codes) != len(self._sizes) or not all(UNKNOWN <= c < n for c, n in zip(codes, self._sizes)):
            raise self._codes_error(item_id, codes)

    def _codes_error(self, item_ids: str | list[str], codes: object) -> IndexFileError:
        shape = np.shape(codes)
        if shape[-1:] != (len(self._sizes),):
            return IndexFileError(f"index items {item_ids!r} have attribute codes of shape {shape}, the bundle's "
                                  f"schema has {len(self._sizes)} attributes; rebuild the index with this bundle")
        return IndexFileError(f"index item {item_ids!r} has attribute codes {list(codes)} outside the "  # type: ignore[call-overload]
                              f"bundle's schema (value counts {self._sizes}); rebuild the index with this bundle")

    def describe(self) -> dict[str, Any]:
        """What this retriever runs: bundle, engine, schema, catalog size."""
        return {"bundle": str(self.bundle.directory), "backend": self.backend_name,
                "attributes": {a.name: list(a.values) for a in self.schema.attributes},
                "dim": self.bundle.dim, "catalog_items": len(self.index) if self.index else 0}


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # name too long, embedded NUL
        return False

"""``Retriever``: the SDK's front door. Load a bundle, index a catalog, search with changes.

The path of an image: ``sources`` (bytes, decoding, preprocessing) -> ``encoding`` (the
bundle's engine) -> ``families`` (how a change moves the query) -> ``index`` (graphs and
exact re-rank) -> ``tasks`` (search, similar) -> ``SearchResult``.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from .bundle import Bundle
from .encoding import Encoder, ModelOutputs, open_checked_backend
from .errors import IndexFileError, QueryError
from .families import Family
from .index import CatalogIndex, IndexBackend
from .index.milvus_target import is_milvus_address
from .limits import Limits
from .schema import Change, Where
from .sources.preprocess import ImageInput
from .tasks import Prediction, SearchResult, predict, query_vector, search, search_batch, similar
from .tasks.complete import CompletionTable, complete
from .tasks.label_rerank import LabelRerank
from .tasks.outfit_head import OutfitHead
from .tasks.ingest import IngestReport, Labels, add_items, index_catalog, label_codes
from .tasks.predict import SINGLE
from .tasks.shards import ShardRun, embed_shards, index_from_shards
from .tasks.shards_ray import embed_shards_ray
from .sources.labels import read_labels

log = logging.getLogger("fashsdk")


class Retriever:
    """Encode images with a bundle's fastest engine and search an id-keyed catalog index.

    Args:
        bundle: a bundle directory (or a loaded ``Bundle``).
        index: an index directory saved by ``save_index``, a ``milvus://`` address (a Milvus Lite
            file or a Milvus server: fashsdk.index.milvus_target; created empty for this bundle
            if it holds no catalog yet), or an index object (``CatalogIndex``, ``MilvusIndex``).
            Optional: without one, ``add`` builds an embedded index in memory.
        backend: "auto" (fastest engine present) or a name such as "onnxruntime-cpu-fp32".
        threads: inference threads (default: the cores this process may use).
        trusted_keys: public key files; bundle and index must then be signed by one of them
            (default: the files FASHSDK_TRUSTED_KEYS names; none: unsigned folders load).
        limits: per-request limits (results, batch size, changes, filter values: fashsdk.limits).

    Searching is safe from many threads while other threads add or remove items; every
    result reflects one committed state of the index.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle, index: str | os.PathLike | IndexBackend | None = None,
                 *, backend: str = "auto", threads: int | None = None, batch_size: int = 64,
                 trusted_keys: Iterable[str | os.PathLike] | None = None, limits: Limits = Limits()) -> None:
        for name, value in (("threads", threads), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise QueryError(f"{name} must be a positive integer, got {value!r}")
        self.limits = limits
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, trusted_keys=trusted_keys)
        log.info("bundle %s: family %s, %d-d embedding, %d attributes", self.bundle.directory, self.bundle.family_name,
                 self.bundle.dim, len(self.bundle.schema.attributes))
        self.schema = self.bundle.schema
        self.family: Family = self.bundle.family
        self.rerank: LabelRerank | None = LabelRerank.from_bundle(self.bundle)  # None: rank by cosine alone
        self._backend_name, self._threads, self._batch_size = backend, threads, batch_size
        self._encoder: Encoder | None = None
        self._encoder_lock = threading.Lock()
        self.index: IndexBackend | None = None
        self._outfit_head: OutfitHead | None = None  # read from the bundle on the first complete()
        self._completion = CompletionTable()
        if index is not None:
            self.index = self._open_index(index, trusted_keys)
            self._check_index(self.index)
            log.info("index %s: %d items (%s)", index, len(self.index), self.index.mode)

    # ---- model ---------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._encoder_lock:  # concurrent first searches open one engine, not several
                if self._encoder is None:
                    backend = open_checked_backend(self.bundle, self._backend_name, self._threads)
                    log.info("engine %s opened", backend.name)
                    self._encoder = Encoder(backend, self.bundle.preprocess, batch_size=self._batch_size)
        return self._encoder

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

    def predict(self, item: object, top: int = 3) -> Prediction:
        """Each attribute's ``top`` most likely values with probabilities, best first, for an image;
        for an indexed id, its stored label (source "label") else the value predicted when it was
        indexed (source "indexed")."""
        return self.predict_many([item], top)[0]

    def predict_many(self, items: Sequence[object], top: int = 3) -> list[Prediction]:
        """``predict`` for several images and ids; images go through the model in one batch."""
        if isinstance(items, SINGLE) or not isinstance(items, Sequence):
            raise QueryError("predict_many takes a list of images or ids; use predict for one")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise QueryError(f"top must be a positive integer, got {top!r}")
        self.limits.check(batch=len(items))
        return predict(self.index, self.schema, self.encode, list(items), top)

    # ---- catalog ---------------------------------------------------------------------
    def _open_index(self, index: str | os.PathLike | IndexBackend,
                    trusted_keys: Iterable[str | os.PathLike] | None) -> IndexBackend:
        if is_milvus_address(index):
            from .index.milvus_index import MilvusIndex

            return MilvusIndex.connect(str(index), dim=self.bundle.dim, num_attributes=len(self.schema.attributes),
                                       layout=list(self.bundle.layout.values()), info=self._index_info())
        if isinstance(index, (str, os.PathLike)):
            return CatalogIndex.load(index, trusted_keys)
        if not isinstance(index, IndexBackend):
            raise QueryError(f"index must be a folder, a milvus:// address or an index object, got {type(index).__name__}")
        return index

    def _index_info(self) -> dict[str, Any]:
        return {"bundle_sha256": self.bundle.sha256(), "embedding_sha256": self.bundle.embedding_sha256(),
                "attributes": self.schema.names}

    def _writable_index(self) -> IndexBackend:
        """The index that writes go to, made empty for this bundle on the first write."""
        if self.index is None:
            self.index = self._new_index()
        return self.index

    def _new_index(self) -> CatalogIndex:
        return CatalogIndex(self.bundle.dim, len(self.schema.attributes), layout=list(self.bundle.layout.values()),
                            info=self._index_info())

    def _check_index(self, index: IndexBackend) -> None:
        if index.dim != self.bundle.dim or index.num_attributes != len(self.schema.attributes):
            raise IndexFileError(f"the index holds {index.dim}-d vectors with {index.num_attributes} attributes, "
                                 f"the bundle makes {self.bundle.dim}-d with {len(self.schema.attributes)}: "
                                 "it was built with another model; rebuild it with this bundle")
        space = index.info.get("embedding_sha256")  # absent: an index built by hand, which its maker vouches for
        if space is not None and space != self.bundle.embedding_sha256():
            raise IndexFileError("the index was built with a different bundle (model, schema or preprocessing "
                                 "differ); rebuild the index with this bundle so query and catalog vectors match")

    def add(self, items: Iterable[tuple[object, ImageInput]], labels: Mapping[object, Labels] | None = None, *,
            skip_errors: bool = False, progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
        """Encode and index (id, image) pairs; ``labels[id]`` gives known attributes.

        All or nothing: if anything fails (a bad image without ``skip_errors``, a repeated
        or already indexed id), the items this call added are removed again before the
        error is raised. Returns the (id, reason) pairs skipped for bad images when
        ``skip_errors`` is set; otherwise the first bad image raises ImageError naming its id.
        """
        return add_items(self._writable_index(), self.encoder, self.schema, items, labels, skip_errors, progress)

    def upsert(self, items: Iterable[tuple[object, ImageInput]], labels: Mapping[object, Labels] | None = None, *,
               skip_errors: bool = False, progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
        """Like ``add``, but an id already indexed has its image (vector) and labels replaced."""
        return add_items(self._writable_index(), self.encoder, self.schema, items, labels, skip_errors, progress,
                         upsert=True)

    def set_labels(self, labels: Mapping[object, Labels]) -> None:
        """Replace the stored labels of indexed items, keeping their vectors ({id: {attribute: value or None}};
        an attribute left out or None becomes unknown, so the model's prediction is used)."""
        codes = label_codes(self.schema, labels)
        self._require_index().set_labels(list(codes), np.stack(list(codes.values())) if codes else
                                          np.zeros((0, len(self.schema.attributes)), np.int16))

    def index_catalog(self, labels_file: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike]
                      | None = None, *, id_column: str = "id", path_column: str | None = None,
                      value_map: Mapping[str, Mapping[str, str]] | None = None, split: str | None = None,
                      split_column: str | None = "split", strict: bool = False, upsert: bool = False,
                      progress: Callable[[int], None] | None = None) -> IngestReport:
        """Index a labels CSV and its images, accounting for every row (see ``IngestReport``).

        An image belongs to the row whose id equals its file name without the extension, in the
        ``images`` folders or tar shards, or is named by the row's ``path_column``. Label cells
        match values ignoring case and separators, or through ``value_map`` ({attribute: {raw:
        value}}); cells that match nothing are stored as unknown and reported with the closest
        value. Bad rows are skipped and reported; ``strict`` makes them an error instead.
        """
        return index_catalog(self._writable_index(), self.encoder, self.schema, labels_file, images,
                             id_column=id_column, path_column=path_column, value_map=value_map, split=split,
                             split_column=split_column, strict=strict, upsert=upsert, progress=progress)

    def embed_shards(self, labels_file: str | os.PathLike, images: Sequence[str | os.PathLike],
                     out: str | os.PathLike, *, id_column: str = "id", split: str | None = None,
                     split_column: str | None = "split", progress: Callable[[int], None] | None = None,
                     ray: bool = False, address: str | None = None, actors: int | None = None) -> ShardRun:
        """Embed each image source (a tar shard or a folder) into one Parquet shard under ``out``,
        for the ids of the labels CSV; resumable (recorded shards are skipped). Needs pyarrow.
        With ``ray`` (or an ``address``), the same shards are computed on Ray Data."""
        rows, _ = read_labels(labels_file, self.schema, id_column=id_column, split_column=split_column, split=split)
        if ray or address:
            return embed_shards_ray(self.bundle.directory, rows.ids, rows.codes, images, out, address=address,
                                    actors=actors, threads=self._threads or 1)
        return embed_shards(self.encoder, self.schema, self.bundle.embedding_sha256(), self.bundle.dim, rows.ids,
                            rows.codes, images, out, progress)

    def index_shards(self, directory: str | os.PathLike) -> int:
        """Add the items of Parquet shards made by ``embed_shards`` with this bundle (no re-encoding)."""
        return index_from_shards(self._writable_index(), self.schema, self.bundle.embedding_sha256(), directory)

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id from the index in memory (``save_index`` writes it)."""
        self._require_index().remove(ids)

    def save_index(self, directory: str | os.PathLike | None = None) -> Path | None:
        """Write the embedded index to ``directory`` (a new generation, switched atomically); a Milvus
        index stores every write itself, so for it this only seals recent writes (no directory)."""
        index = self._require_index()
        if directory is None and isinstance(index, CatalogIndex):
            raise QueryError("save_index needs a directory for the embedded index, e.g. save_index('runs/index')")
        return index.save(directory)

    def _require_index(self) -> IndexBackend:
        if self.index is None:
            raise QueryError("no catalog is indexed: call add(...) or pass index=... to Retriever")
        return self.index

    # ---- tasks -----------------------------------------------------------------------
    def query_vector(self, query: object, change: Change | None = None) -> tuple[np.ndarray, str | None]:
        """The (changed) vector ``search`` would send to the index, and the query's id when indexed."""
        return query_vector(self.index, self.family, self.schema, self.encode, query, change)

    def search(self, query: object, change: Change | None = None, k: int = 10, *, where: Where | None = None,
               exact: bool = False, include_query: bool = False) -> list[SearchResult]:
        """Top-k catalog items for ``query`` (an indexed id or an image) after ``change``.

        ``change`` maps attribute names to wanted values, e.g. {"baseColour": "Red"}; several
        attributes change together. ``where`` keeps only items whose stored (else predicted)
        values match, e.g. {"gender": "Women", "usage": ["Casual", "Sports"]}. With a change, a
        bundle that carries a label rerank reorders the nearest candidates, and the nearest items
        whose current values are the wanted ones, by how likely each has the wanted values
        (fashsdk.tasks.label_rerank). The query item
        itself is left out of its own results unless ``include_query``. A str that is an indexed
        id is the id, even if a file of that name exists; otherwise it must be an image file.
        ``k`` above the number of matching items returns them all. Raises QueryError /
        ImageError / IndexFileError (all FashsdkError) on bad input.
        """
        self.limits.check(k=k, change=change, where=where)
        return search(self._require_index(), self.family, self.schema, self.encode, query, change, k, where,
                      exact, include_query, self.rerank)

    def search_batch(self, queries: Sequence[object], changes: Change | Sequence[Change | None] | None = None,
                     k: int = 10, *, where: Where | None = None, exact: bool = False,
                     include_query: bool = False) -> list[list[SearchResult]]:
        """``search`` for many queries in one call: one change for all, or one per query (None = no change)."""
        self.limits.check(k=k, batch=len(queries) if isinstance(queries, Sequence) else None, where=where,
                          change=changes if isinstance(changes, Mapping) else None)
        for change in changes if isinstance(changes, Sequence) and not isinstance(changes, (str, bytes)) else ():
            self.limits.check(change=change)
        return search_batch(self._require_index(), self.family, self.schema, self.encode, queries, changes, k,
                            where, exact, include_query, self.rerank)

    def complete(self, items: Sequence[object], category: str, k: int = 10, *,
                 where: Where | None = None) -> list[SearchResult]:
        """The items of ``category`` that best complete the outfit ``items`` (ids or images), ranked by
        the bundle's outfit head (``python -m export outfit-head``); a score is minus the model's
        outfit distance."""
        self.limits.check(k=k, where=where)
        if self._outfit_head is None:
            self._outfit_head = OutfitHead.from_bundle(self.bundle)
        return complete(self._require_index(), self._outfit_head, self._completion, self.schema, self.encode,
                        items, category, k, where)

    def similar(self, query: object, attribute: str, k: int = 10, *, where: Where | None = None,
                exact: bool = False, include_query: bool = False) -> list[SearchResult]:
        """Items similar to ``query`` with respect to ``attribute`` only (e.g. the same colour,
        whatever the garment): nearest neighbours in that attribute's subspace."""
        self.limits.check(k=k, where=where)
        if not self.bundle.attribute_subspaces:
            raise QueryError(f"this bundle's model ({self.bundle.manifest['model'].get('architecture')}) searches one "
                             "retrieval feature without per-attribute subspaces, so similar() has nothing to compare "
                             "on one attribute; use a bundle of the adde, chunk_replace or fsn family")
        return similar(self._require_index(), self.schema, self.encode, query, attribute, k, where, exact,
                       include_query)

    def describe(self) -> dict[str, Any]:
        """What this retriever runs: bundle, family, engine, schema, catalog size."""
        return {"bundle": str(self.bundle.directory), "family": self.family.name, "backend": self.backend_name,
                "label_rerank": self.rerank is not None,
                "attributes": {a.name: list(a.values) for a in self.schema.attributes},
                "dim": self.bundle.dim, "catalog_items": len(self.index) if self.index else 0}

"""Embeddings as Parquet shards: the batch half of indexing, resumable, and an index built from them.

``embed_shards`` turns each image source (one tar shard or one folder) into one Parquet file of
(id, embedding, labels, predicted values, their probabilities) for the ids of a labels CSV. One
source is one unit of work: it is written under a temporary name, renamed when complete, and
then recorded with its sha256 in ``shards.json`` (written atomically). A re-run skips the
sources already recorded; a killed run leaves at most a temporary file, which the next run
removes, never a half shard under a recorded name. ``shards.json`` also pins the bundle's
embedding (its sha256, attribute names and width): ``index_from_shards`` checks every file's
sha256 before pyarrow reads it and refuses shards of another embedding.

Needs pyarrow (``pip install 'fashsdk[shards]'``).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..encoding import Encoder
from ..errors import CatalogError, IndexFileError
from ..files import atomic_write_json, contained_file, read_json, sha256_file
from ..index import IndexBackend
from ..schema import AttributeSchema
from ..sources.images import ImageLocator

MANIFEST = "shards.json"
FORMAT = 1
TEMPORARY = re.compile(r"^\.part-\d{5}-.*\.parquet\.\d+\.tmp$")
INSTALL_HINT = "Parquet shards need pyarrow: pip install 'fashsdk[shards]'"


@dataclass
class ShardRun:
    """What one ``embed_shards`` call did."""

    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    items: int = 0
    without_row: int = 0  # images whose id is not in the labels CSV (not embedded)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of undecodable images
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"written": self.written, "reused": self.reused, "items_embedded": self.items,
                "images_without_row": self.without_row, "undecodable": [list(f) for f in self.failures[:50]],
                "undecodable_count": len(self.failures), "seconds": round(self.seconds, 2)}


def _arrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError(INSTALL_HINT) from None
    return pa, pq


def shard_name(source: Path, position: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[:80] or "source"
    return f"part-{position:05d}-{stem}.parquet"


def embed_shards(encoder: Encoder, schema: AttributeSchema, embedding_sha256: str, dim: int, ids: Sequence[str],
                 codes: np.ndarray, sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 progress: Callable[[int], None] | None = None) -> ShardRun:
    """Embed every source's images whose id has a row (``ids``, label ``codes``) into ``out``."""
    start, run, out = time.perf_counter(), ShardRun(), Path(out)
    manifest = open_output(out, schema, embedding_sha256, dim)
    codes_of = dict(zip(ids, codes))
    for name, source, locator, wanted in pending(out, manifest, sources, codes_of, run):
        parts: list[tuple[list[str], Any]] = []
        for keys, outputs, failed in encoder.encode_stream(locator.read(wanted), skip_errors=True,
                                                            on_batch=progress):
            run.failures.extend((str(k), reason) for k, reason in failed)
            if keys:
                parts.append((keys, outputs))
        write_shard(out, manifest, name, source, shard_table(schema, parts, codes_of, dim), run)
    run.seconds = time.perf_counter() - start
    return run


def open_output(out: Path, schema: AttributeSchema, embedding_sha256: str, dim: int) -> dict[str, Any]:
    """The folder's manifest (new or checked against this embedding), after removing what a killed
    run left under temporary names (one writer per folder). Fails first, with the install hint,
    where pyarrow is missing."""
    _arrow()
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, schema, embedding_sha256, dim)
    for leftover in [p for p in out.iterdir() if TEMPORARY.match(p.name)]:
        leftover.unlink()
    return manifest


def pending(out: Path, manifest: dict[str, Any], sources: Sequence[str | os.PathLike], codes_of: dict[str, Any],
            run: ShardRun) -> Iterator[tuple[str, Path, ImageLocator, list[str]]]:
    """(shard name, source, its images, the ids to embed) of each source not yet recorded; the
    recorded ones and the images without a row are counted in ``run``."""
    for position, source in enumerate(Path(s) for s in sources):
        name = shard_name(source, position)
        entry = manifest["shards"].get(name)
        if entry is not None and (out / name).is_file() and entry["source"] == str(source):
            run.reused.append(name)
            continue
        locator = ImageLocator(source)
        wanted = sorted(i for i in locator.places if i in codes_of)
        run.without_row += len(locator.places) - len(wanted)
        yield name, source, locator, wanted


def write_shard(out: Path, manifest: dict[str, Any], name: str, source: Path, table: Any, run: ShardRun) -> None:
    """Write under a temporary name, rename, then record: the shard counts as done only from then on."""
    _, pq = _arrow()
    temporary = out / f".{name}.{os.getpid()}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, out / name)
    manifest["shards"][name] = {"source": str(source), "items": table.num_rows, "sha256": sha256_file(out / name)}
    atomic_write_json(out / MANIFEST, manifest)
    run.written.append(name)
    run.items += table.num_rows


def _open_manifest(out: Path, schema: AttributeSchema, embedding_sha256: str, dim: int) -> dict[str, Any]:
    header = {"format": FORMAT, "embedding_sha256": embedding_sha256, "attributes": list(schema.names), "dim": dim}
    path = out / MANIFEST
    if not path.exists():
        return {**header, "shards": {}}
    manifest = read_json(path, "shards manifest", CatalogError)
    if manifest.get("embedding_sha256") != embedding_sha256 or manifest.get("attributes") != header["attributes"]:
        raise CatalogError(f"{out} holds shards of another bundle's embedding; write to an empty folder, or "
                           "delete it to re-embed with this bundle")
    return manifest


def shard_table(schema: AttributeSchema, parts: list[tuple[list[str], Any]], codes_of: dict[str, np.ndarray],
                dim: int) -> Any:
    pa, _ = _arrow()
    names = len(schema.attributes)
    keys = [k for ks, _ in parts for k in ks]
    if parts:
        embedding = np.concatenate([o.embedding for _, o in parts]).astype(np.float32)
        predicted, probability = zip(*(schema.predicted_codes(o.logits) for _, o in parts))
        predicted_codes = np.concatenate(predicted).astype(np.int16)
        confidence = np.concatenate(probability).astype(np.float32)
    else:
        embedding = np.zeros((0, dim), np.float32)
        predicted_codes, confidence = np.zeros((0, names), np.int16), np.zeros((0, names), np.float32)
    labels = np.stack([codes_of[k] for k in keys]).astype(np.int16) if keys else np.zeros((0, names), np.int16)

    def fixed(values: np.ndarray, kind: Any) -> Any:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])

    return pa.table({"id": pa.array(keys, pa.string()), "embedding": fixed(embedding, pa.float32()),
                     "labels": fixed(labels, pa.int16()), "predicted": fixed(predicted_codes, pa.int16()),
                     "confidence": fixed(confidence, pa.float32())})


def read_shards(directory: str | os.PathLike, schema: AttributeSchema, embedding_sha256: str, dim: int
                ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each recorded shard's (ids, embeddings, labels, predicted, confidence), checked against its
    sha256 before pyarrow parses it and against the bundle that reads it."""
    _, pq = _arrow()
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST, "shards manifest", IndexFileError)
    if manifest.get("embedding_sha256") != embedding_sha256 or manifest.get("attributes") != list(schema.names):
        raise IndexFileError(f"the shards in {directory} were embedded by another bundle (embedding "
                             f"{str(manifest.get('embedding_sha256'))[:12]}); index them with that bundle, or "
                             "re-embed with this one")
    for name, entry in sorted(manifest.get("shards", {}).items()):
        path = contained_file(directory, name, str(directory / MANIFEST), IndexFileError)
        if not path.is_file():
            raise IndexFileError(f"shard {name!r} listed in {directory / MANIFEST} is missing; re-run fashsdk embed")
        if sha256_file(path) != entry.get("sha256"):  # before pyarrow (native code) parses it
            raise IndexFileError(f"shard {path} does not match its recorded sha256 (damaged or replaced); "
                                 "delete it and re-run fashsdk embed")
        table = pq.read_table(path)
        if table.num_rows == 0:
            continue
        ids = table.column("id").to_pylist()

        def matrix(column: str, dtype: Any) -> np.ndarray:
            return table.column(column).combine_chunks().flatten().to_numpy().astype(dtype).reshape(len(ids), -1)

        vectors = matrix("embedding", np.float32)
        if vectors.shape[1] != dim or not np.isfinite(vectors).all():
            raise IndexFileError(f"shard {path} holds {vectors.shape[1]}-d or non-finite embeddings; the index "
                                 f"takes {dim}-d vectors")
        yield ids, vectors, matrix("labels", np.int16), matrix("predicted", np.int16), matrix("confidence", np.float32)


def index_from_shards(index: IndexBackend, schema: AttributeSchema, embedding_sha256: str,
                      directory: str | os.PathLike) -> int:
    """Add every recorded shard's items to ``index``; returns how many were added."""
    added = 0
    for ids, vectors, labels, predicted, confidence in read_shards(directory, schema, embedding_sha256, index.dim):
        index.add(ids, vectors, labels, predicted, confidence)
        added += len(ids)
    return added

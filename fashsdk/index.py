"""A persistent, id-keyed catalog index: hnswlib graph + full vectors + attribute codes.

Items are keyed by the catalog's own ids (strings; ints are accepted and stringified).
Saving writes a new generation of files and then atomically replaces ``index.json``,
which names that generation and pins every file by sha256: a crash at any moment leaves
the previous generation loadable, and a tampered file is refused before hnswlib reads it.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import IndexFileError, QueryError
from .files import atomic_save_npy, atomic_write_json, contained_file, fsync_dir, load_npy, read_json, sha256_file
from .rwlock import ReadWriteLock

FORMAT = "fashsdk-index"
FORMAT_VERSION = 1
SIDECAR = "index.json"


def normalize_id(item_id: object) -> str:
    """Catalog ids are strings; ints (not bools) are accepted and stringified."""
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
        raise QueryError(f"item id {item_id!r} has type {type(item_id).__name__}; ids must be str or int")
    text = str(item_id)
    if not text or len(text) > 512 or "\x00" in text:
        raise QueryError(f"item id {item_id!r} must be a non-empty string of at most 512 characters without NUL")
    return text


class CatalogIndex:
    """Vectors (L2-normalised, inner-product space) plus attribute codes, keyed by id."""

    def __init__(self, dim: int, num_attributes: int, *, M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, capacity: int = 1024, info: dict[str, Any] | None = None) -> None:
        import hnswlib

        if dim < 1 or num_attributes < 1:
            raise ValueError("dim and num_attributes must be positive")
        self.dim = dim
        self.num_attributes = num_attributes
        self.M, self.ef_construction, self.ef_search = M, ef_construction, ef_search
        self.info = dict(info or {})
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(max_elements=capacity, ef_construction=ef_construction, M=M,
                               allow_replace_deleted=False)
        self._graph.set_num_threads(1)
        self._vectors = np.zeros((capacity, dim), np.float32)
        self._codes = np.full((capacity, num_attributes), -1, np.int16)
        self._predicted = np.full((capacity, num_attributes), -1, np.int16)
        self._ids: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._lock = ReadWriteLock()

    # ---- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, item_id: object) -> bool:
        try:
            return normalize_id(item_id) in self._slot
        except QueryError:
            return False

    @property
    def ids(self) -> list[str]:
        with self._lock.read():
            return [i for i in self._ids if i is not None]

    def slot_of(self, item_id: object) -> int:
        key = normalize_id(item_id)
        slot = self._slot.get(key)
        if slot is None:
            raise QueryError(f"id {key!r} is not in the index ({len(self)} items); add it first or query by image")
        return slot

    def get(self, item_id: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector, label codes, predicted codes) of an indexed item."""
        with self._lock.read():
            slot = self.slot_of(item_id)
            return self._vectors[slot].copy(), self._codes[slot].copy(), self._predicted[slot].copy()

    def codes_of(self, ids: Sequence[str]) -> np.ndarray:
        """Label codes (n, A) of indexed ids, for attaching attributes to results."""
        with self._lock.read():
            return self._codes[[self.slot_of(i) for i in ids]].copy() if ids else np.zeros((0, self.num_attributes), np.int16)

    def alive_slots(self) -> np.ndarray:
        with self._lock.read():
            return np.array([s for s, i in enumerate(self._ids) if i is not None], dtype=np.int64)

    def vectors_and_codes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Snapshot of all live items: ids, vectors (n, D), codes (n, A)."""
        with self._lock.read():
            slots = [s for s, i in enumerate(self._ids) if i is not None]
            return [self._ids[s] for s in slots], self._vectors[slots].copy(), self._codes[slots].copy()  # type: ignore[misc]

    def search(self, queries: np.ndarray, k: int, *, exact: bool = False,
               exclude: Sequence[str | None] | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-k ids and cosine scores per query; ``exclude[i]`` drops one id from query i."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise QueryError(f"query vectors have dimension {queries.shape[1]}, the index holds {self.dim}")
        if not np.isfinite(queries).all():
            raise QueryError("query vectors contain NaN or infinity")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        with self._lock.read():
            n = len(self._slot)
            if n == 0:
                raise QueryError("the index is empty: add catalog items before searching")
            extra = 1 if exclude is not None else 0
            want = min(int(k) + extra, n)
            slots, scores = self._search_slots(queries, want, exact)
            out_ids: list[list[str]] = []
            out_scores: list[np.ndarray] = []
            for qi in range(len(queries)):
                skip = exclude[qi] if exclude is not None else None
                row_ids, row_scores = [], []
                for s, sc in zip(slots[qi], scores[qi]):
                    item = self._ids[int(s)]
                    if item is None or item == skip:
                        continue
                    row_ids.append(item)
                    row_scores.append(sc)
                    if len(row_ids) == k:
                        break
                out_ids.append(row_ids)
                out_scores.append(np.asarray(row_scores, np.float32))
            return out_ids, out_scores

    def _search_slots(self, queries: np.ndarray, want: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        if not exact:
            try:
                self._graph.set_ef(max(self.ef_search, want))
                labels, dists = self._graph.knn_query(queries, k=want)
                return labels, 1.0 - dists
            except RuntimeError:
                pass  # too few reachable items after deletions: fall back to exact search
        alive = np.array([s for s, i in enumerate(self._ids) if i is not None], dtype=np.int64)
        sims = queries @ self._vectors[alive].T
        top = np.argpartition(-sims, want - 1, axis=1)[:, :want]
        order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        return alive[top], np.take_along_axis(sims, top, 1)

    # ---- writing -------------------------------------------------------------------
    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None) -> None:
        """Add new items; an id already present (or repeated in ``ids``) is an error.

        ``codes`` are the known labels (-1 = unknown); ``predicted`` the model's own
        reading of each attribute, used as the current value when a label is unknown.
        """
        keys = [normalize_id(i) for i in ids]
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise QueryError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        if not np.isfinite(vectors).all():
            raise QueryError("vectors contain NaN or infinity")
        if codes is None:
            codes = np.full((len(keys), self.num_attributes), -1, np.int16)
        codes = np.asarray(codes, dtype=np.int16).reshape(len(keys), self.num_attributes)
        if predicted is None:
            predicted = codes
        predicted = np.asarray(predicted, dtype=np.int16).reshape(len(keys), self.num_attributes)
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise QueryError(f"id {dup!r} appears more than once in this add call")
        with self._lock.write():
            present = [k for k in keys if k in self._slot]
            if present:
                raise QueryError(f"{len(present)} ids are already indexed (first: {present[:3]}); "
                                 "remove them first or use update()")
            start = len(self._ids)
            self._reserve(start + len(keys))
            slots = np.arange(start, start + len(keys))
            self._vectors[slots] = vectors
            self._codes[slots] = codes
            self._predicted[slots] = predicted
            self._graph.add_items(vectors, slots)
            self._ids.extend(keys)
            self._slot.update({k: int(s) for k, s in zip(keys, slots)})

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id; unknown ids are an error and nothing is removed."""
        keys = [normalize_id(i) for i in ids]
        with self._lock.write():
            missing = [k for k in keys if k not in self._slot]
            if missing:
                raise QueryError(f"{len(missing)} ids are not in the index (first: {missing[:3]}); nothing removed")
            for key in dict.fromkeys(keys):
                slot = self._slot.pop(key)
                self._graph.mark_deleted(slot)
                self._ids[slot] = None

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None) -> None:
        """Replace the vectors/codes of existing ids (remove, then add)."""
        self.remove(ids)
        self.add(ids, vectors, codes, predicted)

    def _reserve(self, needed: int) -> None:
        capacity = self._vectors.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, capacity * 2)
        self._graph.resize_index(new_capacity)
        vectors = np.zeros((new_capacity, self.dim), np.float32)
        vectors[:capacity] = self._vectors
        codes = np.full((new_capacity, self.num_attributes), -1, np.int16)
        codes[:capacity] = self._codes
        predicted = np.full((new_capacity, self.num_attributes), -1, np.int16)
        predicted[:capacity] = self._predicted
        self._vectors, self._codes, self._predicted = vectors, codes, predicted

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a new generation of files, then switch ``index.json`` to it atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        gen = secrets.token_hex(6)
        names = {"graph": f"graph-{gen}.hnsw", "vectors": f"vectors-{gen}.npy",
                 "codes": f"codes-{gen}.npy", "predicted": f"predicted-{gen}.npy", "ids": f"ids-{gen}.json"}
        with self._lock.read():
            used = len(self._ids)
            tmp_graph = directory / f".{names['graph']}.tmp"
            self._graph.save_index(str(tmp_graph))
            _fsync_file(tmp_graph)
            os.replace(tmp_graph, directory / names["graph"])
            atomic_save_npy(directory / names["vectors"], self._vectors[:used])
            atomic_save_npy(directory / names["codes"], self._codes[:used])
            atomic_save_npy(directory / names["predicted"], self._predicted[:used])
            atomic_write_json(directory / names["ids"], self._ids)
            sidecar = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "space": "ip",
                "dim": self.dim, "num_attributes": self.num_attributes, "M": self.M,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "slots": used, "count": len(self._slot), "info": self.info,
                "files": {role: {"name": name, "sha256": sha256_file(directory / name),
                                 "bytes": (directory / name).stat().st_size} for role, name in names.items()},
            }
        old = _read_sidecar_quietly(directory / SIDECAR)
        atomic_write_json(directory / SIDECAR, sidecar)
        fsync_dir(directory)
        for meta in (old or {}).get("files", {}).values():
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(name, str) and name not in names.values():
                try:
                    contained_file(directory, name, "old index sidecar", IndexFileError).unlink()
                except (IndexFileError, FileNotFoundError):
                    pass
        return directory / SIDECAR

    @classmethod
    def load(cls, directory: str | Path) -> "CatalogIndex":
        directory = Path(directory)
        sidecar_path = directory / SIDECAR
        if not directory.is_dir():
            raise IndexFileError(f"index directory {str(directory)!r} does not exist; build it with 'fashsdk index'")
        meta = read_json(sidecar_path, "index sidecar", IndexFileError)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFileError(f"{str(sidecar_path)!r} is not a fashsdk index sidecar")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise IndexFileError(f"index sidecar {str(sidecar_path)!r} has format_version {version!r}; this "
                                 f"fashsdk reads up to {FORMAT_VERSION}: upgrade fashsdk or rebuild the index")
        try:
            dim, num_attributes, slots = int(meta["dim"]), int(meta["num_attributes"]), int(meta["slots"])
            files = {role: meta["files"][role] for role in ("graph", "vectors", "codes", "predicted", "ids")}
            M, efc, efs = int(meta["M"]), int(meta["ef_construction"]), int(meta["ef_search"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"index sidecar {str(sidecar_path)!r} is malformed ({type(exc).__name__}: {exc})") from None
        if not (0 < dim <= 65536 and 0 < num_attributes <= 4096 and 0 <= slots <= 1 << 31 and 2 <= M <= 256):
            raise IndexFileError(f"index sidecar {str(sidecar_path)!r} has out-of-range parameters")
        paths = {}
        for role, f in files.items():
            if not isinstance(f, dict):
                raise IndexFileError(f"index sidecar {str(sidecar_path)!r}: entry {role!r} is malformed")
            path = contained_file(directory, f.get("name"), f"index sidecar {str(sidecar_path)!r}", IndexFileError)
            if not path.is_file():
                raise IndexFileError(f"index file {str(path)!r} named by the sidecar is missing")
            if path.stat().st_size != f.get("bytes") or sha256_file(path) != f.get("sha256"):
                raise IndexFileError(f"index file {str(path)!r} fails its checksum: it was truncated or modified; "
                                     "restore it or rebuild the index")
            paths[role] = path
        ids = read_json(paths["ids"], "index ids", IndexFileError)
        vectors = load_npy(paths["vectors"], "index vectors", IndexFileError)
        codes = load_npy(paths["codes"], "index codes", IndexFileError)
        predicted = load_npy(paths["predicted"], "index predicted codes", IndexFileError)
        if (predicted.shape != codes.shape or predicted.dtype != np.int16 or not isinstance(ids, list) or len(ids) != slots or vectors.shape != (slots, dim)
                or vectors.dtype != np.float32 or codes.shape != (slots, num_attributes) or codes.dtype != np.int16
                or not all(i is None or isinstance(i, str) for i in ids)):
            raise IndexFileError(f"index files in {str(directory)!r} disagree with the sidecar (ids/vectors/codes shape)")
        index = cls(dim, num_attributes, M=M, ef_construction=efc, ef_search=efs, capacity=max(slots, 1),
                    info=meta.get("info") or {})
        index._graph.load_index(str(paths["graph"]), max_elements=max(slots, 1))
        index._graph.set_num_threads(1)
        if index._graph.get_current_count() != slots:
            raise IndexFileError(f"index graph {str(paths['graph'])!r} holds {index._graph.get_current_count()} "
                                 f"items, the sidecar says {slots}")
        index._vectors[:slots] = vectors
        index._codes[:slots] = codes
        index._predicted[:slots] = predicted
        index._ids = list(ids)
        index._slot = {i: s for s, i in enumerate(ids) if i is not None}
        if len(index._slot) != sum(i is not None for i in ids):
            raise IndexFileError(f"index ids in {str(paths['ids'])!r} contain duplicates")
        return index


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _read_sidecar_quietly(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path, "index sidecar", IndexFileError)
        return data if isinstance(data, dict) else None
    except IndexFileError:
        return None

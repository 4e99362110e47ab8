"""The Milvus index backend: the catalog in Milvus (Milvus Lite in a local file, or a cluster).

Layout (one ``milvus://`` address, milvus_target.py, names the collection ``C``):
- ``C``: one row per item: ``pk`` (a hash of the catalog id, so ids never enter an expression),
  ``item_id``, ``vector`` (the full embedding) and per attribute ``a`` four scalar fields:
  ``label_a`` (stored label code, -1 unknown), ``predicted_a``, ``confidence_a`` and ``value_a``
  (the current value: the label, else the prediction). ``where`` filters become Milvus boolean
  expressions on ``value_a``.
- ``C__attr{a}``: the same rows with attribute a's chunk of the embedding, re-normalised, as the
  vector: ``similar`` searches there (Milvus keeps a few vector fields per collection, not one
  per attribute of any schema).
- ``C__meta``: one row with the index's dimensions, layout and ``info`` (which bundle made it).

Writes go to the attribute collections first and to ``C`` last, and removals the other way,
so an item found in ``C`` always has its subspace rows. Milvus has no transaction across
collections: a write that fails half-way raises, and repeating it (``upsert``) repairs it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import IndexFileError, QueryError
from .inputs import checked_codes, checked_layout, checked_query
from .items import id_list, normalize_id
from .milvus_target import MilvusTarget, parse_target
from .reads import Filter, Hits
from .subspaces import chunks
from .writes import check_items, checked_confidence

log = logging.getLogger("fashsdk")

META_KEY = "index"
FORMAT = 1
WRITE_BATCH = 2000  # rows per insert call: well under gRPC's 64 MB message limit at 4,096-d
FLUSH_ROWS = 1000  # writes this large are sealed at once (Milvus Lite scans growing segments slowly)
MAX_K = 16384  # Milvus's limit on limit + offset
QUERY_BATCH = 256  # query vectors per search call (Milvus caps a call's vectors and message size)


def item_key(item_id: str) -> str:
    """The primary key of an id: 32 hex digits of its sha256 (any id, no quoting in expressions)."""
    return hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:32]


def where_expression(where: Filter | None) -> str:
    """``{attribute: codes}`` as a Milvus boolean expression on the current-value fields."""
    return " and ".join(f"value_{a} in [{', '.join(str(int(v)) for v in sorted(codes))}]"
                        for a, codes in sorted((where or {}).items()))


class MilvusIndex:
    """A catalog index stored in Milvus; the same calls as ``CatalogIndex`` (``IndexBackend``).

    Open one with ``MilvusIndex.connect("milvus://catalog.db", dim=..., num_attributes=...)``
    or ``Retriever(bundle, index="milvus://...")``. Needs pymilvus (``pip install
    'fashsdk[milvus]'``; Milvus Lite comes with it on Linux and macOS).
    """

    def __init__(self, client: Any, target: MilvusTarget, dim: int, num_attributes: int,
                 layout: Sequence[tuple[int, int]] | None, info: dict[str, Any], ef_search: int = 128) -> None:
        self.client, self.target = client, target
        self.dim, self.num_attributes = dim, num_attributes
        self.layout = checked_layout(layout, dim, num_attributes)
        self.info = dict(info)
        self.ef_search = ef_search
        self.collection = target.collection
        self.attribute_collections = [f"{self.collection}__attr{a}" for a in range(len(self.layout or []))]

    @property
    def collections(self) -> list[str]:
        """Every item collection: the attribute ones first (written first), the main one last."""
        return [*self.attribute_collections, self.collection]

    @staticmethod
    def meta_collection(collection: str) -> str:
        return f"{collection}__meta"

    # ---- opening ---------------------------------------------------------------------
    @classmethod
    def connect(cls, address: str | MilvusTarget, *, dim: int, num_attributes: int,
                layout: Sequence[tuple[int, int]] | None = None, info: dict[str, Any] | None = None) -> "MilvusIndex":
        """Open the catalog at ``address``, or make empty collections for one when there are none."""
        target = address if isinstance(address, MilvusTarget) else parse_target(address)
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise QueryError("a milvus:// index needs pymilvus: pip install 'fashsdk[milvus]'") from None
        if target.is_lite:
            Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MilvusClient(uri=target.uri, token=target.token, **({"db_name": target.database}
                                                                         if target.database else {}))
        except Exception as exc:  # pymilvus raises its own and gRPC's errors
            hint = ("; Milvus Lite opens a file from one process at a time: close the other user (a server, a "
                    "notebook) or move to a Milvus server") if target.is_lite else ""
            raise QueryError(f"cannot reach Milvus at {target.describe()}: {exc}{hint}") from None
        if client.has_collection(cls.meta_collection(target.collection)):
            return cls._opened(client, target, dim, num_attributes)
        index = cls(client, target, dim, num_attributes, layout, info or {})
        index._create()
        return index

    @classmethod
    def _opened(cls, client: Any, target: MilvusTarget, dim: int, num_attributes: int) -> "MilvusIndex":
        meta_name = cls.meta_collection(target.collection)
        client.load_collection(meta_name)  # a reopened collection starts released
        rows = client.get(meta_name, ids=[META_KEY], output_fields=["text"])
        try:
            meta = json.loads(rows[0]["text"])
        except (IndexError, KeyError, ValueError) as exc:
            raise IndexFileError(f"the catalog at {target.describe()} has no readable description ({exc}); "
                                 "drop its collections and index again") from None
        if meta.get("format") != FORMAT:
            raise IndexFileError(f"the catalog at {target.describe()} has format {meta.get('format')}; this fashsdk "
                                 f"reads format {FORMAT}: upgrade fashsdk or index again")
        if (meta["dim"], meta["num_attributes"]) != (dim, num_attributes):
            raise IndexFileError(f"the catalog at {target.describe()} holds {meta['dim']}-d vectors with "
                                 f"{meta['num_attributes']} attributes, the bundle makes {dim}-d with "
                                 f"{num_attributes}: use another collection (?collection=NAME) or rebuild it")
        index = cls(client, target, dim, num_attributes, meta["layout"], meta["info"])
        for name in index.collections:
            client.load_collection(name)
        return index

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        meta = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        meta.add_field("text", DataType.VARCHAR, max_length=65535)
        meta.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        params = self.client.prepare_index_params()
        params.add_index("unused", index_type="FLAT", metric_type="L2")
        for name, (start, stop) in zip(self.collections, [*(self.layout or []), (0, self.dim)]):
            self._create_items(name, stop - start)
        description = {"format": FORMAT, "dim": self.dim, "num_attributes": self.num_attributes,
                       "layout": self.layout, "info": self.info}
        self.client.create_collection(self.meta_collection(self.collection), schema=meta, index_params=params)
        self.client.insert(self.meta_collection(self.collection), [{"key": META_KEY, "text": json.dumps(description),
                                                         "unused": [0.0, 0.0]}])

    def _create_items(self, name: str, width: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
        schema.add_field("item_id", DataType.VARCHAR, max_length=2048)  # 512 characters of up to 4 UTF-8 bytes
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=width)
        for a in range(self.num_attributes):
            for field in ("label", "predicted", "value"):
                schema.add_field(f"{field}_{a}", DataType.INT16)
            schema.add_field(f"confidence_{a}", DataType.FLOAT)
        params = self.client.prepare_index_params()
        hnsw = {"M": 16, "efConstruction": 200} if self.target.index_type == "HNSW" else {}
        ivf = {"nlist": 1024} if self.target.index_type == "IVF_FLAT" else {}
        params.add_index("vector", index_type=self.target.index_type, metric_type="IP", params={**hnsw, **ivf})
        self.client.create_collection(name, schema=schema, index_params=params,
                                      consistency_level=self.target.consistency)

    # ---- reading ---------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "milvus"

    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __contains__(self, item_id: object) -> bool:
        try:
            key = item_key(normalize_id(item_id))
        except QueryError:
            return False
        return bool(self.client.get(self.collection, ids=[key], output_fields=["pk"]))

    @property
    def ids(self) -> list[str]:
        found: list[str] = []
        iterator = self.client.query_iterator(self.collection, batch_size=10000, filter="", output_fields=["item_id"])
        while batch := iterator.next():
            found += [row["item_id"] for row in batch]
        iterator.close()
        return found

    def _fetch(self, keys: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of these ids (those that are stored), by id."""
        found: dict[str, dict[str, Any]] = {}
        pks = [item_key(k) for k in keys]
        for start in range(0, len(pks), WRITE_BATCH):
            for row in self.client.get(self.collection, ids=pks[start:start + WRITE_BATCH],
                                       output_fields=["item_id", *fields]):
                found[row["item_id"]] = row
        return found

    def _rows(self, keys: list[str], fields: list[str]) -> list[dict[str, Any]]:
        """Rows of these ids in their order; an id not stored is a QueryError."""
        found = self._fetch(keys, fields)
        missing = [k for k in keys if k not in found]
        if missing:
            raise QueryError(f"{len(missing)} ids are not in the index (first: {missing[:3]}); add them first or "
                             "query by image")
        return [found[k] for k in keys]

    def _codes(self, rows: list[dict[str, Any]], field: str, dtype: type) -> np.ndarray:
        return np.array([[row[f"{field}_{a}"] for a in range(self.num_attributes)] for row in rows],
                        dtype).reshape(len(rows), self.num_attributes)

    def _code_fields(self) -> list[str]:
        return [f"{f}_{a}" for f in ("label", "predicted", "confidence") for a in range(self.num_attributes)]

    def get(self, item_id: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector, label codes, predicted codes) of a stored item."""
        vectors, labels, predicted = self.get_many([item_id])
        return vectors[0], labels[0], predicted[0]

    def get_many(self, ids: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self._rows(id_list(ids), ["vector", *self._code_fields()])
        vectors = np.array([row["vector"] for row in rows], np.float32).reshape(len(rows), self.dim)
        return vectors, self._codes(rows, "label", np.int16), self._codes(rows, "predicted", np.int16)

    def hits_of(self, ids: Sequence[object]) -> list[Hits]:
        rows = self._rows(id_list(ids), self._code_fields())
        return [self._hits([row], [1.0]) for row in rows]

    def _confidence(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The stored probabilities, NaN where none was recorded (stored as -1: Milvus takes no NaN)."""
        confidence = self._codes(rows, "confidence", np.float32)
        return np.where(confidence < 0, np.nan, confidence)

    def _hits(self, rows: list[dict[str, Any]], scores: list[float]) -> Hits:
        return Hits([row["item_id"] for row in rows], np.asarray(scores, np.float32),
                    self._codes(rows, "label", np.int16), self._codes(rows, "predicted", np.int16),
                    self._confidence(rows))

    def hits(self, queries: np.ndarray, k: int, *, exact: bool = False, exclude: Sequence[str | None] | None = None,
             where: Filter | None = None, attribute: int | None = None) -> list[Hits]:
        """Top-k per query, best first; ``exclude[i]`` drops one id from query i's results."""
        queries, k, skip = checked_query(queries, k, exclude, self.dim, self.layout, attribute)
        if exact and self.target.index_type != "FLAT":
            raise QueryError(f"this Milvus catalog uses a {self.target.index_type} index, which is approximate; "
                             "for exact search open it with ?index=FLAT or use the embedded index")
        want = k + (1 if skip is not None and any(s is not None for s in skip) else 0)
        if want > MAX_K:
            raise QueryError(f"Milvus returns at most {MAX_K} results per query; ask for fewer")
        collection = self.collection if attribute is None else self.attribute_collections[attribute]
        params = {"params": {"ef": max(self.ef_search, want)}} if self.target.index_type == "HNSW" else {}
        found: list[Any] = []
        for start in range(0, len(queries), QUERY_BATCH):
            found += self.client.search(collection, data=[q.tolist() for q in queries[start:start + QUERY_BATCH]],
                                        anns_field="vector", limit=want, filter=where_expression(where),
                                        output_fields=["item_id", *self._code_fields()], search_params=params)
        out = []
        for qi, matches in enumerate(found):
            rows = [m["entity"] for m in matches]
            keep = [i for i, row in enumerate(rows) if skip is None or row["item_id"] != skip[qi]][:k]
            out.append(self._hits([rows[i] for i in keep], [matches[i]["distance"] for i in keep]))
        if not any(len(h.ids) for h in out) and len(self) == 0:
            raise QueryError("the index is empty: add catalog items before searching")
        return out

    def prepare_filters(self, attributes: Iterable[int]) -> None:
        """Nothing to build: Milvus filters with its own scalar indexes."""

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "count": len(self), "dim": self.dim, "address": self.target.describe(),
                "index_type": self.target.index_type, "consistency": self.target.consistency,
                "attribute_collections": self.attribute_collections}

    # ---- writing ---------------------------------------------------------------------
    def add(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
            predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Add new items; an id already stored (or repeated in ``ids``) is an error and nothing is written."""
        keys = id_list(ids)
        rows, unit = self._checked_rows(keys, vectors, codes, predicted, confidence)
        present = list(self._fetch(keys, []))
        if present:
            raise QueryError(f"{len(present)} ids are already indexed (first: {present[:3]}); "
                             "remove them first or use update()")
        self._write(rows, unit, self.client.insert)

    def upsert(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Add new ids and replace existing ones (vectors and codes)."""
        self._write(*self._checked_rows(id_list(ids), vectors, codes, predicted, confidence), self.client.upsert)

    def update(self, ids: Sequence[object], vectors: np.ndarray, codes: np.ndarray | None = None,
               predicted: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        """Replace the vectors and codes of stored ids; an id not stored is an error and nothing is written."""
        keys = id_list(ids)
        rows, unit = self._checked_rows(keys, vectors, codes, predicted, confidence)
        self._rows(keys, [])
        self._write(rows, unit, self.client.upsert)

    def remove(self, ids: Iterable[object]) -> None:
        """Remove items by id; unknown ids are an error and nothing is removed."""
        keys = list(dict.fromkeys(id_list(ids)))
        self._rows(keys, [])
        pks = [item_key(k) for k in keys]
        for name in reversed(self.collections):  # the main collection first: no result without its subspace rows
            for start in range(0, len(pks), WRITE_BATCH):
                self.client.delete(name, ids=pks[start:start + WRITE_BATCH])
        self._seal(len(pks))

    def set_labels(self, ids: Sequence[object], codes: np.ndarray) -> None:
        """Replace the stored labels (-1 = unknown) of stored ids, keeping their vectors."""
        keys = id_list(ids)
        new = checked_codes(codes, len(keys), self.num_attributes, "codes")
        if len(set(keys)) != len(keys):
            raise QueryError("an id appears more than once in this call")
        rows = self._rows(keys, ["vector", *self._code_fields()])
        vectors = np.array([row["vector"] for row in rows], np.float32).reshape(len(rows), self.dim)
        self.upsert(keys, vectors, new, self._codes(rows, "predicted", np.int16), self._confidence(rows))

    def _checked_rows(self, keys: list[str], vectors: np.ndarray, codes: np.ndarray | None,
                      predicted: np.ndarray | None, confidence: np.ndarray | None
                      ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The scalar fields of each row (unknown confidence stored as -1) and the checked vectors."""
        vectors, labels, guessed = check_items(self, keys, vectors, codes, predicted)
        probability = checked_confidence(confidence, len(keys), self.num_attributes)
        probability = (np.full((len(keys), self.num_attributes), -1.0, np.float32) if probability is None
                       else np.nan_to_num(probability, nan=-1.0))
        current = np.where(labels >= 0, labels, guessed)
        rows = []
        for i, key in enumerate(keys):
            row: dict[str, Any] = {"pk": item_key(key), "item_id": key}
            for a in range(self.num_attributes):
                row[f"label_{a}"], row[f"predicted_{a}"] = int(labels[i, a]), int(guessed[i, a])
                row[f"value_{a}"], row[f"confidence_{a}"] = int(current[i, a]), float(probability[i, a])
            rows.append(row)
        return rows, vectors

    def _write(self, rows: list[dict[str, Any]], vectors: np.ndarray, call: Any) -> None:
        """Rows with their vectors into every attribute collection (its chunk), then the main one."""
        parts = [chunks(vectors, span) for span in self.layout or []] + [vectors]
        for name, part in zip(self.collections, parts):
            for start in range(0, len(rows), WRITE_BATCH):
                batch = [row | {"vector": part[start + i].tolist()} for i, row in enumerate(rows[start:start + WRITE_BATCH])]
                call(name, batch)
        self._seal(len(rows))

    def _seal(self, count: int) -> None:
        if count >= FLUSH_ROWS:
            self.save()

    # ---- persistence -------------------------------------------------------------------
    def save(self, directory: str | Path | None = None) -> Path | None:
        """Seal what was written (Milvus stores every write itself; there is no folder to write):
        returns the Milvus Lite file, or None for a server."""
        if directory is not None:
            raise QueryError(f"this index lives in Milvus ({self.target.describe()}); save it without a directory")
        for name in self.collections:
            self.client.flush(name)
        return Path(self.target.uri) if self.target.is_lite else None

    def close(self) -> None:
        """Disconnect; for Milvus Lite also stop its local server, which frees the file for another process."""
        self.client.close()
        if self.target.is_lite:
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:  # an older milvus-lite: the file is freed when this process exits
                return
            server_manager_instance.release_server(self.target.uri)

"""``milvus://`` index addresses: which Milvus to reach and how to lay the catalog out there.

    milvus://runs/catalog.db              Milvus Lite in a local file (relative path)
    milvus:///srv/fashsdk/catalog.db      Milvus Lite, absolute path
    milvus://milvus.internal:19530        a Milvus server or cluster over HTTP
    milvus+https://milvus.example.com:443 the same over TLS

Query options: ``collection`` (default ``fashsdk_catalog``), ``index`` (the vector index type:
HNSW by default; FLAT makes every search exact), ``db`` (a server's database) and
``consistency`` (Strong by default, so a write is visible to the next search). A server's token
comes from the FASHSDK_MILVUS_TOKEN environment variable, never from the address, so it does
not end up in logs or shell history.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import QueryError

SCHEMES = ("milvus", "milvus+https")
INDEX_TYPES = ("HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX")
CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
TOKEN_ENV = "FASHSDK_MILVUS_TOKEN"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")


def is_milvus_address(value: object) -> bool:
    return isinstance(value, str) and value.split("://", 1)[0] in SCHEMES and "://" in value


def index_location(text: str) -> str | Path:
    """A command line's index argument: a folder, or a milvus:// address kept as text."""
    return text if is_milvus_address(text) else Path(text)


@dataclass(frozen=True)
class MilvusTarget:
    """Where the catalog lives: ``uri`` as pymilvus takes it (a file path or http(s)://host:port)."""

    uri: str
    collection: str = "fashsdk_catalog"
    index_type: str = "HNSW"
    database: str | None = None
    consistency: str = "Strong"

    @property
    def is_lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    @property
    def token(self) -> str:
        return "" if self.is_lite else os.environ.get(TOKEN_ENV, "")

    def describe(self) -> str:
        """The address without secrets, for logs, stats and errors."""
        return f"{self.uri} collection {self.collection} ({self.index_type})"


def parse_target(address: str) -> MilvusTarget:
    """A MilvusTarget from a ``milvus://`` address, or a QueryError saying what is wrong and how to write it."""
    if not is_milvus_address(address):
        raise QueryError(f"{address!r} is not a Milvus address; write milvus://FILE.db (Milvus Lite) or "
                         "milvus://HOST:PORT (a server)")
    scheme, rest = address.split("://", 1)
    location, _, query = rest.partition("?")
    if not location:
        raise QueryError(f"{address!r} names no Milvus: write milvus://FILE.db or milvus://HOST:PORT")
    if "@" in location.split("/", 1)[0]:
        raise QueryError(f"put Milvus credentials in the {TOKEN_ENV} environment variable (user:password or an API "
                         "key), not in the address")
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - {"collection", "index", "db", "consistency"})
    if unknown:
        raise QueryError(f"unknown Milvus address options {unknown}; use collection, index, db, consistency")
    collection = options.get("collection", "fashsdk_catalog")
    if not _NAME.match(collection):
        raise QueryError(f"collection name {collection!r} must start with a letter or _ and hold only letters, digits "
                         "and _ (at most 200 characters)")
    index_type = options.get("index", "HNSW").upper()
    if index_type not in INDEX_TYPES:
        raise QueryError(f"index={index_type!r} is not supported; choose one of {list(INDEX_TYPES)}")
    consistency = options.get("consistency", "Strong").capitalize()
    if consistency not in CONSISTENCY:
        raise QueryError(f"consistency={options['consistency']!r} is not a Milvus level; choose one of {list(CONSISTENCY)}")
    if location.endswith(".db"):
        if scheme != "milvus":
            raise QueryError("Milvus Lite files are local: write milvus://FILE.db, without +https")
        uri = location  # milvus:///abs/path.db leaves "/abs/path.db"; milvus://rel/path.db leaves "rel/path.db"
    else:
        host = urlsplit(f"//{location}")
        if not host.hostname or host.path not in ("", "/"):
            raise QueryError(f"{address!r}: a server address is milvus://HOST:PORT, a Milvus Lite file ends in .db")
        uri = f"{'https' if scheme == 'milvus+https' else 'http'}://{location.rstrip('/')}"
    return MilvusTarget(uri, collection, index_type, options.get("db") or None, consistency)

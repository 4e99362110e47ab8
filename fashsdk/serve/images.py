"""Item photos for the shop page: id -> bytes from image folders or tar shards, in O(1) per read.

The SDK's naming rule decides which file belongs to which id (as in ``ImageLocator``); tar
members are read by offset (one header scan at start-up, then ``os.pread``), so a page of 24
thumbnails does not scan a 30 MB shard 24 times. Ids are looked up in a dict: a client's id
is never joined onto a path.
"""
from __future__ import annotations

import os
import tarfile
import threading
from pathlib import Path
from typing import Sequence

from ..sources.images import _member_id as member_id  # the SDK's naming rule: 15970.jpg -> 15970
from ..sources.images import resolve_sources

MAGIC: list[tuple[bytes, int, str]] = [  # (signature, offset, content type)
    (b"\xff\xd8\xff", 0, "image/jpeg"), (b"\x89PNG\r\n\x1a\n", 0, "image/png"), (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"), (b"BM", 0, "image/bmp"), (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"), (b"ftypavif", 4, "image/avif"),
]


def content_type(data: bytes) -> str:
    """The image's media type from its first bytes (the file name may lie)."""
    for signature, offset, kind in MAGIC:
        if data[offset:offset + len(signature)] == signature:
            return kind
    return "application/octet-stream"


class CatalogImages:
    """Photos of catalog items by id; ``get`` is safe from many threads."""

    def __init__(self, sources: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self._files: dict[str, Path] = {}
        self._members: dict[str, tuple[int, int, int]] = {}  # id -> (fd slot, offset, size)
        self._fds: list[int] = []
        self._lock = threading.Lock()
        spec = sources if isinstance(sources, (str, os.PathLike)) else list(sources)
        for source in resolve_sources(spec):  # the first file of an id wins, as in ImageLocator
            if source.is_dir():
                for path in sorted(source.iterdir()):
                    item_id = member_id(path.name)
                    if item_id is not None and item_id not in self and path.is_file():
                        self._files[item_id] = path
                continue
            slot = len(self._fds)
            with tarfile.open(source, "r:") as tar:  # plain tars only: members are contiguous bytes
                for member in tar:
                    item_id = member_id(member.name) if member.isfile() else None
                    if item_id is not None and item_id not in self:
                        self._members[item_id] = (slot, member.offset_data, member.size)
            self._fds.append(os.open(source, os.O_RDONLY))

    def __len__(self) -> int:
        return len(self._files) + len(self._members)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._members or item_id in self._files

    def get(self, item_id: str) -> bytes | None:
        """The photo's bytes, or None when the sources have none for this id."""
        found = self._members.get(item_id)
        if found is not None:
            slot, offset, size = found
            try:
                return os.pread(self._fds[slot], size, offset)
            except (IndexError, OSError):  # closed at shutdown
                return None
        path = self._files.get(item_id)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:  # removed since start-up: the same as having none
            return None

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, []
            self._members.clear()
        for fd in fds:
            os.close(fd)

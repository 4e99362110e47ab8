"""Where catalog images live: a folder of ``<id>.<ext>`` files or plain tar shards.

The naming rule: an image belongs to the catalog id equal to its file name without the
extension (``15970.jpg`` -> ``15970``; subfolders of a tar are ignored), for every extension
the decoder reads (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF). Both sources give (id, encoded bytes)
pairs, so decoding happens in one place (preprocess.py). ``ImageLocator`` lists a source first
(names only, no pixels), so ingestion can name ids without an image and images without an id.
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import CatalogError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff")


def _member_id(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot or ("." + suffix.lower()) not in IMAGE_SUFFIXES or not stem:
        return None
    return stem


def resolve_sources(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder, one tar, a glob-free list of tars, or a folder of tars -> concrete paths."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            tars = sorted(p.glob("*.tar"))
            paths.extend(tars if tars else [p])
        elif p.is_file() and tarfile.is_tarfile(p):
            paths.append(p)
        else:
            raise CatalogError(
                f"image source {str(p)!r} is neither a folder nor a tar file; "
                "pass a folder of <id>.jpg files or tar shards of them"
            )
    return paths


def iter_images(spec: str | Path | Sequence[str | Path], wanted: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (id, bytes) for every image (or only ``wanted`` ids) in the sources."""
    wanted_set = set(wanted) if wanted is not None else None
    for path in resolve_sources(spec):
        if path.is_dir():
            for f in sorted(path.iterdir()):
                item_id = _member_id(f.name)
                if item_id is not None and f.is_file() and (wanted_set is None or item_id in wanted_set):
                    yield item_id, f.read_bytes()
            continue
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                item_id = _member_id(member.name)
                if item_id is None or (wanted_set is not None and item_id not in wanted_set):
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    yield item_id, handle.read()


def load_images(spec: str | Path | Sequence[str | Path], ids: Sequence[str]) -> dict[str, bytes]:
    """All images for ``ids`` as bytes; fails naming the ids that have no image."""
    found = dict(iter_images(spec, ids))
    missing = [i for i in ids if i not in found]
    if missing:
        raise CatalogError(
            f"{len(missing)} catalog ids have no image in {spec!s} (first: {missing[:5]}); "
            "check the image source or drop those rows"
        )
    return found


class ImageLocator:
    """Where each id's image is, read from file and member names alone."""

    def __init__(self, spec: str | Path | Sequence[str | Path]) -> None:
        self.places: dict[str, tuple[Path, str]] = {}  # id -> (folder or tar, file or member name)
        self.repeated: dict[str, list[str]] = {}  # id -> the other names that map to it (ignored)
        self.unreadable: list[str] = []  # names that are not images by their extension
        for source in resolve_sources(spec):
            names = ([f.name for f in sorted(source.iterdir()) if f.is_file()] if source.is_dir()
                     else _tar_names(source))
            for name in names:
                item_id = _member_id(name)
                if item_id is None:
                    self.unreadable.append(f"{source.name}/{name}")
                elif item_id in self.places:
                    self.repeated.setdefault(item_id, []).append(f"{source.name}/{name}")
                else:
                    self.places[item_id] = (source, name)

    def read(self, ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """(id, bytes) for the given ids that have an image, source by source (tars read once, in order)."""
        by_source: dict[Path, dict[str, str]] = {}
        for item_id in ids:
            if item_id in self.places:
                source, name = self.places[item_id]
                by_source.setdefault(source, {})[name] = item_id
        for source, names in by_source.items():
            if source.is_dir():
                for name, item_id in names.items():
                    yield item_id, (source / name).read_bytes()
                continue
            with tarfile.open(source, "r:") as tar:
                for member in tar:
                    item_id = names.get(member.name)
                    handle = tar.extractfile(member) if item_id is not None and member.isfile() else None
                    if handle is not None:
                        yield item_id, handle.read()


    def extents(self, ids: Iterable[str]) -> list[tuple[str, str, int, int]]:
        """(id, file, byte offset, size; -1 = the whole file) of the given ids that have an image: what a
        worker on another process or machine needs to read one image alone (``read_extent``)."""
        by_source: dict[Path, list[tuple[str, str]]] = {}
        for item_id in ids:
            if item_id in self.places:
                source, name = self.places[item_id]
                by_source.setdefault(source, []).append((item_id, name))
        out: list[tuple[str, str, int, int]] = []
        for source, items in by_source.items():
            if source.is_dir():
                out += [(item_id, str(source / name), 0, -1) for item_id, name in items]
                continue
            with tarfile.open(source, "r:") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
            out += [(item_id, str(source), members[name].offset_data, members[name].size) for item_id, name in items]
        return out


def read_extent(path: str, offset: int, size: int) -> bytes:
    """The bytes of one image from ``ImageLocator.extents``."""
    with open(path, "rb") as f:
        if size < 0:
            return f.read()
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise CatalogError(f"{path} ended {size - len(data)} bytes early at offset {offset}: the shard changed or "
                           "is truncated; re-create it")
    return data


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:") as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]

"""Where catalog images live: a folder of ``<id>.<ext>`` files or plain tar shards.

Both give (id, encoded bytes) pairs, so decoding happens in one place (preprocess.py).
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import CatalogError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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

"""The one helper for real data in tests: small real subsets of the shared catalog.

The catalog is read from ../shared/data/myntra-small beside the repository root; every test
that needs it is skipped, with the reason, when it is absent.
"""
from __future__ import annotations

import csv
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "myntra-small"


@dataclass(frozen=True)
class RealSubset:
    """The first photos of shard 0: encoded bytes and their labels."""

    ids: list[str]
    images: dict[str, bytes]  # id -> JPEG bytes, exactly as stored in the shard
    labels: dict[str, dict[str, str | None]]  # id -> {attribute: value or None}, values in the schema
    schema: object  # fashsdk.schema.AttributeSchema fitted on these rows (min_count 2)


def require_data() -> Path:
    if not (DATA / "styles.csv").is_file() or not (DATA / "images-000.tar").is_file():
        pytest.skip(f"shared catalog not found at {DATA} (expected ../shared/data/myntra-small beside the repo root)")
    return DATA


def _first_photos(n: int, shard: int = 0) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    with tarfile.open(require_data() / f"images-{shard:03d}.tar") as tar:
        for member in tar:
            if len(images) == n:
                break
            if member.isfile() and member.name.endswith(".jpg"):
                images[Path(member.name).stem] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return images


def _rows_for(ids: set[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(require_data() / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), {r["id"]: r for r in reader if r["id"] in ids}


def load_subset(n: int, attributes: tuple[str, ...]) -> RealSubset:
    """The first ``n`` photos with labels, and a schema fitted on them."""
    from fashsdk.sources.catalog import encode_rows, fit_schema

    images = _first_photos(n)
    _, rows = _rows_for(set(images))
    ids = [i for i in images if i in rows]
    schema, _ = fit_schema([rows[i] for i in ids], attributes, min_count=2)
    codes = encode_rows([rows[i] for i in ids], schema)
    return RealSubset(ids, {i: images[i] for i in ids}, {i: schema.decode(c) for i, c in zip(ids, codes)}, schema)


def real_subset(tmp: Path, n: int, shard: int = 0) -> tuple[Path, Path]:
    """The first ``n`` images of one shard written as a folder, and a labels CSV restricted to them."""
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    images = _first_photos(n, shard)
    for item_id, data in images.items():
        (folder / f"{item_id}.jpg").write_bytes(data)
    header, rows = _rows_for(set(images))
    with open(tmp / "labels.csv", "w", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=header)
        writer.writeheader()
        for item_id in images:
            if item_id in rows:
                writer.writerow(rows[item_id])
    return folder, tmp / "labels.csv"

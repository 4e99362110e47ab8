"""Small real subsets of the shared catalog for tests (../shared beside the repo root)."""
from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "myntra-small"


def require_data() -> Path:
    if not (DATA / "styles.csv").is_file():
        pytest.skip(f"shared catalog not found at {DATA} (expected ../shared beside the repo root)")
    return DATA


def real_subset(tmp: Path, n: int, shard: int = 0) -> tuple[Path, Path]:
    """The first ``n`` images of one shard as a folder, and a labels CSV restricted to them."""
    data = require_data()
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    with tarfile.open(data / f"images-{shard:03d}.tar") as tar:
        for member in tar:
            if len(ids) == n:
                break
            if member.isfile() and member.name.endswith(".jpg"):
                (folder / Path(member.name).name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                ids.append(Path(member.name).stem)
    wanted = set(ids)
    with open(data / "styles.csv", newline="") as src, open(tmp / "labels.csv", "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for row in reader:
            if row["id"] in wanted:
                writer.writerow(row)
    return folder, tmp / "labels.csv"

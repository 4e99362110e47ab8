"""Saving and loading the two-stage index: identical answers, pinned files, old formats refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fashsdk import CatalogIndex, IndexFileError
from fashsdk.files import atomic_save_npy, atomic_write_json, seal, sha256_file
from fashsdk.index.persistence import SIDECAR


def clustered(n: int, dim: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((10, dim))[rng.integers(10, size=n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def two_stage(precision: str = "float32", n: int = 500, projection_dim: int | None = 12) -> tuple[CatalogIndex, np.ndarray]:
    x = clustered(n)
    index = CatalogIndex(40, 3, exact_max_items=0, threads=1, precision=precision, info={"note": "test"},
                         projection_dim=projection_dim)
    codes = np.stack([np.arange(n) % 4, np.arange(n) % 2, np.full(n, -1)], 1)
    index.add([f"i{i}" for i in range(n)], x, codes, codes[:, ::-1] % 2)
    index.remove([f"i{i}" for i in range(0, n, 7)])  # dead slots and marked-deleted graph nodes
    return index, x


def files_of(directory: Path) -> dict:
    return json.loads((directory / SIDECAR).read_text())["files"]


@pytest.mark.parametrize("projection_dim", [12, None], ids=["projected", "identity"])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_round_trip_answers_identically(tmp_path: Path, precision: str, projection_dim) -> None:
    index, x = two_stage(precision, projection_dim=projection_dim)
    queries = clustered(25, seed=4)
    before = index.search(queries, 12, exclude=["i3"] * 25)
    index.save(tmp_path)
    expected = {"vectors", "codes", "predicted", "confidence", "ids", "graph"} | ({"projection"} if projection_dim else set())
    assert set(files_of(tmp_path)) == expected
    loaded = CatalogIndex.load(tmp_path)
    after = loaded.search(queries, 12, exclude=["i3"] * 25)
    assert after[0] == before[0]
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)
    assert loaded.stats() == index.stats() and loaded.info == {"note": "test"} and loaded.precision == precision
    for probe in ("i1", "i499"):
        for got, want in zip(loaded.get(probe), index.get(probe)):
            np.testing.assert_array_equal(got, want)
    # the loaded index keeps working: dead slots are reused, new items are found
    slots = loaded.stats()["slots"]
    loaded.add(["fresh"], clustered(1, seed=99))
    assert loaded.stats()["slots"] == slots and loaded.search(clustered(1, seed=99), 1)[0] == [["fresh"]]


def test_small_catalogs_save_without_a_graph(tmp_path: Path) -> None:
    index = CatalogIndex(40, 3)
    index.add(["a", "b"], clustered(2))
    index.save(tmp_path)
    assert set(files_of(tmp_path)) == {"vectors", "codes", "predicted", "confidence", "ids"}
    loaded = CatalogIndex.load(tmp_path)
    assert loaded.mode == "exact" and loaded.search(clustered(2)[1], 1)[0] == [["b"]]


@pytest.mark.parametrize("role", ["graph", "projection", "vectors", "ids"])
def test_a_modified_file_is_refused_before_it_is_parsed(tmp_path: Path, role: str) -> None:
    two_stage()[0].save(tmp_path)
    path = tmp_path / files_of(tmp_path)[role]["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="fails its checksum"):
        CatalogIndex.load(tmp_path)


def test_a_projection_that_disagrees_with_the_sidecar_is_refused(tmp_path: Path) -> None:
    two_stage()[0].save(tmp_path)
    meta = json.loads((tmp_path / SIDECAR).read_text())
    entry = meta["files"]["projection"]
    path = tmp_path / entry["name"]
    atomic_save_npy(path, np.zeros((40, 3), np.float32))  # re-pinned, but the wrong shape
    entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    atomic_write_json(tmp_path / SIDECAR, meta)
    with pytest.raises(IndexFileError, match="projection"):
        CatalogIndex.load(tmp_path)


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("graph"),
    lambda m: m["files"].pop("projection"),
    lambda m: m["graph"].update(projection_dim=0),
    lambda m: m["graph"].update(identity=True),  # claims the full vectors, but the graph is 12-d
    lambda m: m["graph"].update(identity="yes"),
    lambda m: m["graph"].update(nodes=10**9),
    lambda m: m.update(precision="float64"),
    lambda m: m.update(precision=["float32"]),
    lambda m: m["settings"].update(M=1),
    lambda m: m.update(format_version=5),
    lambda m: m["graph"].update(calibrated_candidates=-3),
])
def test_malformed_sidecars_are_refused(tmp_path: Path, edit) -> None:
    two_stage()[0].save(tmp_path)
    meta = json.loads((tmp_path / SIDECAR).read_text())
    edit(meta)
    atomic_write_json(tmp_path / SIDECAR, meta)
    with pytest.raises(IndexFileError):
        CatalogIndex.load(tmp_path)


@pytest.mark.parametrize("version", [1, 2])
def test_indexes_of_unreleased_formats_are_refused_with_the_fix(tmp_path: Path, version: int) -> None:
    index = CatalogIndex(40, 2)
    index.add([f"v{i}" for i in range(10)], clustered(10))
    index.save(tmp_path)
    meta = json.loads((tmp_path / SIDECAR).read_text())
    meta["format_version"] = version
    (tmp_path / SIDECAR).write_text(json.dumps(seal(meta)))
    with pytest.raises(IndexFileError, match="rebuild the index with 'fashsdk index'"):
        CatalogIndex.load(tmp_path)

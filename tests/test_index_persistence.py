"""Saving and loading the two-stage index: identical answers, pinned files, version-1 indexes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fashsdk import CatalogIndex, IndexFileError
from fashsdk.files import atomic_save_npy, atomic_write_json, sha256_file
from fashsdk.index import SIDECAR


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
    expected = {"vectors", "codes", "predicted", "ids", "graph"} | ({"projection"} if projection_dim else set())
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
    assert set(files_of(tmp_path)) == {"vectors", "codes", "predicted", "ids"}
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
    lambda m: m.update(format_version=3),
])
def test_malformed_sidecars_are_refused(tmp_path: Path, edit) -> None:
    two_stage()[0].save(tmp_path)
    meta = json.loads((tmp_path / SIDECAR).read_text())
    edit(meta)
    atomic_write_json(tmp_path / SIDECAR, meta)
    with pytest.raises(IndexFileError):
        CatalogIndex.load(tmp_path)


def write_v1(directory: Path, ids: list[str | None], vectors: np.ndarray, codes: np.ndarray) -> None:
    """A format-1 index as the previous fashsdk wrote it: hnswlib over the full vectors."""
    import hnswlib

    graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
    graph.init_index(max_elements=len(ids), M=16, ef_construction=200)
    graph.add_items(vectors, np.arange(len(ids)))
    for s, i in enumerate(ids):
        if i is None:
            graph.mark_deleted(s)
    names = {"graph": "graph-v1.hnsw", "vectors": "vectors-v1.npy", "codes": "codes-v1.npy",
             "predicted": "predicted-v1.npy", "ids": "ids-v1.json"}
    graph.save_index(str(directory / names["graph"]))
    atomic_save_npy(directory / names["vectors"], vectors)
    atomic_save_npy(directory / names["codes"], codes)
    atomic_save_npy(directory / names["predicted"], codes)
    atomic_write_json(directory / names["ids"], ids)
    atomic_write_json(directory / SIDECAR, {
        "format": "fashsdk-index", "format_version": 1, "space": "ip", "dim": vectors.shape[1],
        "num_attributes": codes.shape[1], "M": 16, "ef_construction": 200, "ef_search": 64,
        "slots": len(ids), "count": sum(i is not None for i in ids), "info": {"bundle_sha256": "x"},
        "files": {r: {"name": n, "sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size}
                  for r, n in names.items()}})


def test_version_1_indexes_load_and_are_rebuilt_in_the_new_layout(tmp_path: Path) -> None:
    x = clustered(3000, dim=256)  # above the exact-scan size for 256-d
    ids: list[str | None] = [f"v{i}" for i in range(3000)]
    ids[10] = None
    codes = np.zeros((3000, 2), np.int16)
    write_v1(tmp_path, ids, x, codes)
    index = CatalogIndex.load(tmp_path)
    assert index.mode == "two-stage" and len(index) == 2999 and index.info == {"bundle_sha256": "x"}
    assert index.search(x[11], 1)[0] == [["v11"]] and "v10" not in index
    index.save(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / SIDECAR).read_text())["format_version"] == 2
    # a tampered v1 graph is still refused, although the v1 graph itself is not used
    path = tmp_path / "graph-v1.hnsw"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(IndexFileError, match="fails its checksum"):
        CatalogIndex.load(tmp_path)

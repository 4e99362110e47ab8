"""The native graph walk (fashsdk.index.native_walk, walk.c): compiled here with the machine's C
compiler, walked over real hnswlib graphs of clustered unit vectors.

It must find the exact neighbours (recall against brute force) with exact float32 scores, never
return the excluded or deleted items, give way to hnswlib on any write until optimize() makes a
new one, answer alike from many threads, persist, and fall back cleanly without a compiler.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from test_index_two_stage import brute, clustered

from fashsdk import CatalogIndex
from fashsdk.index import native_walk

pytestmark = pytest.mark.skipif(native_walk.kernel() is None, reason="no C compiler: the native walk is unavailable")
ROOT = Path(__file__).resolve().parents[2]


def catalog(n: int = 4000, dim: int = 32, **options: object) -> tuple[CatalogIndex, np.ndarray]:
    x = clustered(n, dim, clusters=40)
    index = CatalogIndex(dim, 4, exact_max_items=0, threads=1, **options)  # type: ignore[arg-type]
    index.add([f"i{i}" for i in range(n)], x, np.random.default_rng(1).integers(0, 5, size=(n, 4)))
    return index, x


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.mark.parametrize("dim", [32, 128])  # codes of the full vectors, and of a 64-d projection
def test_the_walk_finds_the_exact_neighbours_with_exact_scores(dim: int) -> None:
    index, x = catalog(dim=dim)
    walk = index.graph.walk  # type: ignore[union-attr]
    assert walk is not None and index.stats()["walk"] == "native"
    queries = clustered(200, dim, clusters=40, seed=5)
    results = [walk.search(q, 96, 10) for q in queries]
    assert recall([r[0] for r in results], brute(queries, x, 10)) >= 0.95
    for q, (labels, scores) in zip(queries, results):
        assert len(labels) == 10 and np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, x[labels] @ q, rtol=1e-5, atol=1e-6)


def test_a_wider_beam_never_finds_less() -> None:
    index, x = catalog()
    walk = index.graph.walk  # type: ignore[union-attr]
    queries = clustered(200, 32, clusters=40, seed=6)
    truth = brute(queries, x, 10)
    narrow = recall([walk.search(q, 10, 10)[0] for q in queries], truth)  # type: ignore[union-attr]
    wide = recall([walk.search(q, 400, 10)[0] for q in queries], truth)  # type: ignore[union-attr]
    assert narrow <= wide and wide >= 0.99


def test_the_excluded_and_deleted_items_are_never_returned() -> None:
    index, x = catalog()
    found = index.search(x[:50], 10, exclude=[f"i{i}" for i in range(50)])[0]
    assert all(f"i{i}" not in row and len(row) == 10 for i, row in enumerate(found))
    index.remove([f"i{i}" for i in range(50, 100)])
    assert index.stats()["walk"] == "hnswlib"  # a write drops the snapshot
    index.optimize()
    assert index.stats()["walk"] == "native"
    found = index.search(x[50:100], 10)[0]
    assert not {f"i{i}" for i in range(50, 100)} & {i for row in found for i in row}


def test_writes_fall_back_to_hnswlib_with_the_new_items_found() -> None:
    index, x = catalog()
    index.add(["new"], -x[7:8], np.zeros((1, 4), int))
    assert index.stats()["walk"] == "hnswlib"
    assert index.search(-x[7], 1)[0][0] == ["new"]
    index.optimize()
    assert index.stats()["walk"] == "native" and index.search(-x[7], 1)[0][0] == ["new"]


def test_many_threads_get_the_answers_one_thread_gets() -> None:
    index, _ = catalog()
    queries = clustered(64, 32, clusters=40, seed=7)
    alone = [index.search(q, 10)[0][0] for q in queries]
    together: list[list[str] | None] = [None] * len(queries)

    def work(part: int) -> None:
        for i in range(part, len(queries), 4):
            together[i] = index.search(queries[i], 10)[0][0]
    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_a_loaded_index_walks_natively_and_answers_alike(tmp_path: Path) -> None:
    index, x = catalog()
    before = index.search(x[:20], 10)
    index.save(tmp_path / "idx")
    loaded = CatalogIndex.load(tmp_path / "idx")
    assert loaded.stats()["walk"] == "native"
    after = loaded.search(x[:20], 10)
    assert after[0] == before[0]


def test_projected_and_half_precision_indexes_keep_the_hnswlib_walk() -> None:
    projected, _ = catalog(projection_dim=16)
    half, _ = catalog(precision="float16")
    assert projected.stats()["walk"] == "hnswlib" and half.stats()["walk"] == "hnswlib"


def test_loading_the_kernel_does_not_flush_denormals() -> None:
    tiny = np.float32(1e-40)  # a float32 subnormal: -ffast-math in a shared library would zero it
    assert native_walk.kernel() is not None and tiny * np.float32(1.0) != 0


@pytest.mark.parametrize("env, expected", [({"FASHSDK_NATIVE_WALK": "0"}, "FASHSDK_NATIVE_WALK=0"),
                                           ({"CC": "/nonexistent/cc"}, "compiling the native walk failed")])
def test_without_the_kernel_searches_walk_hnswlib(env: dict[str, str], expected: str) -> None:
    script = textwrap.dedent("""
        import logging, sys
        import numpy as np
        sys.path.insert(0, "tests/runtime")
        logging.basicConfig(level=logging.INFO)
        from test_index_two_stage import brute, clustered
        from fashsdk import CatalogIndex
        x = clustered(3000, 32, clusters=40)
        index = CatalogIndex(32, 4, exact_max_items=0, threads=1)
        index.add([f"i{i}" for i in range(3000)], x, np.zeros((3000, 4), int))
        found = [[int(i[1:]) for i in row] for row in index.search(x[:50], 10)[0]]
        hits = np.mean([len(set(f) & set(t.tolist())) for f, t in zip(found, brute(x[:50], x, 10))])
        print(index.stats()["walk"], hits)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr
    walk, hits = done.stdout.split()
    assert walk == "hnswlib" and float(hits) >= 9.5
    assert expected in done.stderr


def test_similar_walks_the_subspace_graphs_on_float_codes_with_exact_scores() -> None:
    n, dim = 4000, 128  # an attribute's chunks are near-duplicates that int8 codes would blur
    x = clustered(n, dim, clusters=40)
    index = CatalogIndex(dim, 4, exact_max_items=0, threads=1)
    index.add([f"i{i}" for i in range(n)], x, np.zeros((n, 4), int))
    index.prepare_similar([1])
    walk = index.subspaces.graphs[1].walk
    assert walk is not None and walk.nbytes() < n * 32 * 4 * 2 + n * 64 * 4 + 10**6  # one copy of the chunks
    chunk = x[:, 32:64] / np.linalg.norm(x[:, 32:64], axis=1, keepdims=True)
    hits = index.hits(chunk[:100], 10, attribute=1, exclude=[f"i{i}" for i in range(100)])
    truth = [[int(j) for j in row if j != i][:10] for i, row in enumerate(brute(chunk[:100], chunk, 11))]
    found = [[int(h[1:]) for h in hit.ids] for hit in hits]
    assert recall(found, np.array(truth)) >= 0.99
    for i, hit in enumerate(hits):
        np.testing.assert_allclose(hit.scores, chunk[[int(h[1:]) for h in hit.ids]] @ chunk[i], rtol=1e-5, atol=1e-6)


def test_single_similar_calls_walk_from_their_own_item_and_never_return_it() -> None:
    n, dim = 4000, 128
    x = clustered(n, dim, clusters=40)
    index = CatalogIndex(dim, 4, exact_max_items=0, threads=1)
    index.add([f"i{i}" for i in range(n)], x, np.zeros((n, 4), int))
    chunk = x[:, 64:96] / np.linalg.norm(x[:, 64:96], axis=1, keepdims=True)
    truth = [[int(j) for j in row if j != i][:10] for i, row in enumerate(brute(chunk[:60], chunk, 11))]
    found = []
    for i in range(60):  # one query per call: the path the SDK's similar() takes; the first builds the graph
        ids, scores = index.search(chunk[i], 10, exclude=[f"i{i}"], attribute=2)
        hit = index.hits(chunk[i][None], 10, exclude=[f"i{i}"], attribute=2)[0]
        assert ids[0] == hit.ids and f"i{i}" not in hit.ids and len(hit.ids) == 10
        np.testing.assert_array_equal(scores[0], hit.scores)
        assert hit.labels.shape == (10, 4)
        found.append([int(h[1:]) for h in hit.ids])
    assert index.subspaces.graphs[2].walk is not None
    assert recall(found, np.array(truth)) >= 0.98


def test_a_batch_walks_natively_in_parallel_and_equals_single_calls() -> None:
    index, x = catalog()
    index.threads = 2
    queries = x[:100] + 0.5 * x[100:200]
    exclude = [f"i{i}" if i % 3 else None for i in range(100)]  # some queries leave out their item
    batch = index.hits(queries, 10, exclude=exclude)
    for i, hit in enumerate(batch):
        single = index.hits(queries[i][None], 10, exclude=[exclude[i]])[0]
        assert hit.ids == single.ids and (exclude[i] is None or exclude[i] not in hit.ids)
        np.testing.assert_array_equal(hit.scores, single.scores)
        np.testing.assert_array_equal(hit.labels, single.labels)
    truth = brute(queries, x, 11)
    found = [[int(h[1:]) for h in hit.ids] for hit in batch]
    assert recall(found, np.array([[j for j in row if f"i{j}" != exclude[i]][:10] for i, row in enumerate(truth)])) >= 0.95
    assert index.search(queries, 5000)[0][0][-1] is not None  # k beyond the walk's beam: the general path answers


def test_search_returns_what_hits_returns_without_the_label_lookups() -> None:
    index, x = catalog()
    for i in range(30):
        ids, scores = index.search(x[i], 10, exclude=[f"i{i}"])
        hit = index.hits(x[i][None], 10, exclude=[f"i{i}"])[0]
        assert ids == [hit.ids] and f"i{i}" not in hit.ids
        np.testing.assert_array_equal(scores[0], hit.scores)


def test_where_walks_the_per_value_graphs_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    from fashsdk.index import partitions
    monkeypatch.setattr(partitions, "FILTER_SCAN_VALUES", 0)  # walk the value graphs, however small
    n = 8000
    x = clustered(n, 32, clusters=40)
    codes = np.stack([np.arange(n) % 4, np.arange(n) % 3, np.zeros(n, int), np.zeros(n, int)], 1)
    index = CatalogIndex(32, 4, exact_max_items=0, threads=1)
    index.add([f"i{i}" for i in range(n)], x, codes)
    index.prepare_filters([0])
    assert all(g.walk is not None for g in index.partitions.graphs.values())
    queries = clustered(100, 32, clusters=40, seed=3)
    found = index.search(queries, 10, where={0: frozenset([2]), 1: frozenset([1])})[0]
    chosen = np.flatnonzero((codes[:, 0] == 2) & (codes[:, 1] == 1))
    truth = chosen[brute(queries, x[chosen], 10)]
    assert all(codes[int(i[1:]), 0] == 2 and codes[int(i[1:]), 1] == 1 for row in found for i in row)
    assert recall([[int(i[1:]) for i in row] for row in found], truth) >= 0.95

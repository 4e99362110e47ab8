"""``where`` filters and attribute subspaces in the index: exact scans for small selections,
per-value graphs and subspace graphs at scale, all kept right through writes and saves.

Graph paths are forced on small synthetic catalogs (``exact_max_items`` and a lowered
selection-scan threshold), and every answer is checked against a brute-force scan.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fashsdk.index.partitions as partitions
from fashsdk import CatalogIndex, QueryError
from fashsdk.index.subspaces import chunks

DIM, A = 24, 3  # three 8-d attribute chunks
LAYOUT = [(0, 8), (8, 16), (16, 24)]
SIZES = (4, 3, 5)


def catalog(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors whose chunk a is clustered by value a, so subspaces carry their attribute."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, n) for s in SIZES], axis=1).astype(np.int16)
    centres = [rng.normal(size=(s, 8)) for s in SIZES]
    x = np.concatenate([centres[a][codes[:, a]] + 0.6 * rng.normal(size=(n, 8)) for a in range(A)], axis=1)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), codes


def built(n: int = 1500, graph: bool = True) -> tuple[CatalogIndex, np.ndarray, np.ndarray]:
    x, codes = catalog(n)
    index = CatalogIndex(DIM, A, layout=LAYOUT, exact_max_items=64 if graph else 10**9, threads=1)
    index.add([f"i{i}" for i in range(n)], x, codes)
    return index, x, codes


def brute(query: np.ndarray, vectors: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    scores[~allowed] = -np.inf
    order = np.argsort(-scores, kind="stable")[:min(k, int(allowed.sum()))]
    return order.tolist()


@pytest.fixture()
def scan_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitions, "FILTER_SCAN_VALUES", 64 * DIM)  # selections above 64 items walk graphs


@pytest.mark.parametrize("graph", [True, False], ids=["graphs", "exact"])
@pytest.mark.parametrize("where", [{0: frozenset([1])}, {0: frozenset([0, 2]), 2: frozenset([1, 3])},
                                   {1: frozenset([2]), 2: frozenset([4])}])
def test_filtered_results_match_an_exact_filtered_scan(scan_threshold, graph: bool, where: dict) -> None:
    index, x, codes = built(graph=graph)
    allowed = np.ones(len(x), bool)
    for a, values in where.items():
        allowed &= np.isin(codes[:, a], list(values))
    queries = catalog(40, seed=9)[0]
    recall = []
    for q in queries:
        ids, scores = index.search(q, 10, where=where)
        assert all(allowed[int(i[1:])] for i in ids[0]) and len(ids[0]) == min(10, allowed.sum())
        assert np.all(np.diff(scores[0]) <= 1e-6)
        recall.append(len({int(i[1:]) for i in ids[0]} & set(brute(q, x, allowed, 10))) / 10)
    assert np.mean(recall) >= (0.95 if graph else 1.0)
    if graph:
        assert index.stats()["partition_graphs"] > 0  # the per-value graphs were walked, not a scan


def test_a_filter_that_selects_few_items_still_returns_k_of_them(scan_threshold) -> None:
    index, x, codes = built()
    rare = np.flatnonzero((codes[:, 0] == 3) & (codes[:, 1] == 2) & (codes[:, 2] == 0))
    where = {0: frozenset([3]), 1: frozenset([2]), 2: frozenset([0])}
    ids, _ = index.search(x[0], 10, where=where)
    assert sorted(int(i[1:]) for i in ids[0]) == sorted(brute(x[0], x, np.isin(np.arange(len(x)), rare), 10))
    assert len(ids[0]) == min(10, len(rare))
    empty = {0: frozenset([3]), 1: frozenset([2]), 2: frozenset([0, 1, 2, 3, 4])}
    codes_none = index.search(x[0], 5, where={0: frozenset([9])})[0]
    assert codes_none == [[]] and len(index.search(x[0], 5, where=empty)[0][0]) == 5


def test_value_graphs_follow_adds_removes_updates_and_relabels(scan_threshold) -> None:
    index, x, codes = built()
    where = {0: frozenset([1])}
    index.search(x[0], 10, where=where)  # builds the graph of value 1
    assert index.stats()["partition_graphs"] >= 1
    new, new_codes = catalog(200, seed=4)
    new_codes[:, 0] = 1
    index.add([f"n{i}" for i in range(200)], new, new_codes)
    gone = [f"i{i}" for i in np.flatnonzero(codes[:, 0] == 1)[:100]]
    index.remove(gone)
    moved = [f"i{i}" for i in np.flatnonzero(codes[:, 0] == 2)[:50]]
    relabelled = codes[[int(i[1:]) for i in moved]].copy()
    relabelled[:, 0] = 1
    index.set_labels(moved, relabelled)
    everything = dict(zip([f"i{i}" for i in range(len(x))], x)) | dict(zip([f"n{i}" for i in range(200)], new))
    current = {f"i{i}": codes[i, 0] for i in range(len(x))} | {f"n{i}": 1 for i in range(200)}
    current.update({m: 1 for m in moved})
    allowed_ids = [i for i in everything if i not in gone and current[i] == 1]
    vectors = np.stack([everything[i] for i in allowed_ids])
    for q in catalog(20, seed=11)[0]:
        ids, _ = index.search(q, 10, where=where)
        assert set(ids[0]) <= set(allowed_ids) and not set(ids[0]) & set(gone)
        best = {allowed_ids[j] for j in np.argsort(-(vectors @ q))[:10]}
        assert len(set(ids[0]) & best) >= 9


def test_similar_searches_one_attribute_subspace(scan_threshold) -> None:
    index, x, codes = built()
    assert index.stats()["subspace_graphs"] == []
    for a in range(A):
        space = chunks(x, LAYOUT[a])
        hits = index.hits(space[:30], 10, attribute=a, exclude=[f"i{i}" for i in range(30)])
        assert index.stats()["subspace_graphs"] == list(range(a + 1))  # built on first use
        same = np.mean([(codes[[int(i[1:]) for i in h.ids], a] == codes[qi, a]).mean() for qi, h in enumerate(hits)])
        full = index.search(x[:30], 10, exclude=[f"i{i}" for i in range(30)])[0]
        same_full = np.mean([(codes[[int(i[1:]) for i in r], a] == codes[qi, a]).mean() for qi, r in enumerate(full)])
        assert same > 0.9 and same > same_full
        exact = index.hits(space[:30], 10, attribute=a, exclude=[f"i{i}" for i in range(30)], exact=True)
        overlap = np.mean([len(set(h.ids) & set(e.ids)) / 10 for h, e in zip(hits, exact)])
        assert overlap >= 0.95


def test_subspace_graphs_are_saved_kept_up_to_date_and_refused_when_tampered(tmp_path: Path, scan_threshold) -> None:
    index, x, codes = built()
    index.prepare_similar([0, 2])
    index.save(tmp_path / "saved")
    loaded = CatalogIndex.load(tmp_path / "saved")
    assert loaded.stats()["subspace_graphs"] == [0, 2] and loaded.layout == LAYOUT
    q = chunks(x[:5], LAYOUT[2])
    assert [h.ids for h in loaded.hits(q, 8, attribute=2)] == [h.ids for h in index.hits(q, 8, attribute=2)]
    loaded.remove(["i0", "i1"])
    loaded.add(["fresh"], x[0:1] * -1.0, codes[:1])
    found = loaded.hits(chunks(x[0:1] * -1.0, LAYOUT[2]), 3, attribute=2)[0].ids
    assert found[0] == "fresh" and "i0" not in loaded.hits(q[:1], 20, attribute=2)[0].ids
    graph_file = next((tmp_path / "saved").glob("subspace-2-*.hnsw"))
    graph_file.write_bytes(graph_file.read_bytes()[:-16])
    with pytest.raises(Exception, match="checksum"):
        CatalogIndex.load(tmp_path / "saved")


def test_similar_with_a_filter_and_bad_arguments(scan_threshold) -> None:
    index, x, codes = built()
    space = chunks(x[:10], LAYOUT[1])
    for qi, hit in enumerate(index.hits(space, 5, attribute=1, where={0: frozenset([2])})):
        assert all(codes[int(i[1:]), 0] == 2 for i in hit.ids) and len(hit.ids) == 5
    with pytest.raises(QueryError, match="8-d"):
        index.hits(x[:1], 5, attribute=1)
    with pytest.raises(QueryError, match="outside"):
        index.hits(space, 5, attribute=7)
    no_layout = CatalogIndex(25, 3)
    no_layout.add(["a"], np.ones((1, 25), np.float32))
    with pytest.raises(QueryError, match="no attribute layout"):
        no_layout.hits(np.ones((1, 8), np.float32), 1, attribute=0)

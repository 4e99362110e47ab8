"""Renumbering a built hnswlib graph for memory locality (fashsdk.index.graph_layout, CatalogIndex.optimize).

Real hnswlib graphs on clustered unit vectors; the renumbered graph must answer exactly as
the original (same labels and distances), keep deletions, accept further writes, persist, and
actually place graph neighbours closer together in memory.
"""
from __future__ import annotations

import hnswlib
import numpy as np
import pytest
from test_index_two_stage import clustered

import fashsdk.index.policy as index_module
from fashsdk import CatalogIndex
from fashsdk.index.graph_layout import breadth_first, locality_permutation, permuted_state, relaid


def graph_of(x: np.ndarray, M: int = 8) -> hnswlib.Index:
    g = hnswlib.Index(space="ip", dim=x.shape[1])
    g.init_index(max_elements=len(x) + 50, M=M, ef_construction=60, random_seed=3)
    g.set_num_threads(1)
    g.add_items(x, np.arange(len(x)) * 7 + 3)  # labels unlike internal ids
    return g


def level0_neighbours(g: hnswlib.Index) -> tuple[np.ndarray, np.ndarray]:
    """(counts, ids) of every node's level-0 links, read from hnswlib's own state."""
    s = g.__getstate__()[0]
    n, per, width = s["cur_element_count"], s["size_data_per_element"], s["max_M0"]
    words = s["data_level0"].view(np.uint8)[:n * per].reshape(n, per)[:, :4 + 4 * width].copy().view(np.uint32)
    return words[:, 0] & 0xFFFF, words[:, 1:].astype(np.int64)


def test_breadth_first_visits_every_node_once_in_level_order() -> None:
    neighbours = np.array([[1, 2, 0], [3, 0, 0], [3, 4, 0], [0, 0, 0], [5, 0, 0], [0, 0, 0], [5, 0, 0]])
    counts = np.array([2, 1, 2, 0, 1, 0, 1])  # node 6 only points outwards: unreachable from 0
    order = breadth_first(neighbours, counts, 0)
    assert order.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert breadth_first(neighbours, counts, 2).tolist() == [2, 3, 4, 5, 0, 1, 6]


def test_relaid_graph_answers_exactly_like_the_original_and_keeps_deletions() -> None:
    x = clustered(3000, dim=32)
    g = graph_of(x)
    g.mark_deleted(3 + 7 * 10)
    queries = clustered(50, dim=32, seed=4)
    fresh = relaid(g, None, queries[:8])
    assert fresh is not None
    for k in (1, 10, 40):
        a_labels, a_dist = g.knn_query(queries, k=k)
        b_labels, b_dist = fresh.knn_query(queries, k=k)
        np.testing.assert_array_equal(a_dist, b_dist)
        assert a_labels.tolist() == b_labels.tolist()
    assert 73 not in fresh.knn_query(x[10], k=5)[0][0].tolist()  # still deleted
    np.testing.assert_array_equal(fresh.get_items([3, 3 + 7 * 2999]), g.get_items([3, 3 + 7 * 2999]))
    fresh.add_items(-x[:5], [1, 2, 4, 5, 6])  # room left in max_elements, new labels
    fresh.set_ef(100)
    assert fresh.knn_query(-x[:5], k=1)[0][:, 0].tolist() == [1, 2, 4, 5, 6]
    assert fresh.get_current_count() == 3005


def test_renumbering_puts_neighbours_closer_in_memory() -> None:
    rng = np.random.default_rng(0)
    x = clustered(4000, dim=32)[rng.permutation(4000)]  # inserted in random order
    g = graph_of(x)
    fresh = relaid(g, None, x[:4])
    assert fresh is not None

    def near_links(graph: hnswlib.Index) -> float:
        """Share of level-0 links to a node within 64 records (a few pages) of the linking node."""
        counts, ids = level0_neighbours(graph)
        valid = np.arange(ids.shape[1])[None, :] < counts[:, None]
        return float(np.mean(np.abs(ids - np.arange(len(ids))[:, None])[valid] < 64))

    assert near_links(fresh) > 3 * near_links(g)  # measured: 0.04 -> 0.20


def test_groups_become_contiguous_blocks() -> None:
    x = clustered(2000, dim=24)
    g = graph_of(x)
    state = g.__getstate__()[0]
    groups = np.arange(2000) % 3  # by internal id (labels are 7 * i + 3)
    perm = locality_permutation(state, groups)
    assert sorted(perm.tolist()) == list(range(2000))
    assert np.all(np.diff(groups[perm]) >= 0)
    moved = permuted_state(state, perm)
    assert moved["enterpoint_node"] == int(np.flatnonzero(perm == state["enterpoint_node"])[0])


def test_a_state_that_does_not_round_trip_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(500, dim=16)
    g = graph_of(x)
    import fashsdk.index.graph_layout as layout

    real = layout.permuted_state

    def broken(state: dict, perm: np.ndarray) -> dict:  # a format change this code would not know
        out = real(state, perm)
        out["enterpoint_node"] = (out["enterpoint_node"] + 1) % 500
        levels = out["element_levels"].copy()
        levels[:] = 0
        out["element_levels"], out["link_lists"], out["max_level"] = levels, out["link_lists"][:0], 0
        data = out["data_level0"].view(np.uint8).reshape(-1, out["size_data_per_element"]).copy()
        data[:, 4:4 + 4 * out["max_M0"]] = 0  # every link pointing at node 0
        out["data_level0"] = data.reshape(-1).view(out["data_level0"].dtype)
        return out

    monkeypatch.setattr(layout, "permuted_state", broken)
    assert relaid(g, None, clustered(8, dim=16, seed=2)) is None


def test_index_optimize_keeps_results_and_persists(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "LAYOUT_MIN_NODES", 1000)
    monkeypatch.setattr(index_module, "walk_for", lambda *args: None)  # the hnswlib walk, before and after
    x = clustered(2500, dim=32)
    index = CatalogIndex(32, 2, exact_max_items=100, threads=1, ef_search=64)  # not the count optimize() measures
    codes = np.stack([np.arange(2500) % 4, np.arange(2500) % 3], 1)
    index.add([f"i{i}" for i in range(200)], x[:200], codes[:200])  # graph built small: not laid out
    index.add([f"i{i}" for i in range(200, 2500)], x[200:], codes[200:])
    assert index.stats()["laid_out_nodes"] == 0
    queries = clustered(30, dim=32, seed=8)
    before = index.search(queries, 10, exclude=[f"i{i}" for i in range(30)])
    assert index.optimize() is True
    assert index.stats()["laid_out_nodes"] == 2500
    assert index.optimize() is False  # nothing appended since
    after = index.search(queries, 10, exclude=[f"i{i}" for i in range(30)])
    assert after[0] == before[0]
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)
    index.remove(["i5"])
    index.add(["new"], -x[7:8], codes[7:8])
    assert index.search(-x[7], 1)[0][0] == ["new"]
    assert "i5" not in index.search(x[5], 5)[0][0]
    index.save(tmp_path / "idx")
    loaded = CatalogIndex.load(tmp_path / "idx")
    assert loaded.stats()["laid_out_nodes"] == 2500
    assert loaded.search(queries, 10)[0] == index.search(queries, 10)[0]


def test_full_builds_lay_out_large_graphs_by_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "LAYOUT_MIN_NODES", 1000)
    x = clustered(1500, dim=32)
    index = CatalogIndex(32, 2, exact_max_items=1000, threads=1)
    index.add([f"i{i}" for i in range(1500)], x)  # crosses the exact-scan size: one full build
    assert index.mode == "two-stage"
    assert index.stats()["laid_out_nodes"] == 1500
    small = CatalogIndex(32, 2, exact_max_items=100, threads=1)
    small.add([f"i{i}" for i in range(500)], x[:500])
    assert small.stats()["laid_out_nodes"] == 0  # below the threshold: left in insertion order

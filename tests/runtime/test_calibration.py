"""The candidate count a built index measures for itself (fashsdk.index.calibration).

Real hnswlib graphs over clustered unit vectors: the chosen count must be the smallest ladder
step whose probe recall reaches the target, move with the target and the data, survive a save
and load, yield to an explicit ef_search, and give real searches the recall it promises.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_index_two_stage import brute, clustered

from fashsdk import CatalogIndex, IndexFileError
from fashsdk.files import atomic_write_json, seal
from fashsdk.index import calibration
from fashsdk.index.persistence import SIDECAR


def catalog(n: int = 3000, dim: int = 32, spread: float = 0.35) -> tuple[CatalogIndex, np.ndarray]:
    x = clustered(n, dim, clusters=40, spread=spread)
    codes = np.random.default_rng(1).integers(0, 5, size=(n, 4))
    index = CatalogIndex(dim, 4, exact_max_items=0, threads=1)
    index.add([f"i{i}" for i in range(n)], x, codes)
    return index, x


def probe_recall(index: CatalogIndex, target_count: int) -> float:
    alive = index.table.live_slots()
    picked = np.sort(np.random.default_rng(len(alive)).choice(alive, calibration.PROBES, replace=False))
    probes = calibration.probe_queries(index.store.rows(picked), index.layout, len(alive))
    truth = index.store.scan_topk(probes, index.table.used, index.table.alive, calibration.K)[0]
    return calibration.graph_recall(index.graph, None, probes, truth, target_count, 1)  # type: ignore[arg-type]


def test_probes_swap_exactly_one_attribute_chunk_and_are_unit_length() -> None:
    x = clustered(200, 32)
    layout = [(0, 8), (8, 16), (16, 24), (24, 32)]
    probes = calibration.probe_queries(x, layout, seed=0)
    np.testing.assert_allclose(np.linalg.norm(probes, axis=1), 1.0, rtol=1e-5)
    for row, probe in zip(x, probes):
        same_direction = [np.allclose(probe[a:b] / np.linalg.norm(probe[a:b]), row[a:b] / np.linalg.norm(row[a:b]),
                                      atol=1e-5) for a, b in layout]
        assert same_direction.count(False) <= 1  # one chunk from a donor (the donor may be the row itself)
    midpoints = calibration.probe_queries(x, None, seed=0)
    assert not np.allclose(midpoints, x)


def test_the_build_picks_the_smallest_ladder_step_reaching_the_target() -> None:
    index, _ = catalog()
    count = index.graph.calibrated  # type: ignore[union-attr]
    assert count in calibration.LADDER
    assert index.stats()["candidates_k10"] == max(count, 33)
    assert probe_recall(index, count) >= calibration.TARGET_RECALL
    step = calibration.LADDER.index(count)
    if step:
        assert probe_recall(index, calibration.LADDER[step - 1]) < calibration.TARGET_RECALL


def test_a_higher_target_or_a_harder_catalog_asks_for_more_candidates() -> None:
    index, _ = catalog()
    with index.lock.write():
        loose, strict = calibration.calibrate(index, 0.8), calibration.calibrate(index, 0.999)
    assert loose is not None and strict is not None and loose < strict
    tight_clusters, _ = catalog(spread=0.15)
    diffuse, _ = catalog(spread=1.5)
    assert tight_clusters.graph.calibrated <= diffuse.graph.calibrated  # type: ignore[union-attr]


def test_real_searches_reach_the_target_at_the_calibrated_count() -> None:
    index, x = catalog()
    queries = clustered(300, 32, clusters=40, seed=9)
    found = [[int(i[1:]) for i in row] for row in index.search(queries, 10)[0]]
    truth = brute(queries, x, 10)
    recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)])
    assert recall >= calibration.TARGET_RECALL - 0.02


def test_an_explicit_ef_search_overrides_the_calibration() -> None:
    index, _ = catalog()
    index.ef_search = 200
    assert index.stats()["candidates_k10"] == 200
    index.ef_search = None
    assert index.stats()["candidates_k10"] == max(index.graph.calibrated, 33)  # type: ignore[union-attr]


def test_small_graphs_keep_the_size_rule() -> None:
    index, _ = catalog(n=1000)
    assert index.graph is not None and index.graph.calibrated is None
    assert index.stats()["candidates_k10"] == 64


def test_the_count_survives_save_and_load_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    index, _ = catalog()
    index.save(tmp_path / "ok")
    loaded = CatalogIndex.load(tmp_path / "ok")
    assert loaded.graph.calibrated == index.graph.calibrated  # type: ignore[union-attr]
    assert loaded.stats()["candidates_k10"] == index.stats()["candidates_k10"]
    for bad in (0, 10**9, "64", True):
        meta = json.loads((tmp_path / "ok" / SIDECAR).read_text())
        meta.pop("sealed_sha256", None)
        meta["graph"]["calibrated_candidates"] = bad
        atomic_write_json(tmp_path / "ok" / SIDECAR, seal(meta))  # resealed: the value itself is checked
        with pytest.raises(IndexFileError, match="calibrated_candidates|expected an integer"):
            CatalogIndex.load(tmp_path / "ok")


def two_kinds_of_chunks(n: int = 6000) -> tuple[CatalogIndex, np.ndarray]:
    """Attribute 0's chunks sit in tight clusters (an easy graph), attribute 1's are spread
    uniformly over the 32-d sphere (a hard one); 2 and 3 are clustered."""
    x = clustered(n, 128, clusters=40, spread=0.2)
    x[:, 32:64] = np.random.default_rng(3).standard_normal((n, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = CatalogIndex(128, 4, exact_max_items=0, threads=1)
    index.add([f"i{i}" for i in range(n)], x, np.zeros((n, 4), int))
    index.prepare_similar([0, 1])
    return index, x


def similar_recall(index: CatalogIndex, x: np.ndarray, attribute: int, items: range) -> float:
    """Share of each similar() result scoring at least the exact 10th best (ties count), on items
    the calibration did not pick on purpose."""
    start, stop = index.layout[attribute]  # type: ignore[index]
    chunk = x[:, start:stop] / np.linalg.norm(x[:, start:stop], axis=1, keepdims=True)
    good = 0
    for i in items:
        exact = chunk @ chunk[i]
        exact[i] = -np.inf
        tenth = np.sort(exact)[-10] - calibration.TIE
        _, scores = index.search(chunk[i], 10, exclude=[f"i{i}"], attribute=attribute)
        good += int((scores[0] >= tenth).sum())
    return good / (10 * len(items))


def test_each_similar_graph_measures_its_own_beam_and_similar_reaches_the_target() -> None:
    index, x = two_kinds_of_chunks()
    beams = {a: g.beam for a, g in index.subspaces.graphs.items()}
    assert set(beams.values()) <= set(calibration.SIMILAR_LADDER)
    for attribute in (0, 1):
        assert similar_recall(index, x, attribute, range(0, 6000, 30)) >= calibration.SIMILAR_TARGET - 0.01
    with index.lock.write():
        # a stricter target: the spread chunks need a wider walk than the clustered ones
        assert calibration.similar_beam(index, 1, target=0.999) > calibration.similar_beam(index, 0, target=0.999)
        # the ladder's ends: any recall, and one no beam reaches
        assert calibration.similar_beam(index, 1, target=0.0) == calibration.SIMILAR_LADDER[0]
        assert calibration.similar_beam(index, 1, target=1.01) == calibration.SIMILAR_LADDER[-1]
    assert {a: g.beam for a, g in index.subspaces.graphs.items()} == beams  # measuring left the beams alone


def test_similar_beams_survive_save_and_load_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    index, _ = two_kinds_of_chunks(3000)
    index.save(tmp_path / "ok")
    loaded = CatalogIndex.load(tmp_path / "ok")
    assert {a: g.beam for a, g in loaded.subspaces.graphs.items()} == \
        {a: g.beam for a, g in index.subspaces.graphs.items()}
    meta = json.loads((tmp_path / "ok" / SIDECAR).read_text())
    for bad in (0, 10**9, "16"):
        meta.pop("sealed_sha256", None)
        meta["subspaces"]["1"]["beam"] = bad
        atomic_write_json(tmp_path / "ok" / SIDECAR, seal(meta))
        with pytest.raises(IndexFileError, match="subspace|expected an integer"):
            CatalogIndex.load(tmp_path / "ok")
    del meta["subspaces"]["1"]["beam"]  # saved before similar was calibrated: the former fixed beam
    meta.pop("sealed_sha256", None)
    atomic_write_json(tmp_path / "ok" / SIDECAR, seal(meta))
    assert CatalogIndex.load(tmp_path / "ok").subspaces.graphs[1].beam == 48

"""CatalogIndex's two-stage search (projection graph + exact re-rank) against exact search.

Small clustered catalogs (like embeddings: a few dozen value clusters, L2-normalised), real
hnswlib graphs built on one thread so every run builds the same graph.
"""
from __future__ import annotations

import numpy as np
import pytest

from fashsdk import CatalogIndex, QueryError
from fashsdk.index.projection import fit_projection


def clustered(n: int, dim: int = 48, clusters: int = 12, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """Items around the same cluster centres for every seed (the seed draws members)."""
    centres = np.random.default_rng(1000 + dim).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def built(n: int = 600, dim: int = 48, **kwargs: object) -> tuple[CatalogIndex, np.ndarray]:
    """A graph from the first item on; a 16-d projection unless the test asks otherwise."""
    x = clustered(n, dim)
    options = {"exact_max_items": 0, "threads": 1, "projection_dim": 16, **kwargs}
    index = CatalogIndex(dim, 2, **options)  # type: ignore[arg-type]
    index.add([f"i{i}" for i in range(n)], x, np.stack([np.arange(n) % 5, np.arange(n) % 3], 1))
    return index, x


@pytest.mark.parametrize("projection_dim", [12, None], ids=["projected", "identity"])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_candidates_covering_the_catalog_give_exactly_the_exact_answer(precision: str, projection_dim) -> None:
    index, x = built(precision=precision, ef_search=10_000, projection_dim=projection_dim)
    assert index.mode == "two-stage"
    assert index.stats()["projection_dim"] == (projection_dim or 48)
    queries = clustered(20, seed=5)
    two_ids, two_scores = index.search(queries, 10)
    ex_ids, ex_scores = index.search(queries, 10, exact=True)
    assert two_ids == ex_ids
    for a, b in zip(two_scores, ex_scores):  # same vectors, different BLAS summation order
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    if precision == "float32":  # and both equal numpy on the raw vectors
        assert [[int(i[1:]) for i in row] for row in two_ids] == brute(queries, x, 10).tolist()
    else:  # float16 storage costs at most ~1e-3 of cosine
        for row, scores, q in zip(two_ids, two_scores, queries):
            np.testing.assert_allclose(scores, x[[int(i[1:]) for i in row]] @ q, atol=2e-3)


@pytest.mark.parametrize("projection_dim", [16, None], ids=["projected", "identity"])
def test_default_candidates_have_high_recall_and_sorted_cosines(projection_dim) -> None:
    index, x = built(n=1500, projection_dim=projection_dim)
    queries = clustered(40, seed=9)
    ids, scores = index.search(queries, 10)
    exact = brute(queries, x, 10)
    recall = np.mean([len({int(i[1:]) for i in row} & set(e.tolist())) / 10 for row, e in zip(ids, exact)])
    assert recall >= 0.9  # 48-d clusters with wide spread: a hard case for 48 candidates
    for row, s, q in zip(ids, scores, queries):
        assert list(s) == sorted(s, reverse=True)
        np.testing.assert_allclose(s, x[[int(i[1:]) for i in row]] @ q, rtol=0, atol=1e-5)


@pytest.mark.parametrize("projection_dim", [16, None], ids=["projected", "identity (single-query fast path)"])
def test_batch_and_single_queries_agree_and_exclude_drops_only_that_id(projection_dim) -> None:
    index, x = built(projection_dim=projection_dim)
    queries = x[:6] + 0.01
    batch, _ = index.search(queries, 5)
    singles = [index.search(q, 5)[0][0] for q in queries]
    assert batch == singles
    excluded, scores = index.search(queries, 5, exclude=[row[0] for row in batch])
    for full, rest, s in zip(batch, excluded, scores):
        assert rest == full[1:] + rest[4:] and len(rest) == 5 and len(s) == 5
    none_excluded, _ = index.search(queries, 5, exclude=[None] * 6)
    assert none_excluded == batch
    with pytest.raises(QueryError, match="one per query"):
        index.search(queries, 5, exclude=[None])
    for q, row, s in zip(queries, batch, scores):  # single queries with an exclusion, ids and scores
        one, one_scores = index.search(q, 5, exclude=[row[0]])
        assert one[0] == row[1:] + one[0][4:]
        np.testing.assert_allclose(one_scores[0][:4], index.search(q, 5)[1][0][1:], rtol=1e-6)
        np.testing.assert_allclose(one_scores[0], s, rtol=1e-6)


def test_mode_follows_catalog_size() -> None:
    x = clustered(400)
    index = CatalogIndex(48, 2, exact_max_items=100, threads=1, projection_dim=16)
    index.add([str(i) for i in range(100)], x[:100])
    assert index.mode == "exact"  # small: every search scans
    index.add([str(i) for i in range(100, 400)], x[100:])
    assert index.mode == "two-stage" and index.stats()["fit_count"] == 400
    index.remove([str(i) for i in range(360)])
    assert index.mode == "exact"  # removals shrank it to half the limit: the graph is dropped
    ids, _ = index.search(x[390], 3)
    assert ids[0][0] == "390"


def test_add_remove_update_after_the_projection_is_fitted() -> None:
    index, x = built()
    fitted = index.stats()["fit_count"]
    # items added later are projected with the stored projection and found
    late = clustered(50, seed=3)
    index.add([f"late{i}" for i in range(50)], late)
    assert index.stats()["fit_count"] == fitted
    assert [index.search(v, 1)[0][0][0] for v in late] == [f"late{i}" for i in range(50)]
    # removed items never come back, even as exact neighbours of their own vector
    gone = [f"i{i}" for i in range(0, 600, 3)]
    index.remove(gone)
    results, _ = index.search(x[:60], 10)
    assert not set(gone) & {i for row in results for i in row}
    assert len(index) == 600 - 200 + 50
    # update moves an item: found at its new place, not at the old one
    target = clustered(1, seed=77)[0]
    index.update(["i1"], target[None], codes=np.array([[4, 2]]))
    assert index.search(target, 1)[0][0] == ["i1"]
    assert "i1" not in index.search(x[1], 5)[0][0]
    assert index.get_many(["i1"])[1].tolist() == [[4, 2]]
    np.testing.assert_allclose(index.get("i1")[0], target, atol=1e-6)


def test_slots_are_reused_so_churn_does_not_grow_the_index() -> None:
    index, x = built()
    slots_before = index.stats()["slots"]
    rng = np.random.default_rng(1)
    for round_ in range(5):
        pick = [str(i) for i in rng.choice(sorted(index.ids), 40, replace=False)]
        index.update(pick, clustered(40, seed=100 + round_))
        index.remove(pick[:10])
        index.add([f"new{round_}-{j}" for j in range(10)], clustered(10, seed=200 + round_))
    assert index.stats()["slots"] == slots_before
    queries = clustered(30, seed=11)
    ids, _ = index.search(queries, 10)
    exact_ids, _ = index.search(queries, 10, exact=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
    assert recall >= 0.9


def test_heavy_deletion_still_answers_correctly() -> None:
    index, x = built(n=800, exact_max_items=50)
    index.remove([f"i{i}" for i in range(700)])  # 100 left, above half the limit: graph kept
    assert index.mode == "two-stage"
    ids, _ = index.search(x[750], 30)
    exact, _ = index.search(x[750], 30, exact=True)
    assert set(ids[0]) <= {f"i{i}" for i in range(700, 800)}
    assert ids[0][0] == "i750" and len(ids[0]) == 30
    assert len(set(ids[0]) & set(exact[0])) >= 27
    everything, _ = index.search(x[750], 10**6)
    assert sorted(everything[0]) == sorted(f"i{i}" for i in range(700, 800))


def test_refit_on_drift_and_on_demand() -> None:
    rng = np.random.default_rng(0)
    dim = 64
    basis_a = np.linalg.qr(rng.standard_normal((dim, dim)))[0]

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    a = unit(rng.standard_normal((300, 8)) @ basis_a[:, :8].T)  # an 8-d subspace
    index = CatalogIndex(dim, 1, exact_max_items=0, threads=1, projection_dim=12)
    index.add([f"a{i}" for i in range(300)], a)
    assert index.stats()["fit_count"] == 300
    index.add([f"a{i}" for i in range(300, 700)],
              unit(rng.standard_normal((400, 8)) @ basis_a[:, :8].T))
    assert index.stats()["fit_count"] == 300  # same distribution: no refit although it doubled
    b = unit(rng.standard_normal((800, 8)) @ basis_a[:, 40:48].T)  # a new subspace
    index.add([f"b{i}" for i in range(800)], b)
    stats = index.stats()
    assert stats["fit_count"] == 1500 and stats["drift_residual"] is None  # refitted on everything
    assert index.search(b[5], 1)[0][0] == ["b5"]
    index.refit()
    assert index.stats()["fit_count"] == 1500


def test_projection_is_the_identity_for_narrow_embeddings() -> None:
    narrow = fit_projection(clustered(100, dim=256))
    assert narrow.identity and narrow.out_dim == 256
    np.testing.assert_array_equal(narrow.apply(clustered(3, dim=256)), clustered(3, dim=256))
    wide = fit_projection(clustered(300, dim=1024))
    assert not wide.identity and 32 <= wide.out_dim <= 128


def test_projection_keeps_the_mean_direction_and_is_orthonormal() -> None:
    x = clustered(500, dim=96) + 0.5
    proj = fit_projection(x, 24)
    m = proj.matrix
    assert m.shape == (96, 24)
    np.testing.assert_allclose(m.T @ m, np.eye(24), atol=1e-5)
    mean = x.mean(0) / np.linalg.norm(x.mean(0))
    assert abs(float(m[:, 0] @ mean)) > 0.999
    assert 0.0 <= proj.fit_residual < 0.5


def test_float16_scoring_graphs_match_numpy() -> None:
    from fashsdk.index import tiny_onnx

    rng = np.random.default_rng(0)
    store = rng.standard_normal((300, 40)).astype(np.float16)
    idx = rng.integers(0, 300, (3, 7))
    q = rng.standard_normal((3, 40)).astype(np.float32)
    got = tiny_onnx.session("rerank").run(None, {"store": store, "idx": idx, "query": q[:, :, None]})[0][:, :, 0]
    want = np.einsum("qcd,qd->qc", store[idx].astype(np.float32), q)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = tiny_onnx.session("scan").run(None, {"block": store, "query": q})[0]
    np.testing.assert_allclose(got, q @ store.astype(np.float32).T, rtol=1e-5, atol=1e-5)
    onnx = pytest.importorskip("onnx")
    for make in (tiny_onnx.rerank_model, tiny_onnx.scan_model):
        onnx.checker.check_model(onnx.load_from_string(make()), full_check=True)


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"precision": "float64"}, {"M": 1}, {"ef_search": -1}, {"projection_dim": 1.5}):
        with pytest.raises(ValueError):
            CatalogIndex(8, 1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["two-stage", "exact"])
def test_query_finiteness_check_accepts_huge_finite_values_and_refuses_nan(mode: str) -> None:
    """Huge but finite queries (their squared norm overflows float32) are answered like the
    unscaled query, without warnings; NaN and infinity are refused, in single and batch queries."""
    index, x = built(exact_max_items=0 if mode == "two-stage" else 10_000, projection_dim=None)
    assert index.mode == mode
    query = x[3]
    ids, _ = index.search(query, 5)
    huge_ids, _ = index.search(query * np.float32(1e30), 5)  # |q|^2 = 1e60 overflows float32
    assert huge_ids == ids
    for bad in (np.nan, np.inf, -np.inf):
        broken = query.copy()
        broken[7] = bad
        with pytest.raises(QueryError, match="NaN or infinity"):
            index.search(broken, 5)
        with pytest.raises(QueryError, match="NaN or infinity"):
            index.search(np.stack([query, broken]), 5)


def test_locality_order_groups_combinations_within_blocks_only() -> None:
    from fashsdk.index.graph import locality_order

    rng = np.random.default_rng(4)
    codes = np.stack([rng.integers(0, 3, 50), rng.integers(-1, 2, 50)], 1)
    order = locality_order(codes, block=20)
    assert sorted(order.tolist()) == list(range(50))  # a permutation
    for start in (0, 20, 40):
        part = order[start:start + 20]
        assert part.min() >= start and part.max() < start + 20  # rows stay in their block
        keys = [tuple(codes[r]) for r in part]
        assert keys == sorted(keys)  # schema order: the first attribute is the primary key
        assert len({tuple(codes[r]) for r in part}) == len([i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]])


@pytest.mark.parametrize("projection_dim", [12, None], ids=["projected", "identity"])
def test_items_added_to_a_built_graph_keep_their_ids_when_inserted_grouped(projection_dim) -> None:
    index, x = built(n=300, ef_search=10_000, projection_dim=projection_dim)
    more = clustered(300, seed=9)
    codes = np.stack([np.random.default_rng(2).integers(0, 5, 300), np.arange(300) % 3], 1)  # not in row order
    index.add([f"i{i}" for i in range(300, 600)], more, codes)
    everything = np.concatenate([x, more])
    queries = clustered(20, seed=5)
    ids, _ = index.search(queries, 10)
    assert [[int(i[1:]) for i in row] for row in ids] == brute(queries, everything, 10).tolist()
    own, _ = index.search(more[:40], 1)  # each added item finds itself
    assert [row[0] for row in own] == [f"i{i}" for i in range(300, 340)]


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("projection_dim", [12, None], ids=["projected", "identity"])
def test_hits_give_each_results_label_codes(projection_dim, exact: bool) -> None:
    index, x = built(projection_dim=projection_dim)
    ids = [f"i{i}" for i in (3, 77, 400)]
    hits = index.hits(x[[3, 77, 400]], 7, exact=exact, exclude=ids)
    plain_ids, plain_scores = index.search(x[[3, 77, 400]], 7, exact=exact, exclude=ids)
    assert [h.ids for h in hits] == plain_ids and all(np.array_equal(h.scores, b) for h, b in zip(hits, plain_scores))
    for query_id, hit in zip(ids, hits):
        assert query_id not in hit.ids and len(hit.ids) == 7 and hit.labels.shape == (7, 2)
        assert hit.labels.tolist() == index.get_many(hit.ids)[1].tolist()
        assert hit.labels.tolist() == [[int(i[1:]) % 5, int(i[1:]) % 3] for i in hit.ids]  # as built() labelled them
    one = index.hits(x[5], 3)[0]  # the single-query fast path
    assert one.labels.tolist() == index.get_many(one.ids)[1].tolist()


def test_setting_ef_search_moves_the_graphs_beam_both_ways_and_is_checked() -> None:
    index, x = built(n=3000, dim=48, projection_dim=None)
    queries = clustered(200, 48, seed=7)
    exact = brute(queries, x, 10)

    def recall() -> float:
        found = index.search(queries, 10)[0]
        return float(np.mean([len({int(i[1:]) for i in row} & set(e.tolist())) / 10 for row, e in zip(found, exact)]))

    default_beam = index.graph.beam
    index.ef_search = 400
    assert index.graph.beam == 400
    wide = recall()
    index.ef_search = 0  # the floor: the results a query keeps (k=10 and one excluded item), as hnswlib's ef
    assert index.graph.beam == 11 < default_beam
    narrow = recall()
    assert narrow < wide and wide >= 0.99
    index.ef_search = None
    assert index.graph.beam == default_beam and index.ef_search is None
    for bad in (-1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="ef_search must be a non-negative integer"):
            index.ef_search = bad

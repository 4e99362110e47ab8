"""The papers' protocol on hand-made cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fashsdk.eval.methods import Gallery, attribute_based_topk, conditional_similarity, evaluate_methods, family_queries
from fashsdk.eval.protocol import QuerySet, exact_topk, hit_rates, manipulation_queries, ndcg, paired_lead, query_hits
from fashsdk.families.chunk_replace import ChunkReplace, value_means
from fashsdk.schema import AttributeSchema

SIZES = [3, 2]  # colour (3 values), kind (2 values)
CODES = np.array([[0, 0], [1, 0], [2, 1], [0, 1], [-1, 0]])


def test_queries_skip_targets_absent_from_the_gallery_and_unknown_items() -> None:
    qs = manipulation_queries(CODES, SIZES, max_queries=None)
    got = {(int(r), int(a), int(v)) for r, a, v in zip(qs.rows, qs.attrs[:, 0], qs.values[:, 0])}
    # item 0 (0,0): colour->1 gives (1,0) present; colour->2 gives (2,0) absent; kind->1 gives (0,1) present
    assert (0, 0, 1) in got and (0, 0, 2) not in got and (0, 1, 1) in got
    assert not any(r == 4 for r, _, _ in got)  # an item with an unknown label makes no queries
    assert len(got) == qs.candidates == 6  # 2 + 1 + 1 + 2 valid changes for items 0..3
    for t, (r, a, v) in zip(qs.targets, zip(qs.rows, qs.attrs[:, 0], qs.values[:, 0])):
        expected = CODES[r].copy()
        expected[a] = v
        assert t.tolist() == expected.tolist()


def test_two_attribute_queries_change_both() -> None:
    qs = manipulation_queries(CODES, SIZES, changes=2, max_queries=None)
    pairs = {(int(r), int(v0), int(v1)) for r, (v0, v1) in zip(qs.rows, qs.values)}
    # (item, new colour, new kind) whose target combination exists; (1,1) and (2,0) never do
    assert pairs == {(0, 2, 1), (1, 0, 1), (1, 2, 1), (2, 0, 0), (2, 1, 0), (3, 1, 0)}


@pytest.mark.parametrize("changes", [1, 2, 3])
def test_queries_are_exactly_the_definition_on_a_random_catalog(changes: int) -> None:
    """Every known item x every combination of other values of ``changes`` attributes whose target
    the gallery holds, in order (attribute set, item, values), against a plain loop."""
    from itertools import combinations, product

    sizes = [4, 3, 5, 2]
    rng = np.random.default_rng(changes)
    codes = np.stack([rng.integers(0, n, 300) for n in sizes], axis=1)
    codes[rng.random(codes.shape) < 0.05] = -1
    present = {tuple(c) for c in codes.tolist()}
    expected = []
    for attr_set in combinations(range(len(sizes)), changes):
        for r, row in enumerate(codes.tolist()):
            if -1 in row:
                continue
            for values in product(*[range(sizes[a]) for a in attr_set]):
                target = list(row)
                for a, v in zip(attr_set, values):
                    target[a] = v
                if all(row[a] != v for a, v in zip(attr_set, values)) and tuple(target) in present:
                    expected.append((r, attr_set, values, tuple(target)))
    qs = manipulation_queries(codes, sizes, changes=changes, max_queries=None)
    got = [(int(r), tuple(a.tolist()), tuple(v.tolist()), tuple(t.tolist()))
           for r, a, v, t in zip(qs.rows, qs.attrs, qs.values, qs.targets)]
    assert got == expected and qs.candidates == len(expected) > 0


def test_sampling_is_seeded_and_bounded() -> None:
    codes = np.array([[i % 3, i % 2] for i in range(60)])
    a = manipulation_queries(codes, SIZES, max_queries=10, seed=3)
    b = manipulation_queries(codes, SIZES, max_queries=10, seed=3)
    assert len(a) == 10 and a.candidates > 10 and a.rows.tolist() == b.rows.tolist()


def test_hit_rule_needs_the_exact_combination() -> None:
    targets = np.array([[1, 0]])
    results = np.array([[3, 2, 1, 0]])  # gallery rows: (0,1), (2,1), (1,0), (0,0)
    assert hit_rates(results, CODES, targets, ks=(1, 2, 3, 4)) == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}


def test_per_query_hits_average_to_the_hit_rate_and_pair_up() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, (200, 2))
    targets = rng.integers(0, 3, (500, 2))
    results_a, results_b = rng.integers(0, 200, (500, 30)), rng.integers(0, 200, (500, 30))
    hits_a, hits_b = query_hits(results_a, codes, targets, 10), query_hits(results_b, codes, targets, 10)
    assert hits_a.mean() == pytest.approx(hit_rates(results_a, codes, targets, (10,))[10])
    lead, se = paired_lead(hits_a, hits_b)
    assert lead == pytest.approx(hits_b.mean() - hits_a.mean())
    diff = hits_b.astype(float) - hits_a.astype(float)
    assert se == pytest.approx(diff.std() / math.sqrt(len(diff)))
    # the same queries answered alike but for 10 of 500: the lead is 2 points with a small error
    same = hits_a.copy()
    flipped = np.flatnonzero(~same)[:10]
    better = same.copy()
    better[flipped] = True
    lead, se = paired_lead(same, better)
    assert lead == pytest.approx(10 / 500) and 0 < se < 0.007
    assert paired_lead(same, same) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same queries"):
        paired_lead(hits_a, hits_b[:10])


def test_ndcg_values() -> None:
    targets = np.array([[1, 0]])
    results = np.array([[1, 3]])  # relevances 1.0, then 0.0
    assert ndcg(results, CODES, targets, ks=(1, 2))[2] == pytest.approx(1.0 / (1.0 + 1 / math.log2(3)))
    results = np.array([[0, 1]])  # relevances 0.5, then 1.0
    gains = (2 ** 0.5 - 1) + 1 / math.log2(3)
    assert ndcg(results, CODES, targets, ks=(2,))[2] == pytest.approx(gains / (1 + 1 / math.log2(3)))


def test_exact_topk_orders_by_similarity() -> None:
    gallery = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.9, 0.5, 0.0]], np.float32)
    assert exact_topk(query, gallery, 3).tolist() == [[1, 2, 0]]


def test_exact_topk_in_many_chunks_is_the_full_sort() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((2500, 16)).astype(np.float32)  # three chunks on the worker threads
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :20]
    assert np.array_equal(exact_topk(queries, gallery, 20), expected)
    assert exact_topk(queries[:3], gallery[:5], 20).shape == (3, 5)  # k above the gallery size


def test_baselines_on_a_toy_gallery() -> None:
    schema = AttributeSchema.from_dict({"colour": ["a", "b", "c"], "kind": ["x", "y"]})
    layout = [(0, 2), (2, 4)]
    vectors = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [1, 0, 1, 0]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery = Gallery([str(i) for i in range(5)], vectors, CODES, np.array([[0, 0], [1, 0], [2, 1], [0, 1], [0, 0]]))
    qs = manipulation_queries(CODES, SIZES, max_queries=None)
    table, _ = value_means(vectors, CODES, schema, layout)
    family = ChunkReplace(schema, layout, table)
    q = family_queries(family, gallery, qs)
    i = next(n for n, (r, a, v) in enumerate(zip(qs.rows, qs.attrs[:, 0], qs.values[:, 0])) if (r, a, v) == (0, 0, 1))
    assert np.allclose(q[i, :2] / np.linalg.norm(q[i, :2]), [0, 1])  # colour chunk swapped to value b's mean
    top = attribute_based_topk(gallery, qs, 2)
    assert top[i, 0] == 1  # predicted (b, x) matches the wanted (b, x) exactly
    cond = conditional_similarity(gallery, schema, layout, k=1, triplets=50, seed=0)
    assert set(cond) <= {"colour", "kind"}
    report = evaluate_methods({"mean_swap": gallery}, {"mean_swap": family}, schema, qs, ks=(1, 2))
    assert list(report["top_k"]) == ["mean_swap", "attribute_based", "no_manipulation"]
    assert report["top_k"]["attribute_based"][1] == pytest.approx(hit_rates(top[:, :1], CODES, qs.targets, (1,))[1])


def test_quality_rows_are_named_by_model_and_never_collide() -> None:
    """Bundles of one model kind in folders of one name get distinct rows (a collision would let
    one bundle's figures overwrite another's)."""
    from pathlib import Path
    from types import SimpleNamespace

    from benchmarks.quality import row_names

    def fake(path: str, family: str, architecture: str | None, block: str = "ase",
             localize: bool = True) -> SimpleNamespace:
        config = {"block": block, "fsn_localize": localize}
        model = {} if architecture is None else {"architecture": architecture, "config": config}
        return SimpleNamespace(bundle=SimpleNamespace(manifest={"model": model}, directory=Path(path)),
                               family=SimpleNamespace(name=family))

    rows = row_names([fake("runs/demo/bundle", "adde", None), fake("runs/demo/bundle-cr", "chunk_replace", "adde"),
                      fake("runs/datrnet/bundle", "chunk_replace", "datrnet"),
                      fake("runs/datrnet-split5/bundle", "chunk_replace", "datrnet"),
                      fake("runs/datrnet-msf/bundle", "chunk_replace", "datrnet", "msf"),
                      fake("a/x/bundle", "adde", "adde"), fake("b/x/bundle", "adde", "adde"),
                      fake("runs/fsn/bundle", "fsn", "fsn"), fake("runs/fsn/bundle-cr", "chunk_replace", "fsn"),
                      fake("runs/fsn-global/bundle", "fsn", "fsn", localize=False),
                      fake("runs/demo/bundle-w", "fsn", "adde")])
    assert rows[:5] == ["adde (demo/bundle)", "chunk_replace", "datrnet (datrnet/bundle)",
                        "datrnet (datrnet-split5/bundle)", "datrnet-msf"]
    assert rows[5:7] == ["adde (x/bundle) #6", "adde (x/bundle) #7"]
    assert rows[7:] == ["fsn", "fsn-no-weights", "fsn-no-localize", "chunk_replace_weighted"]
    assert len(set(rows)) == len(rows)


def test_chunk_leakage_finds_which_chunk_carries_which_attribute() -> None:
    """Chunk 0 holds attribute 0's value (and nothing of attribute 1); chunk 1 is noise."""
    from types import SimpleNamespace

    from benchmarks.chunk_leakage import leakage
    from fashsdk.schema import AttributeSchema

    rng = np.random.default_rng(0)
    schema = AttributeSchema.from_dict({"colour": ["a", "b", "c"], "kind": ["x", "y"]})
    codes = np.stack([rng.integers(0, 3, 600), rng.integers(0, 2, 600)], axis=1)
    centres = np.eye(3, 4) * 5
    vectors = np.concatenate([centres[codes[:, 0]] + rng.normal(size=(600, 4)), rng.normal(size=(600, 4))], axis=1)
    fake = SimpleNamespace(index=SimpleNamespace(vectors_and_codes=lambda: ([], vectors.astype(np.float32), codes)),
                           schema=schema, bundle=SimpleNamespace(layout={"colour": (0, 4), "kind": (4, 8)}))
    table = leakage(fake, queries=300)
    assert table["colour"]["colour"] > 0.95
    assert table["kind"]["colour"] < 0.5 and table["colour"]["kind"] < 0.65  # chance: 1/3 and 1/2


class Unchanged:
    """A family whose query is the item's own vector: cosine alone knows nothing of the change."""

    name = "unchanged"

    def change_batch(self, v, current, attrs, values):
        return np.asarray(v, np.float32)


def signal_gallery() -> tuple[AttributeSchema, Gallery, QuerySet, np.ndarray]:
    """60 items whose first 5 dims say their two labels (one-hot, small beside 6 noise dims), every
    single-attribute query over them, and a probe that reads the labels off those dims exactly."""
    rng = np.random.default_rng(0)
    schema = AttributeSchema.from_dict({"colour": ["a", "b", "c"], "kind": ["x", "y"]})
    codes = np.stack([rng.integers(0, 3, 60), rng.integers(0, 2, 60)], axis=1)
    signal = np.concatenate([np.eye(3)[codes[:, 0]], np.eye(2)[codes[:, 1]]], axis=1) * 0.2
    vectors = np.concatenate([signal, rng.normal(size=(60, 6))], axis=1).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    probe = np.zeros((11, 5), np.float32)
    probe[:5, :5] = np.eye(5) * 200
    return schema, Gallery([str(i) for i in range(60)], vectors, codes, codes), \
        manipulation_queries(codes, [3, 2], max_queries=None), probe


def test_a_row_with_a_label_rerank_is_ranked_twice_through_the_same_candidates() -> None:
    """NAME+rerank is the family's candidates reordered by the rerank, exact and through the index;
    NAME stays the plain ranking."""
    from fashsdk.tasks.label_rerank import LabelRerank

    schema, gallery, qs, probe = signal_gallery()
    rerank = LabelRerank(probe, np.zeros(5, np.float32), (3, 2), 1.0, 1.0, 60)
    index_calls = []

    def through_index(q: np.ndarray, k: int) -> np.ndarray:
        index_calls.append(k)
        return exact_topk(q, gallery.vectors, k)

    report = evaluate_methods({"unchanged": gallery}, {"unchanged": Unchanged()}, schema, qs, ks=(1, 5),
                              approximate={"unchanged": through_index}, rerankers={"unchanged": rerank})
    assert list(report["top_k"])[:2] == ["unchanged+rerank", "unchanged"]
    assert report["top_k"]["unchanged+rerank"][1] == 1.0  # every target combination exists; the labels find it
    assert report["top_k"]["unchanged"][1] < 0.5
    assert report["top_k_hnsw"]["unchanged+rerank"] == report["top_k"]["unchanged+rerank"]
    assert max(index_calls) == 60  # the index is asked for the rerank's candidates, not only the top k


def test_value_candidates_are_the_nearest_items_carrying_every_wanted_value() -> None:
    from fashsdk.eval.methods import rerank_pool, value_candidates

    rng = np.random.default_rng(1)
    current = np.stack([rng.integers(0, 3, 80), rng.integers(0, 2, 80)], axis=1)
    current[:4, 0] = 2  # value 2 of attribute 0 with value 1 of attribute 1: a rare pair
    current[:4, 1] = 1
    current[4:, 0] = np.where((current[4:, 0] == 2) & (current[4:, 1] == 1), 0, current[4:, 0])
    vectors = rng.normal(size=(80, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    single = manipulation_queries(current, [3, 2], max_queries=None)
    pair = manipulation_queries(current, [3, 2], changes=2, max_queries=None)
    for queries in (single, pair):
        moved = vectors[queries.rows]
        got = value_candidates(vectors, current, moved, queries, 6)
        for q in range(len(queries)):
            carries = np.ones(80, bool)
            for a, v in zip(queries.attrs[q], queries.values[q]):
                carries &= current[:, a] == v
            rows = np.flatnonzero(carries)
            want = rows[np.argsort(-(vectors[rows] @ moved[q]), kind="stable")][:6]
            assert got[q, :len(want)].tolist() == want.tolist() and (got[q, len(want):] == -1).all()
    assert (value_candidates(vectors, current, vectors[pair.rows], pair, 6) == -1).any()  # the rare pair pads
    # the pool: nearest rows first, then the value candidates they lack; repeats and pads sort last
    moved = vectors[pair.rows]
    nearest = exact_topk(moved, vectors, 4)
    extra = value_candidates(vectors, current, moved, pair, 6)
    rows, cosine = rerank_pool(vectors, moved, nearest, extra, chunk=7)
    assert rows.shape == cosine.shape == (len(pair), 10) and np.array_equal(rows[:, :4], nearest)
    for q in range(len(pair)):
        fresh = [(n, r) for n, r in enumerate(extra[q]) if r >= 0 and r not in nearest[q]]
        real = np.isfinite(cosine[q])
        assert real.sum() == 4 + len(fresh)
        assert sorted(rows[q, real].tolist()) == sorted(nearest[q].tolist() + [r for _, r in fresh])
        assert np.allclose(cosine[q, real], vectors[rows[q, real]] @ moved[q], atol=1e-5)
        assert (rows[q, ~real] == nearest[q, 0]).all()  # a valid row that can only sort last


def test_value_candidates_find_targets_the_nearest_candidates_miss() -> None:
    """A family that does not move the query: its one nearest candidate is the query itself (the
    evaluation keeps it), never a target; value candidates bring the wanted value, ranked first."""
    from fashsdk.tasks.label_rerank import LabelRerank

    schema, gallery, qs, probe = signal_gallery()
    tops = {}
    for extra in (0, 10):
        rerank = LabelRerank(probe, np.zeros(5, np.float32), (3, 2), 1.0, 1.0, 1, extra)
        report = evaluate_methods({"unchanged": gallery}, {"unchanged": Unchanged()}, schema, qs, ks=(1,),
                                  rerankers={"unchanged": rerank})
        tops[extra] = report["top_k"]["unchanged+rerank"][1]
    assert tops[0] == 0.0 and tops[10] == 1.0  # every target exists; the value candidates reach it
    # the value search reads the model's predictions, never the labels that define the hits
    blind = Gallery(gallery.ids, gallery.vectors, gallery.codes, np.zeros_like(gallery.codes))
    report = evaluate_methods({"unchanged": blind}, {"unchanged": Unchanged()}, schema, qs, ks=(1,),
                              rerankers={"unchanged": rerank})
    assert report["top_k"]["unchanged+rerank"][1] < 0.5

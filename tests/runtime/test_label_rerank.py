"""The label rerank: its arithmetic on hand-made cases, and a real bundle that carries one (fitted on
a real index's vectors) reordering Retriever searches, one query or a batch, refused when tampered."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.label_probe import FILES, RerankChoice, attach_rerank, fit_probe
from fashsdk import Bundle, Retriever
from fashsdk.errors import BundleError
from fashsdk.index import Hits
from fashsdk.tasks.label_rerank import LOG_FLOOR, MANIFEST_KEY, LabelRerank, with_extra


def reference_log_probs(logits: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    out, start = [], 0
    for size in sizes:
        block = logits[:, start:start + size].astype(np.float64)
        out.append(block - np.log(np.exp(block).sum(axis=1, keepdims=True)))
        start += size
    return np.concatenate(out, axis=1)


def test_log_probs_are_a_log_softmax_per_attribute() -> None:
    rng = np.random.default_rng(0)
    sizes = (3, 2, 4)
    weights, bias = rng.normal(size=(5, 9)).astype(np.float32) * 4, rng.normal(size=9).astype(np.float32)
    rerank = LabelRerank(weights, bias, sizes, 0.1, 0.1, 10)
    vectors = rng.normal(size=(7, 5)).astype(np.float32)
    got = rerank.log_probs(vectors)
    assert np.allclose(got, reference_log_probs(vectors @ weights + bias, sizes), atol=1e-4)
    for start, size in zip((0, 3, 5), sizes):
        assert np.allclose(np.exp(got[:, start:start + size]).sum(axis=1), 1.0, atol=1e-5)


def onehot_rerank(kept: float, changed: float) -> tuple[LabelRerank, np.ndarray]:
    """Two attributes of 2 values; vector dims 0-1 say attribute 0's value, dims 2-3 attribute 1's."""
    weights = np.eye(4, dtype=np.float32) * 20
    rerank = LabelRerank(weights, np.zeros(4, np.float32), (2, 2), kept, changed, 10)
    items = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]], np.float32)  # values 00 10 11 01
    return rerank, items


def test_candidates_with_the_wanted_values_move_ahead_of_closer_ones() -> None:
    rerank, items = onehot_rerank(kept=0.1, changed=0.1)
    log_probs = rerank.log_probs(items)
    cosine = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)  # item 0 is closest but carries neither wanted value
    order, scores = rerank.order(cosine, log_probs, np.arange(4)[None], np.array([[1, 1]]), np.array([[True, False]]))
    assert order[0, 0] == 2  # values (1, 1): both wanted
    assert (np.diff(scores[0]) <= 0).all()
    assert scores[0, 0] == pytest.approx(0.7, abs=1e-3)  # a confident right answer costs almost nothing
    # an unknown wanted value adds no term: with attribute 1 unknown, only attribute 0 decides
    order, _ = rerank.order(cosine, log_probs, np.arange(4)[None], np.array([[1, -1]]), np.array([[True, False]]))
    assert set(order[0, :2].tolist()) == {1, 2}
    # a wrong value costs at most the floor, times the weight
    bonus = rerank.bonus(log_probs, np.arange(4)[None], np.array([[1, 1]]), np.array([[True, False]]))
    assert bonus.min() >= 2 * 0.1 * LOG_FLOOR - 1e-6


def test_kept_and_changed_weights_apply_to_their_own_attributes() -> None:
    rerank, items = onehot_rerank(kept=0.0, changed=0.5)  # only the changed attribute counts
    log_probs = rerank.log_probs(items)
    cosine = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    order, _ = rerank.order(cosine, log_probs, np.arange(4)[None], np.array([[1, 0]]), np.array([[True, False]]))
    assert set(order[0, :2].tolist()) == {1, 2}  # attribute 0 = 1, whatever attribute 1 holds
    order, _ = rerank.order(cosine, log_probs, np.arange(4)[None], np.array([[1, 0]]), np.array([[False, True]]))
    assert set(order[0, :2].tolist()) == {0, 1}  # now attribute 1 = 0 is the changed one


@pytest.mark.parametrize("bad", [dict(kept=-0.1), dict(changed=float("nan")), dict(candidates=0), dict(value_candidates=-1),
                                 dict(bias=np.zeros(3, np.float32)), dict(weights=np.full((4, 4), np.inf, np.float32))])
def test_a_malformed_rerank_is_refused(bad: dict) -> None:
    args = dict(weights=np.eye(4, dtype=np.float32), bias=np.zeros(4, np.float32), sizes=(2, 2), kept=0.1,
                changed=0.1, candidates=5)
    with pytest.raises(ValueError):
        LabelRerank(**{**args, **bad})


@pytest.fixture()
def reranked_bundle(bundle_copy: Path, real_retriever: Retriever) -> tuple[Path, LabelRerank]:
    """The real bundle with a probe fitted on the indexed photos' own vectors and labels, weighted
    strongly, so the rerank's effect is plain to see."""
    _, vectors, codes = real_retriever.index.vectors_and_codes()
    weights, bias = fit_probe(vectors, codes, real_retriever.schema.sizes, steps=200)
    rerank = LabelRerank(weights, bias, tuple(real_retriever.schema.sizes), 0.5, 0.5, 60)
    choice = RerankChoice(rerank, np.zeros(1, bool), {(0.5, 0.5): np.ones(1, bool)}, {})
    attach_rerank(bundle_copy, choice)
    return bundle_copy, rerank


def reference_order(retriever: Retriever, rerank: LabelRerank, query: str, change: dict[str, str],
                    k: int, pool: list[str] | None = None) -> list[str]:
    """The rerank by hand: the ``pool`` (default: the plain exact candidates), cosine + weighted floored
    log-probabilities."""
    schema = retriever.schema
    if pool is None:
        pool = [r.id for r in retriever.search(query, change=change, k=rerank.candidates, exact=True)]
    moved, _ = retriever.query_vector(query, change)
    vectors = retriever.index.get_many(pool)[0]
    log_probs = reference_log_probs(vectors @ rerank.weights + rerank.bias, rerank.sizes)
    _, labels, predicted = retriever.index.get(query)
    wanted = {**schema.decode(np.where(labels >= 0, labels, predicted)), **change}  # label, else prediction
    score = vectors @ moved
    for a, (offset, name) in enumerate(zip(rerank.offsets, schema.names)):
        if wanted[name] is not None:
            weight = rerank.changed if name in change else rerank.kept
            score = score + weight * np.maximum(log_probs[:, offset + schema.value_index(a, wanted[name])], LOG_FLOOR)
    return [pool[n] for n in np.argsort(-score, kind="stable")[:k]]


def test_a_bundle_with_a_rerank_reorders_changed_searches_toward_the_wanted_values(
        reranked_bundle: tuple[Path, LabelRerank], real_index_dir: Path, real_retriever: Retriever) -> None:
    directory, rerank = reranked_bundle
    retriever = Retriever(directory, real_index_dir, threads=1)
    assert retriever.rerank is not None and retriever.describe()["label_rerank"] is True
    assert np.array_equal(retriever.rerank.weights, rerank.weights) and retriever.rerank.candidates == 60
    assert real_retriever.rerank is None
    colour = retriever.schema.names.index("baseColour")
    ids = retriever.index.ids[:20]
    moved = 0
    for query in ids:
        code = int(retriever.index.get(query)[1][colour])
        value = retriever.schema.attributes[colour].values[(max(code, 0) + 1) % retriever.schema.sizes[colour]]
        change = {"baseColour": value}
        with_rerank = retriever.search(query, change=change, k=5, exact=True)
        plain = real_retriever.search(query, change=change, k=5, exact=True)
        assert [r.id for r in with_rerank] == reference_order(real_retriever, rerank, query, change, 5)
        assert query not in [r.id for r in with_rerank]
        assert all(a.score >= b.score for a, b in zip(with_rerank, with_rerank[1:]))
        moved += [r.id for r in with_rerank] != [r.id for r in plain]
        # a batch with changed and unchanged queries answers each as search() does
        batch = retriever.search_batch([query, ids[0]], changes=[change, None], k=5, exact=True)
        assert [r.id for r in batch[0]] == [r.id for r in with_rerank]
        assert np.allclose([r.score for r in batch[0]], [r.score for r in with_rerank], atol=1e-5)
        assert [r.id for r in batch[1]] == [r.id for r in real_retriever.search(ids[0], k=5, exact=True)]
    assert moved >= 10  # weighted this strongly, the rerank changes most result lists
    # the graph path (no exact=True) reorders the same way on this small catalog
    query, change = ids[3], {"gender": retriever.schema.attributes[retriever.schema.names.index("gender")].values[0]}
    assert ([r.id for r in retriever.search(query, change=change, k=5)]
            == reference_order(real_retriever, rerank, query, change, 5))
    # no change: the rerank is not involved, results are the plain neighbours
    assert ([r.id for r in retriever.search(ids[1], k=5)] == [r.id for r in real_retriever.search(ids[1], k=5)])


def test_a_tampered_probe_is_refused_before_use(reranked_bundle: tuple[Path, LabelRerank]) -> None:
    directory, _ = reranked_bundle
    path = directory / FILES["weights"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="label_probe_weights"):
        Bundle.load(directory)


def test_a_probe_for_another_embedding_is_refused(reranked_bundle: tuple[Path, LabelRerank], tmp_path: Path) -> None:
    directory, rerank = reranked_bundle
    wrong = LabelRerank(np.zeros((3, rerank.weights.shape[1]), np.float32), rerank.bias, rerank.sizes, 0.1, 0.1, 5)
    attach_rerank(directory, RerankChoice(wrong, np.zeros(1, bool), {(0.1, 0.1): np.ones(1, bool)}, {}))
    with pytest.raises(BundleError, match="label-rerank"):
        Retriever(directory)


def test_attaching_no_rerank_removes_an_earlier_one_and_signed_bundles_are_left_alone(
        reranked_bundle: tuple[Path, LabelRerank], tmp_path: Path) -> None:
    directory, _ = reranked_bundle
    signed = Path(shutil.copytree(directory, tmp_path / "signed"))
    (signed / "manifest.json.sig").write_text("{}")
    before = (signed / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="signed"):
        attach_rerank(signed, RerankChoice(None, np.zeros(1, bool), {}, {}))
    assert (signed / "manifest.json").read_bytes() == before
    attach_rerank(directory, RerankChoice(None, np.zeros(1, bool), {}, {}))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert MANIFEST_KEY not in manifest and not set(FILES.values()) & set(manifest["files"])
    assert Retriever(directory).rerank is None


@pytest.mark.parametrize("scale", [1.0, 40.0])  # within and beyond the unshifted exp's bound
def test_one_querys_bonus_equals_the_batch_form(scale: float) -> None:
    rng = np.random.default_rng(3)
    sizes = (4, 3, 5)
    weights = (rng.normal(size=(6, 12)) * scale).astype(np.float32)
    rerank = LabelRerank(weights, rng.normal(size=12).astype(np.float32), sizes, 0.2, 0.05, 20)
    vectors = rng.normal(size=(20, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    wanted, changed = np.array([2, -1, 4]), np.array([False, False, True])
    batch = rerank.bonus(rerank.log_probs(vectors), np.arange(20)[None], wanted[None], changed[None])[0]
    assert np.allclose(rerank.single_bonus(vectors, wanted, changed), batch, atol=1e-4)
    assert np.isfinite(batch).all()


def test_a_candidate_removed_between_the_two_reads_is_dropped_not_an_error(
        reranked_bundle: tuple[Path, LabelRerank], real_index_dir: Path) -> None:
    from fashsdk.errors import QueryError

    directory, rerank = reranked_bundle
    retriever = Retriever(directory, real_index_dir, threads=1)
    index = retriever.index
    found = index.hits(index.get(index.ids[0])[0][None], 10)[0]
    gone = found.ids[3]
    index.remove([gone])
    with pytest.raises(QueryError, match=repr(gone)):
        index.get_many([found.ids[0], gone])  # the read the rerank makes names the missing id
    out = rerank.rerank_hits(index, found, [0] * len(rerank.sizes), np.zeros(len(rerank.sizes), bool), 5)
    assert gone not in out.ids and len(out.ids) == 5
    assert out.labels.shape == (5, len(rerank.sizes)) and all(i in index for i in out.ids)


def test_the_value_filter_asks_for_every_wanted_value_within_the_querys_own_filter() -> None:
    rerank, _ = onehot_rerank(kept=0.1, changed=0.1)
    assert rerank.value_filter({0: 1}) is None  # no value candidates asked for
    rerank = LabelRerank(rerank.weights, rerank.bias, (2, 2), 0.1, 0.1, 10, value_candidates=5)
    assert rerank.value_filter({}) is None
    assert rerank.value_filter({0: 1}) == {0: frozenset([1])}
    assert rerank.value_filter({0: 1, 1: 0}) == {0: frozenset([1]), 1: frozenset([0])}
    assert rerank.value_filter({0: 1}, {1: frozenset([0, 1])}) == {0: frozenset([1]), 1: frozenset([0, 1])}
    assert rerank.value_filter({0: 1}, {0: frozenset([0, 1])}) == {0: frozenset([1])}
    assert rerank.value_filter({0: 1}, {0: frozenset([0])}) is None  # the filter excludes the wanted value


def test_extra_candidates_join_the_pool_once_in_order() -> None:
    def hits(ids: list[str], base: float) -> Hits:
        n = len(ids)
        return Hits(ids, np.arange(n, dtype=np.float32) + base, np.full((n, 2), base, np.int16),
                    np.full((n, 2), base + 1, np.int16), np.full((n, 2), base / 10, np.float16))

    pool = with_extra(hits(["a", "b"], 0), hits(["b", "c", "d"], 5))
    assert pool.ids == ["a", "b", "c", "d"]
    assert pool.scores.tolist() == [0, 1, 6, 7]  # b keeps its first score; c, d bring theirs
    assert pool.labels[:, 0].tolist() == [0, 0, 5, 5] and pool.predicted[:, 1].tolist() == [1, 1, 6, 6]
    assert len(pool.confidence) == 4
    same = hits(["a"], 0)
    assert with_extra(same, hits(["a"], 5)) is same


def reference_pool(retriever: Retriever, rerank: LabelRerank, query: str, change: dict[str, str]) -> list[str]:
    """By hand: the ``candidates`` nearest items to the changed query, then the ``value_candidates``
    nearest among those whose label (else prediction) is every wanted value, the query left out."""
    ids = [i for i in retriever.index.ids if i != query]
    vectors, labels, predicted = retriever.index.get_many(ids)
    current = np.where(labels >= 0, labels, predicted)
    moved, _ = retriever.query_vector(query, change)
    score = vectors @ moved
    nearest = [ids[n] for n in np.argsort(-score, kind="stable")[:rerank.candidates]]
    schema = retriever.schema
    carries = np.ones(len(ids), bool)
    for name, value in change.items():
        a = schema.names.index(name)
        carries &= current[:, a] == schema.value_index(a, value)
    by_value = [ids[n] for n in np.flatnonzero(carries)[np.argsort(-score[carries], kind="stable")]]
    return nearest + [i for i in by_value[:rerank.value_candidates] if i not in nearest]


def test_value_candidates_bring_items_with_the_wanted_values_into_the_pool(
        bundle_copy: Path, real_index_dir: Path, real_retriever: Retriever) -> None:
    _, vectors, codes = real_retriever.index.vectors_and_codes()
    weights, bias = fit_probe(vectors, codes, real_retriever.schema.sizes, steps=200)
    rerank = LabelRerank(weights, bias, tuple(real_retriever.schema.sizes), 0.5, 0.5, 3, value_candidates=8)
    attach_rerank(bundle_copy, RerankChoice(rerank, np.zeros(1, bool), {(0.5, 0.5): np.ones(1, bool)}, {}))
    retriever = Retriever(bundle_copy, real_index_dir, threads=1)
    assert retriever.rerank.value_candidates == 8
    schema = retriever.schema
    colour = schema.names.index("baseColour")
    grew = 0
    for query in retriever.index.ids[:12]:
        code = int(retriever.index.get(query)[1][colour])
        change = {"baseColour": schema.attributes[colour].values[(max(code, 0) + 1) % schema.sizes[colour]]}
        pool = reference_pool(retriever, rerank, query, change)
        found = [r.id for r in retriever.search(query, change=change, k=3, exact=True)]
        assert found == reference_order(retriever, rerank, query, change, 3, pool)
        grew += bool(set(found) - set(pool[:rerank.candidates]))  # a value candidate made the top 3
        batch = retriever.search_batch([query], changes=[change], k=3, exact=True)[0]
        assert [r.id for r in batch] == found
        # a filter that excludes the wanted value leaves only the nearest candidates it allows
        other = schema.attributes[colour].values[max(code, 0)]
        assert all(r.attributes["baseColour"] == other
                   for r in retriever.search(query, change=change, k=5, exact=True, where={"baseColour": other}))
    assert grew >= 4  # the wanted colour was often not among the 3 nearest: the value search supplied it


def test_the_value_search_is_skipped_when_the_nearest_already_hold_enough_carriers(
        reranked_bundle: tuple[Path, LabelRerank], real_index_dir: Path, real_retriever: Retriever) -> None:
    directory, rerank = reranked_bundle  # 60 nearest of the ~100 indexed photos
    labels = np.array([[0, 1], [-1, 1], [1, 1]], np.int16)
    nearest = Hits(["a", "b", "c"], np.zeros(3, np.float32), labels, np.array([[9, 9], [0, 9], [0, 0]], np.int16),
                   np.ones((3, 2), np.float16))
    two = LabelRerank(rerank.weights, rerank.bias, rerank.sizes, 0.1, 0.1, 3, value_candidates=2)
    assert not two.lacks_values(nearest, {0: 0})  # a by label, b by prediction (its label unknown); c's label is 1
    assert two.lacks_values(nearest, {0: 0, 1: 0})  # only b carries both
    retriever = Retriever(directory, real_index_dir, threads=1)
    retriever.rerank = LabelRerank(rerank.weights, rerank.bias, rerank.sizes, 0.5, 0.5, 60, value_candidates=2)
    index, calls = retriever.index, []
    plain_hits = index.hits

    def counted(queries, k, **kw):
        calls.append(kw.get("where"))
        return plain_hits(queries, k, **kw)

    index.hits = counted  # type: ignore[method-assign]
    gender = retriever.schema.names.index("gender")
    for query in index.ids[:8]:
        code = int(index.get(query)[1][gender])
        change = {"gender": retriever.schema.attributes[gender].values[(max(code, 0) + 1) % 2]}
        pool = reference_pool(retriever, retriever.rerank, query, change)
        assert len(pool) == 60  # the 2 nearest carriers are among the 60 nearest ...
        calls.clear()
        found = [r.id for r in retriever.search(query, change=change, k=5, exact=True)]
        assert calls == [None]  # ... so no where search was made
        assert found == reference_order(retriever, retriever.rerank, query, change, 5, pool)

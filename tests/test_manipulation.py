"""Manipulation arithmetic: the residual lands in the right block, several changes add."""
from __future__ import annotations

import numpy as np
import pytest

from fashsdk.errors import QueryError
from fashsdk.evaluation import QuerySet, adde_queries, indicator_matrix
from fashsdk.manipulation import indicator, manipulate, manipulate_one, mean_swap, parse_change, predicted_codes
from fashsdk.schema import UNKNOWN, AttributeSchema

SCHEMA = AttributeSchema.from_dict({"colour": ["Black", "Blue", "Red"], "kind": ["Shirt", "Shoe"], "sex": ["M", "W"]})
D = 4  # per attribute


def block_memory(rng: np.random.Generator) -> np.ndarray:
    """A memory block whose prototypes live only in their attribute's slice."""
    memory = np.zeros((D * 3, SCHEMA.total_values), np.float32)
    for a, (offset, size) in enumerate(zip(SCHEMA.offsets, SCHEMA.sizes)):
        memory[a * D:(a + 1) * D, offset:offset + size] = rng.normal(size=(D, size))
    return memory


def test_indicator_puts_plus_and_minus_one_in_the_changed_attribute() -> None:
    ind = indicator(SCHEMA, np.array([0, 1, UNKNOWN]), parse_change(SCHEMA, {"colour": "Red", "sex": "W"}))
    assert ind.tolist() == [-1, 0, 1, 0, 0, 0, 1]  # colour Black->Red; sex unknown -> only +1


def test_residual_lands_only_in_the_changed_block_and_changes_add() -> None:
    rng = np.random.default_rng(0)
    memory = block_memory(rng)
    query = rng.normal(size=D * 3).astype(np.float32)
    current = np.array([0, 1, 0])
    one = indicator(SCHEMA, current, parse_change(SCHEMA, {"colour": "Red"}))
    residual = one @ memory.T
    assert np.abs(residual[D:]).max() == 0 and np.abs(residual[:D]).max() > 0
    assert np.allclose(residual[:D], memory[:D, 2] - memory[:D, 0])
    two = indicator(SCHEMA, current, parse_change(SCHEMA, {"colour": "Red", "kind": "Shirt"}))
    other = indicator(SCHEMA, current, parse_change(SCHEMA, {"kind": "Shirt"}))
    assert np.allclose(two @ memory.T, (one + other) @ memory.T)
    out = manipulate(query, memory, two)
    expected = query + (one + other) @ memory.T
    assert np.allclose(out, expected / np.linalg.norm(expected), atol=1e-6)
    assert abs(np.linalg.norm(out) - 1) < 1e-6


@pytest.mark.parametrize("current", [[0, 1, 0], [2, UNKNOWN, 1], [1, 0, UNKNOWN]])
@pytest.mark.parametrize("change", [{"colour": "Red"}, {"colour": "Red", "kind": "Shirt", "sex": "W"},
                                    {"kind": "Shoe"}])
def test_one_query_fast_path_matches_the_indicator_arithmetic(current: list[int], change: dict[str, str]) -> None:
    rng = np.random.default_rng(2)
    memory = block_memory(rng)
    query = rng.normal(size=D * 3).astype(np.float32)
    parsed = parse_change(SCHEMA, change)
    expected = manipulate(query, memory, indicator(SCHEMA, np.array(current), parsed))
    before = query.copy()
    out = manipulate_one(query, np.ascontiguousarray(memory.T), SCHEMA.offsets, current, parsed)
    assert out.dtype == np.float32 and out.shape == query.shape and np.allclose(out, expected, atol=1e-6)
    assert np.array_equal(query, before)  # a fresh vector: the caller's embedding is left alone
    moved = any(current[a] != v for a, v in parsed.items())
    assert np.allclose(out, query / np.linalg.norm(query), atol=1e-6) != moved  # a no-op change is a no-op


def test_batch_queries_match_single_queries() -> None:
    rng = np.random.default_rng(1)
    memory = block_memory(rng)
    vectors = rng.normal(size=(5, D * 3)).astype(np.float32)
    codes = np.array([[0, 1, 0], [2, 0, 1], [1, 1, UNKNOWN], [0, 0, 0], [1, 0, 1]])
    qs = QuerySet(rows=np.array([0, 2, 4]), attrs=np.array([[0], [2], [1]]), values=np.array([[2], [1], [1]]),
                  targets=np.zeros((3, 3), int), candidates=3)
    batch = adde_queries(vectors, memory, SCHEMA.offsets, codes, qs)
    for i, (row, a, v) in enumerate(zip(qs.rows, qs.attrs[:, 0], qs.values[:, 0])):
        single = manipulate(vectors[row], memory, indicator(SCHEMA, codes[row], {int(a): int(v)}))
        assert np.allclose(batch[i], single, atol=1e-6)
    assert indicator_matrix(SCHEMA.offsets, SCHEMA.total_values, codes, qs)[1].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_mean_swap_replaces_only_the_changed_chunk() -> None:
    rng = np.random.default_rng(2)
    means = rng.normal(size=(D * 3, SCHEMA.total_values)).astype(np.float32)
    query = rng.normal(size=D * 3).astype(np.float32)
    layout = [(0, D), (D, 2 * D), (2 * D, 3 * D)]
    out = mean_swap(query, means, layout, {1: 1}, SCHEMA.offsets)
    scale = np.linalg.norm(np.concatenate([query[:D], means[D:2 * D, 4], query[2 * D:]]))
    assert np.allclose(out[D:2 * D] * scale, means[D:2 * D, 4], atol=1e-5)
    assert np.allclose(out[:D] * scale, query[:D], atol=1e-5)


def test_predicted_codes_take_the_argmax_per_attribute() -> None:
    logits = np.array([[0.0, 5.0, 1.0, 3.0, -1.0, 0.0, 0.0]])
    codes, probs = predicted_codes(SCHEMA, logits)
    assert codes.tolist() == [[1, 0, 0]]
    assert probs[0, 0] == pytest.approx(np.exp(5) / (1 + np.exp(5) + np.e)) and probs[0, 2] == pytest.approx(0.5)


@pytest.mark.parametrize("change, message", [
    ({"color": "Red"}, "did you mean 'colour'"),
    ({"colour": "red"}, "did you mean 'Red'"),
    ({"colour": 3}, "strings"),
    (["colour", "Red"], "mapping"),
])
def test_bad_changes_are_named(change: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_change(SCHEMA, change)  # type: ignore[arg-type]

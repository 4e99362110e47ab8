"""Family arithmetic on hand-made cases: ADDE's residual lands in the right block and several
changes add; chunk_replace overwrites exactly the changed chunks; each family's one-query and
batched forms agree, and the batched ADDE form serves torch tensors (training) too."""
from __future__ import annotations

import numpy as np
import pytest

from fashsdk.errors import QueryError
from fashsdk.families import NO_CHANGE
from fashsdk.families.adde import Adde, indicator
from fashsdk.families.blend import Blend
from fashsdk.families.chunk_replace import ChunkReplace, reference_rows, value_means
from fashsdk.families.fsn import FashionSearchNetFamily
from fashsdk.schema import UNKNOWN, AttributeSchema

SCHEMA = AttributeSchema.from_dict({"colour": ["Black", "Blue", "Red"], "kind": ["Shirt", "Shoe"], "sex": ["M", "W"]})
D = 4  # per attribute
LAYOUT = [(0, D), (D, 2 * D), (2 * D, 3 * D)]


def block_memory(rng: np.random.Generator) -> np.ndarray:
    """A memory block whose prototypes live only in their attribute's slice."""
    memory = np.zeros((D * 3, SCHEMA.total_values), np.float32)
    for a, (offset, size) in enumerate(zip(SCHEMA.offsets, SCHEMA.sizes)):
        memory[a * D:(a + 1) * D, offset:offset + size] = rng.normal(size=(D, size))
    return memory


def one_change(change: dict[int, int], width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    attrs = np.full((1, width), NO_CHANGE)
    values = np.zeros((1, width), np.int64)
    for c, (a, v) in enumerate(change.items()):
        attrs[0, c], values[0, c] = a, v
    return attrs, values


def test_indicator_puts_plus_and_minus_one_in_the_changed_attribute() -> None:
    attrs, values = one_change(SCHEMA.parse_change({"colour": "Red", "sex": "W"}))
    ind = indicator(SCHEMA, np.array([[0, 1, UNKNOWN]]), attrs, values)
    assert ind[0].tolist() == [-1, 0, 1, 0, 0, 0, 1]  # colour Black->Red; sex unknown -> only +1


def test_adde_residual_lands_only_in_the_changed_block_and_changes_add() -> None:
    rng = np.random.default_rng(0)
    memory = block_memory(rng)
    family = Adde(SCHEMA, memory)
    query = rng.normal(size=D * 3).astype(np.float32)
    current = [0, 1, 0]
    one = indicator(SCHEMA, np.array([current]), *one_change({0: 2}))[0]
    residual = one @ memory.T
    assert np.abs(residual[D:]).max() == 0 and np.abs(residual[:D]).max() > 0
    assert np.allclose(residual[:D], memory[:D, 2] - memory[:D, 0])
    out = family.change_one(query, current, {0: 2, 1: 0})
    expected = query + (memory[:, 2] - memory[:, 0]) + (memory[:, 3] - memory[:, 4])
    assert np.allclose(out, expected / np.linalg.norm(expected), atol=1e-6)
    assert abs(np.linalg.norm(out) - 1) < 1e-6


def make_family(make: str, rng: np.random.Generator):
    if make == "adde":
        return Adde(SCHEMA, block_memory(rng))
    if make == "chunk_replace":
        return ChunkReplace(SCHEMA, LAYOUT, block_memory(rng).T.copy())
    weights = np.ones((3, 3), np.float32) + np.diag([1.0, 0.5, 2.0]).astype(np.float32)
    fsn = FashionSearchNetFamily(SCHEMA, LAYOUT, block_memory(rng).T.copy(), weights)
    return Blend(Adde(SCHEMA, block_memory(rng)), fsn, np.array([0.25, 0.5, 1.0], np.float32))


@pytest.mark.parametrize("make", ["adde", "chunk_replace", "blend"])
@pytest.mark.parametrize("current", [[0, 1, 0], [2, UNKNOWN, 1], [1, 0, UNKNOWN]])
@pytest.mark.parametrize("change", [{"colour": "Red"}, {"colour": "Red", "kind": "Shirt", "sex": "W"},
                                    {"kind": "Shoe"}])
def test_one_query_form_matches_the_batched_form(make: str, current: list[int], change: dict[str, str]) -> None:
    rng = np.random.default_rng(2)
    family = make_family(make, rng)
    query = rng.normal(size=D * 3).astype(np.float32)
    query /= np.linalg.norm(query)
    parsed = SCHEMA.parse_change(change)
    before = query.copy()
    out = family.change_one(query, current, parsed)
    batch = family.change_batch(query[None], np.array([current]), *one_change(parsed))
    assert out.dtype == np.float32 and out.shape == query.shape and np.allclose(out, batch[0], atol=1e-6)
    assert np.array_equal(query, before)  # a fresh vector: the caller's embedding is left alone


def test_blend_mixes_the_two_queries_by_the_changed_attributes_mean_weight() -> None:
    rng = np.random.default_rng(5)
    blend = make_family("blend", rng)
    query = rng.normal(size=D * 3).astype(np.float32)
    current = [0, 1, 0]
    for change, b in (({0: 2}, 0.25), ({2: 1}, 1.0), ({0: 2, 1: 0}, 0.375)):
        mixed = (1 - b) * blend.adde.change_one(query, current, change) + b * blend.fsn.change_one(query, current, change)
        assert np.allclose(blend.change_one(query, current, change), mixed / np.linalg.norm(mixed), atol=1e-6)
    assert np.allclose(blend.change_one(query, current, {2: 1}), blend.fsn.change_one(query, current, {2: 1}), atol=1e-6)
    assert np.allclose(blend.change_one(query, current, {}), query / np.linalg.norm(query), atol=1e-6)
    batch = blend.change_batch(np.stack([query, query]), np.array([current, current]),
                               np.array([[NO_CHANGE], [1]]), np.array([[0], [0]]))
    assert np.allclose(batch[0], query / np.linalg.norm(query), atol=1e-6)  # a query without a change: adde's
    assert np.allclose(batch[1], blend.change_one(query, current, {1: 0}), atol=1e-6)
    for bad in (np.array([0.5, 0.5], np.float32), np.array([0.5, 1.5, 0.0], np.float32),
                np.array([0.5, np.nan, 0.0], np.float32)):
        with pytest.raises(ValueError, match="between 0 and 1"):
            Blend(blend.adde, blend.fsn, bad)


def test_adde_a_change_to_the_current_value_is_a_no_op() -> None:
    family = Adde(SCHEMA, block_memory(np.random.default_rng(3)))
    query = np.random.default_rng(4).normal(size=D * 3).astype(np.float32)
    out = family.change_one(query, [1, 0, 1], {0: 1})
    assert np.allclose(out, query / np.linalg.norm(query), atol=1e-6)


def test_batched_form_handles_padding_and_mixed_change_counts() -> None:
    rng = np.random.default_rng(1)
    family = Adde(SCHEMA, block_memory(rng))
    vectors = rng.normal(size=(3, D * 3)).astype(np.float32)
    current = np.array([[0, 1, 0], [2, 0, 1], [1, 1, UNKNOWN]])
    attrs = np.array([[0, NO_CHANGE], [2, 1], [NO_CHANGE, NO_CHANGE]])
    values = np.array([[2, 0], [0, 1], [0, 0]])
    batch = family.change_batch(vectors, current, attrs, values)
    assert np.allclose(batch[0], family.change_one(vectors[0], current[0], {0: 2}), atol=1e-6)
    assert np.allclose(batch[1], family.change_one(vectors[1], current[1], {2: 0, 1: 1}), atol=1e-6)
    assert np.allclose(batch[2], vectors[2] / np.linalg.norm(vectors[2]), atol=1e-6)
    with pytest.raises(ValueError, match="outside the schema"):
        family.change_batch(vectors[:1], current[:1], np.array([[0]]), np.array([[3]]))


def test_chunk_replace_overwrites_only_the_changed_chunk_whatever_the_current_value() -> None:
    rng = np.random.default_rng(2)
    table = rng.normal(size=(SCHEMA.total_values, D * 3)).astype(np.float32)
    family = ChunkReplace(SCHEMA, LAYOUT, table)
    query = rng.normal(size=D * 3).astype(np.float32)
    out = family.change_one(query, [0, 0, 0], {1: 1})
    scale = np.linalg.norm(np.concatenate([query[:D], table[4, D:2 * D], query[2 * D:]]))
    assert np.allclose(out[D:2 * D] * scale, table[4, D:2 * D], atol=1e-5)
    assert np.allclose(out[:D] * scale, query[:D], atol=1e-5) and np.allclose(out[2 * D:] * scale, query[2 * D:], atol=1e-5)
    assert np.allclose(out, family.change_one(query, [2, UNKNOWN, 1], {1: 1}))


def test_value_means_average_each_values_chunk_and_count_it() -> None:
    vectors = np.arange(4 * 3 * D, dtype=np.float32).reshape(4, 3 * D)
    codes = np.array([[0, 0, 0], [0, 1, 1], [2, 1, UNKNOWN], [2, 1, 1]])
    table, counts = value_means(vectors, codes, SCHEMA, LAYOUT)
    assert counts.tolist() == [2, 0, 2, 1, 3, 1, 2]
    assert np.allclose(table[0, :D], vectors[:2, :D].mean(0)) and not table[0, D:].any()
    assert not table[1].any()  # Blue has no reference item
    assert np.allclose(table[4, D:2 * D], vectors[1:, D:2 * D].mean(0))
    rows = reference_rows(codes, SCHEMA.sizes, per_value=1, seed=0)
    assert set(codes[rows, 0].tolist()) == {0, 2} and len(rows) <= 4


def test_predicted_codes_take_the_argmax_per_attribute() -> None:
    logits = np.array([[0.0, 5.0, 1.0, 3.0, -1.0, 0.0, 0.0]])
    codes, probs = SCHEMA.predicted_codes(logits)
    assert codes.tolist() == [[1, 0, 0]]
    assert probs[0, 0] == pytest.approx(np.exp(5) / (1 + np.exp(5) + np.e)) and probs[0, 2] == pytest.approx(0.5)


@pytest.mark.parametrize("change, message", [
    ({"color": "Red"}, "did you mean 'colour'"),
    ({"colour": "Rde"}, "did you mean 'Red'"),
    ({"colour": 3}, "strings"),
    (["colour", "Red"], "mapping"),
])
def test_bad_changes_are_named(change: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        SCHEMA.parse_change(change)  # type: ignore[arg-type]


@pytest.mark.parametrize("where, expected", [
    ({"colour": "Red"}, {0: frozenset([2])}),
    ({"colour": ["Red", "Blue"], "sex": "W"}, {0: frozenset([1, 2]), 2: frozenset([1])}),
])
def test_where_filters_parse_to_allowed_codes(where: dict, expected: dict) -> None:
    assert SCHEMA.parse_where(where) == expected


@pytest.mark.parametrize("where, message", [
    ({"color": "Red"}, "did you mean 'colour'"), ({"colour": []}, "non-empty"), ({"colour": ["Red", 3]}, "strings"),
    ({"colour": "Redd"}, "did you mean 'Red'"), ("colour=Red", "mapping")])
def test_bad_where_filters_are_named(where: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        SCHEMA.parse_where(where)  # type: ignore[arg-type]

"""The changed chunk's emphasis (export/chunk_emphasis.py): chosen on validation queries, it helps
where unchanged chunks leak the old value, stays at 1 where they do not, and the least emphasis
within one paired standard error of the best is kept."""
from __future__ import annotations

import numpy as np
import pytest

from export.chunk_emphasis import (EMPHASIS_GRID, choose_emphasis, emphasis_family, emphasis_weights,
                                   least_within_one_error)
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.families.chunk_replace import ChunkReplace, value_means
from fashsdk.families.fsn import FashionSearchNetFamily
from fashsdk.schema import AttributeSchema

SIZES = (6, 5, 2)
SCHEMA = AttributeSchema.from_dict({f"a{i}": [f"v{j}" for j in range(n)] for i, n in enumerate(SIZES)})
D = 8
LAYOUT = [(a * D, (a + 1) * D) for a in range(len(SIZES))]


def catalog(leak: float, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items whose chunk a is its value's prototype plus noise; ``leak`` mixes the last attribute's
    prototype into every other chunk too (a garment's type chunk that still says 'men's')."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, size, n) for size in SIZES], axis=1)
    prototypes = [rng.normal(size=(size, D)) for size in SIZES]
    vectors = np.zeros((n, D * len(SIZES)), np.float32)
    for a, (start, stop) in enumerate(LAYOUT):
        chunk = prototypes[a][codes[:, a]] + 0.6 * rng.normal(size=(n, D))
        if a != len(SIZES) - 1:
            chunk += leak * prototypes[-1][codes[:, -1]]
        vectors[:, start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True) / np.sqrt(len(SIZES))
    return vectors, codes


def choice_for(leak: float):
    vectors, codes = catalog(leak)
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)
    queries = manipulation_queries(codes, SCHEMA.sizes, max_queries=3000, seed=0)
    return choose_emphasis(SCHEMA, LAYOUT, table, vectors, codes, queries)


def test_emphasis_is_chosen_where_unchanged_chunks_leak_the_old_value() -> None:
    choice = choice_for(leak=1.2)
    assert choice.emphasis > 1.0
    assert choice.top30(choice.emphasis) > choice.top30(1.0) + 0.02
    assert set(choice.hits) == set(EMPHASIS_GRID)
    assert choice.to_json()["chunk_emphasis"] == choice.emphasis


def test_plain_chunk_replace_is_kept_where_chunks_are_clean() -> None:
    choice = choice_for(leak=0.0)
    assert choice.emphasis == 1.0
    assert choice.top30(1.0) > 0.9


def test_the_least_emphasis_within_one_standard_error_of_the_best_wins() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.6
    hits = {1.0: base.copy(), 1.5: base.copy(), 2.0: base.copy()}
    hits[1.5][np.flatnonzero(~base)[:100]] = True  # 5 points ahead of 1.0: clear
    hits[2.0] = hits[1.5].copy()
    hits[2.0][np.flatnonzero(~hits[1.5])[:5]] = True  # 5 queries won, 3 lost: 0.1 points, within the noise
    hits[2.0][np.flatnonzero(hits[1.5])[:3]] = False
    assert least_within_one_error(hits) == 1.5
    assert least_within_one_error({1.0: base, 2.0: base.copy()}) == 1.0  # ties keep the least emphasis


def test_weights_put_the_emphasis_on_the_changed_attribute_only() -> None:
    weights = emphasis_weights(3, 2.0)
    assert weights.tolist() == [[2, 1, 1], [1, 2, 1], [1, 1, 2]]
    with pytest.raises(ValueError, match="at least 1"):
        emphasis_weights(3, 0.5)
    vectors, codes = catalog(leak=0.5, n=50)
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)
    assert type(emphasis_family(SCHEMA, LAYOUT, table, 1.0)) is ChunkReplace
    weighted = emphasis_family(SCHEMA, LAYOUT, table, 2.0)
    assert isinstance(weighted, FashionSearchNetFamily)
    attrs, values = np.array([[0]]), np.array([[3]])
    plain = ChunkReplace(SCHEMA, LAYOUT, table).change_batch(vectors[:1], codes[:1], attrs, values)[0]
    scaled = weighted.change_batch(vectors[:1], codes[:1], attrs, values)[0]
    def changed_share(v: np.ndarray) -> float:
        return float(np.linalg.norm(v[:D]) / np.linalg.norm(v[D:]))

    assert changed_share(scaled) / changed_share(plain) == pytest.approx(2.0, rel=1e-4)  # the changed chunk, against the rest, counts twice


def test_a_grid_without_plain_chunk_replace_is_refused() -> None:
    vectors, codes = catalog(leak=0.0, n=50)
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)
    queries = manipulation_queries(codes, SCHEMA.sizes, max_queries=10, seed=0)
    with pytest.raises(ValueError, match="include 1.0"):
        choose_emphasis(SCHEMA, LAYOUT, table, vectors, codes, queries, grid=(1.5, 2.0))

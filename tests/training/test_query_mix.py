"""The query mix (export/query_mix.py): the blend of adde and the weighted chunk_replace, chosen on
validation queries, helps where unchanged chunks leak the old value and stays adde where they do
not; ties go to the least emphasis, then to adde."""
from __future__ import annotations

import numpy as np
import pytest

from export.query_mix import (BLEND_GRID, EMPHASIS_GRID, choose_query_mix, emphasis_family, emphasis_weights,
                              best_pair, mix_arrays)
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.families.blend import Blend
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
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)  # the value means serve as adde's memory block too
    queries = manipulation_queries(codes, SCHEMA.sizes, max_queries=3000, seed=0)
    return choose_query_mix(SCHEMA, LAYOUT, table.T.copy(), table, vectors, codes, queries)


def test_the_mix_moves_off_adde_where_unchanged_chunks_leak_the_old_value() -> None:
    mix = choice_for(leak=1.2)
    assert set(mix.grid) == {(0.0, 1.0)} | {(b, c) for b in BLEND_GRID[1:] for c in EMPHASIS_GRID}
    assert mix.top30() == max(mix.top30(pair) for pair in mix.grid)
    assert mix.top30() > mix.top30((0.0, 1.0)) + 0.05 and mix.top30() > mix.top30((1.0, 1.0)) + 0.05
    assert mix.pair[0] > 0 and mix.pair[1] > 1  # chunk_replace's part, with the changed chunk weighted
    lead, error = mix.lead_over_adde()
    assert lead > 2 * error > 0
    report = mix.to_json(SCHEMA.names)
    assert report["val_top30_mix"] == round(mix.top30(), 4) and report["val_top30_mix_lead"] == lead
    blend, emphasis = mix_arrays(report, SCHEMA.names)
    assert blend.tolist() == [mix.pair[0]] * len(SIZES) and emphasis.tolist() == [mix.pair[1]] * len(SIZES)
    assert mix_arrays({"val_top30": 0.9}, SCHEMA.names) is None


def test_adde_is_kept_where_chunks_are_clean() -> None:
    mix = choice_for(leak=0.0)
    assert mix.pair == (0.0, 1.0)
    assert mix.top30() > 0.9 and mix.lead_over_adde() == (0.0, 0.0)


def test_ties_go_to_the_least_emphasis_then_to_adde() -> None:
    hits = np.random.default_rng(0).random(500) < 0.7
    better = hits.copy()
    better[np.flatnonzero(~hits)[:3]] = True
    assert best_pair({(0.0, 1.0): hits, (0.5, 2.0): hits.copy(), (1.0, 1.0): hits.copy()}) == (0.0, 1.0)
    assert best_pair({(0.0, 1.0): hits, (0.5, 2.0): hits.copy(), (0.25, 3.0): hits.copy()}) == (0.0, 1.0)
    assert best_pair({(0.0, 1.0): hits, (0.5, 3.0): better.copy(), (1.0, 2.0): better.copy()}) == (1.0, 2.0)
    assert best_pair({(0.0, 1.0): hits, (0.5, 3.0): better, (1.0, 2.0): hits.copy()}) == (0.5, 3.0)


def test_served_blend_reproduces_the_grid_hits_it_was_chosen_by() -> None:
    vectors, codes = catalog(leak=1.2)
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)
    queries = manipulation_queries(codes, SCHEMA.sizes, max_queries=3000, seed=0)
    mix = choose_query_mix(SCHEMA, LAYOUT, table.T.copy(), table, vectors, codes, queries)
    from fashsdk.eval.protocol import exact_topk, query_hits
    from fashsdk.families.adde import Adde

    blend, emphasis = mix_arrays(mix.to_json(SCHEMA.names), SCHEMA.names)
    fsn = FashionSearchNetFamily(SCHEMA, LAYOUT, table, emphasis_weights(len(SIZES), emphasis))
    served = Blend(Adde(SCHEMA, table.T.copy()), fsn, blend)
    searched = served.change_batch(vectors[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    assert np.array_equal(query_hits(exact_topk(searched, vectors, 30), codes, queries.targets, 30), mix.hits)


def test_weights_put_the_emphasis_on_the_changed_attribute_only() -> None:
    weights = emphasis_weights(3, 2.0)
    assert weights.tolist() == [[2, 1, 1], [1, 2, 1], [1, 1, 2]]
    assert emphasis_weights(3, [1.0, 2.5, 3.0]).tolist() == [[1, 1, 1], [1, 2.5, 1], [1, 1, 3]]
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


def test_grids_without_adde_or_plain_chunk_replace_are_refused() -> None:
    vectors, codes = catalog(leak=0.0, n=50)
    table, _ = value_means(vectors, codes, SCHEMA, LAYOUT)
    queries = manipulation_queries(codes, SCHEMA.sizes, max_queries=10, seed=0)
    for blends, emphases in (((0.5, 1.0), EMPHASIS_GRID), (BLEND_GRID, (1.5, 2.0))):
        with pytest.raises(ValueError, match="must hold blend 0"):
            choose_query_mix(SCHEMA, LAYOUT, table.T.copy(), table, vectors, codes, queries, blends, emphases)

"""The search benchmark's synthetic galleries: the kernel model must reproduce the real
catalog's density (what its bandwidth is fitted for) and keep labels attached to items."""
from __future__ import annotations

import numpy as np

from benchmarks.galleries import ChunkModel, KernelModel, nearest_other_distance


def _clustered(n: int = 1500, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in tight clusters (product variants), one label per cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    cluster = rng.integers(60, size=n)
    vectors = centres[cluster] + 0.15 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, np.stack([cluster % 6, cluster % 5], axis=1).astype(np.int16)


def test_kernel_bandwidth_matches_the_real_density() -> None:
    vectors, codes = _clustered()
    model = KernelModel.fit(vectors, codes, probes=400)
    report = model.fit_report
    real, synthetic = report["median_nearest_distance_real"], report["median_nearest_distance_synthetic"]
    assert abs(synthetic - real) / real < 0.25, report
    # a clearly wrong bandwidth misses the density by far: the fit is doing the work
    model.bandwidth *= 4
    far, _ = model.sample(len(vectors), np.random.default_rng(5))
    assert nearest_other_distance(far, 400, 0) > 2 * real


def test_kernel_samples_are_unit_vectors_with_their_seeds_labels() -> None:
    vectors, codes = _clustered()
    model = KernelModel.fit(vectors, codes, probes=300)
    synthetic, labels = model.sample(500, np.random.default_rng(1))
    assert synthetic.shape == (500, vectors.shape[1]) and synthetic.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(synthetic, axis=1), 1.0, atol=1e-5)
    nearest_real = (synthetic @ vectors.T).argmax(1)  # small bandwidth: each item stays by its seed
    assert (codes[nearest_real] == labels).all(axis=1).mean() > 0.9


def test_nearest_other_distance_ignores_the_item_itself() -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors = np.concatenate([vectors, vectors[:1]])  # item 4 duplicates item 0
    assert nearest_other_distance(vectors[:4], 4, 0) == 1.0  # orthogonal: distance 1, never 0 from itself
    dist = np.array([nearest_other_distance(vectors, 5, s) for s in range(3)])
    assert (dist == 1.0).all()  # median over 5 items: 3 of them have no duplicate


def test_chunk_model_keeps_value_means() -> None:
    vectors, codes = _clustered(2000)
    layout = [(0, 16), (16, 32)]
    model = ChunkModel.fit(vectors, codes, codes, layout, [6, 5])
    synthetic, labels = model.sample(4000, np.random.default_rng(2))
    for a, (start, stop) in enumerate(layout):
        for v in range(3):
            want = vectors[codes[:, a] == v, start:stop].mean(0)
            got = synthetic[labels[:, a] == v, start:stop].mean(0)
            assert np.linalg.norm(got - want) < 0.1 * np.linalg.norm(want) + 0.05

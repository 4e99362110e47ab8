"""Gallery generators for the search benchmark: real embeddings grown with matched synthetic ones.

Two sources, both yielding (vectors, label codes, prototypes) in the ADDE layout of A chunks:

* ``ChunkModel.fit(real)``: per attribute a and value v, the mean chunk and the covariance of
  the real chunks of items whose current value (label, else the model's prediction) is v,
  shrunk towards the attribute's pooled within-value covariance when v has few items.
  A synthetic item copies the label row of a random real item (so label combinations and
  value frequencies follow the real joint distribution, unknown labels included), draws
  each chunk from N(mean[a, v], cov[a, v]), and the whole vector is L2-normalised like the
  model's output. Labels come along, so Top-k manipulation accuracy stays computable.
* ``paper_model``: no trained 12 x 340 model exists, so the paper layout uses a structured
  synthetic model of the same form: 12 attributes with Shopping100k-like value counts
  (151 values in all) and Zipf(1) value frequencies; chunk = mean[a, v] (random unit
  direction, weight 0.6) + a within-value variation of rank 24 in a per-attribute basis
  with a 1/sqrt(i) spectrum (weight 0.35) + an isotropic floor (weight 0.1), then the whole
  vector L2-normalised. Prototypes are the value means, as ADDE initialises its memory.
  Labels: a catalog of 3,000 label combinations grown like product variants (200 roots with
  Zipf values, then copies of existing combinations with one attribute redrawn), items pick
  a combination with weight 1/sqrt(rank), so manipulation targets exist in the gallery.
* ``KernelModel.fit(real)`` (the demo layout's default): a kernel density estimate around the
  real items. A synthetic item is a random real item plus Gaussian noise with the real items'
  own full covariance (cross-chunk correlations kept) scaled by a bandwidth h, renormalised;
  it keeps that item's labels. h is fitted so that the synthetic catalog is as dense as the
  real one: the median cosine distance from an item to its nearest other item is matched at
  the real catalog's size (``KernelModel.fit`` reports both). Why not the Gaussian chunk
  model: at the real catalog's size it is measurably harder for a graph index than the real
  items (benchmarks.search reports the check: hnswlib recall@10 at fixed ef on the real items,
  on the kernel model and on the chunk model, same size, same queries), because independent
  Gaussian chunks have no near-duplicates and no cross-chunk structure, unlike real catalogs
  of product variants. The chunk model stays available (``--synthetic gaussian``) as a
  pessimistic stress case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAPER_SIZES = (16, 17, 19, 14, 9, 10, 3, 13, 11, 16, 6, 17)  # 12 attributes, 151 values
PAPER_CHUNK = 340


@dataclass
class ChunkModel:
    """Per-(attribute, value) Gaussian chunk model plus the joint label rows to sample from."""

    layout: list[tuple[int, int]]
    sizes: list[int]
    means: list[np.ndarray]  # per attribute: (V_a, d_a)
    factors: list[np.ndarray]  # per attribute: (V_a, d_a, r) with cov = F F^T
    label_rows: np.ndarray  # (R, A) label codes, -1 = unknown
    current_rows: np.ndarray  # (R, A) value used to draw each chunk (label, else predicted)
    noise: float = 0.0  # isotropic std added per dimension (paper model)

    @classmethod
    def fit(cls, vectors: np.ndarray, codes: np.ndarray, current: np.ndarray,
            layout: list[tuple[int, int]], sizes: list[int]) -> "ChunkModel":
        """Estimate value means and shrunk covariances from real embeddings."""
        means, factors = [], []
        for a, (start, stop) in enumerate(layout):
            chunk = vectors[:, start:stop].astype(np.float64)
            d = stop - start
            mu = np.zeros((sizes[a], d))
            covs = np.zeros((sizes[a], d, d))
            counts = np.zeros(sizes[a])
            for v in range(sizes[a]):
                rows = chunk[current[:, a] == v]
                counts[v] = len(rows)
                if len(rows):
                    mu[v] = rows.mean(0)
                if len(rows) > 1:
                    centred = rows - mu[v]
                    covs[v] = centred.T @ centred / (len(rows) - 1)
            weights = np.maximum(counts - 1, 0)
            pooled = (covs * weights[:, None, None]).sum(0) / max(weights.sum(), 1)
            shrink = d  # pseudo-count: a value needs about d items before its own covariance dominates
            fac = np.zeros((sizes[a], d, d), np.float32)
            for v in range(sizes[a]):
                cov = (weights[v] * covs[v] + shrink * pooled) / (weights[v] + shrink)
                vals, vecs = np.linalg.eigh(cov)
                fac[v] = (vecs * np.sqrt(np.clip(vals, 0, None))).astype(np.float32)
            means.append(mu.astype(np.float32))
            factors.append(fac)
        return cls(list(layout), list(sizes), means, factors, codes.copy(), current.copy())

    @property
    def dim(self) -> int:
        return self.layout[-1][1]

    def sample(self, n: int, rng: np.random.Generator, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``n`` synthetic vectors (L2-normalised) and their label codes."""
        pick = rng.integers(len(self.label_rows), size=n)
        labels, current = self.label_rows[pick], self.current_rows[pick]
        out = np.empty((n, self.dim), np.float32)
        for a, (start, stop) in enumerate(self.layout):
            for v in np.unique(current[:, a]):
                rows = np.flatnonzero(current[:, a] == v)
                fac = self.factors[a][v]
                z = rng.standard_normal((len(rows), fac.shape[1]), dtype=np.float32)
                out[rows, start:stop] = self.means[a][v] + z @ fac.T
        if self.noise:
            out += self.noise * rng.standard_normal(out.shape, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(dtype, copy=False), labels

    def prototypes(self) -> np.ndarray:
        """(D, J) memory block: column j = mean chunk of value j in its attribute's slice."""
        total = sum(self.sizes)
        proto = np.zeros((self.dim, total), np.float32)
        offset = 0
        for a, (start, stop) in enumerate(self.layout):
            proto[start:stop, offset:offset + self.sizes[a]] = self.means[a].T
            offset += self.sizes[a]
        return proto


def paper_model(seed: int = 0, rank: int = 24, label_rows: int = 50000) -> ChunkModel:
    """The structured synthetic 12 x 340 model described in the module docstring."""
    rng = np.random.default_rng(seed)
    d, sizes = PAPER_CHUNK, list(PAPER_SIZES)
    layout = [(a * d, (a + 1) * d) for a in range(len(sizes))]
    means, factors = [], []
    spectrum = 1.0 / np.sqrt(np.arange(1, rank + 1))
    spectrum *= 0.35 / np.sqrt((spectrum ** 2).sum())
    for size in sizes:
        mu = rng.standard_normal((size, d))
        mu *= 0.6 / np.linalg.norm(mu, axis=1, keepdims=True)
        basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
        means.append(mu.astype(np.float32))
        factors.append(np.repeat((basis * spectrum)[None].astype(np.float32), size, axis=0))
    codes = _label_rows(rng, sizes, label_rows)
    return ChunkModel(layout, sizes, means, factors, codes, codes.copy(), noise=0.1 / np.sqrt(d))


def _label_rows(rng: np.random.Generator, sizes: list[int], rows: int, combos: int = 3000,
                roots: int = 200) -> np.ndarray:
    """Label rows drawn from a pool of product-variant-like combinations (see module doc)."""
    freqs = [1.0 / np.arange(1, s + 1) for s in sizes]
    probs = [f / f.sum() for f in freqs]
    pool = np.empty((combos, len(sizes)), np.int16)
    for a, size in enumerate(sizes):
        pool[:roots, a] = rng.choice(size, size=roots, p=probs[a])
    for i in range(roots, combos):
        pool[i] = pool[rng.integers(i)]
        a = int(rng.integers(len(sizes)))
        pool[i, a] = rng.choice(sizes[a], p=probs[a])
    weight = 1.0 / np.sqrt(np.arange(1, combos + 1))
    return pool[rng.permutation(combos)][rng.choice(combos, size=rows, p=weight / weight.sum())]


@dataclass
class KernelModel:
    """Kernel density estimate around real items (module doc): seeds + bandwidth x covariance factor."""

    seeds: np.ndarray  # (R, D) float32, L2-normalised real items
    seed_codes: np.ndarray  # (R, A) their labels
    factor: np.ndarray  # (D, D) with F F^T = covariance of the real items
    bandwidth: float
    fit_report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, vectors: np.ndarray, codes: np.ndarray, *, seed: int = 0, probes: int = 1000,
            grid: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8)) -> "KernelModel":
        """Choose the bandwidth whose synthetic catalog (as many items as the real one) has the
        real catalog's median nearest-other-item distance; interpolates on ``grid``."""
        real = np.ascontiguousarray(vectors, dtype=np.float32)
        centred = (real - real.mean(0)).astype(np.float64)
        vals, vecs = np.linalg.eigh(centred.T @ centred / max(len(real) - 1, 1))
        factor = (vecs * np.sqrt(np.clip(vals, 0, None))).astype(np.float32)
        target = nearest_other_distance(real, probes, seed)
        model = cls(real, codes.copy(), factor, 0.0)
        measured = []
        for h in grid:
            model.bandwidth = h
            synthetic, _ = model.sample(len(real), np.random.default_rng(seed + 1))
            measured.append(nearest_other_distance(synthetic, probes, seed))
        # the distance grows with h: interpolate log(distance) against h at the real target
        logs = np.log(np.maximum(measured, 1e-12))
        model.bandwidth = float(np.interp(np.log(max(target, 1e-12)), logs, grid))
        check, _ = model.sample(len(real), np.random.default_rng(seed + 2))
        model.fit_report = {"bandwidth": round(model.bandwidth, 4), "real_items": len(real),
                            "median_nearest_distance_real": float(target),
                            "median_nearest_distance_synthetic": float(nearest_other_distance(check, probes, seed)),
                            "grid": {str(h): float(d) for h, d in zip(grid, measured)}}
        return model

    @property
    def dim(self) -> int:
        return int(self.seeds.shape[1])

    def sample(self, n: int, rng: np.random.Generator, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``n`` synthetic vectors (L2-normalised) and their labels (those of their seeds)."""
        pick = rng.integers(len(self.seeds), size=n)
        out = self.seeds[pick] + self.bandwidth * (rng.standard_normal((n, self.dim), dtype=np.float32) @ self.factor.T)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(dtype, copy=False), self.seed_codes[pick]


def nearest_other_distance(vectors: np.ndarray, probes: int, seed: int) -> float:
    """Median over ``probes`` random items of the cosine distance to their nearest other item."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(probes, len(vectors)), replace=False)
    best = np.full(len(rows), -np.inf, np.float32)
    for start in range(0, len(vectors), 16384):
        sims = vectors[rows] @ vectors[start:start + 16384].T
        inside = (rows >= start) & (rows < start + 16384)
        sims[np.flatnonzero(inside), rows[inside] - start] = -np.inf  # not itself
        best = np.maximum(best, sims.max(1))
    return float(np.median(1.0 - best))

"""A compact linear projection of the embeddings, so the graph searches a few dozen dims.

Ranking a catalog by q . x depends on x only through its deviation from the catalog mean
(q . mu is the same for every item), but manipulated queries are not centred: they keep a
large component along the mean direction, which multiplies the items' small variation
along it. So the projection keeps that direction explicitly and adds the top principal
directions of the centred items: W = [mu/|mu|, PCA of (x - mu) with mu's direction removed].
W has orthonormal columns, so (W^T q) . (W^T x) approximates q . x up to the items' residual
energy, which the exact re-rank on the full vectors then repairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_DIM = 32
MAX_DIM = 128  # wider measured no better (docs/performance.md, "Projection")
KEEP_VARIANCE = 0.99  # the auto rule: smallest p keeping this share of the centred variance
# Up to this width the graph searches the full vectors: there a graph walk is bound by memory
# latency per visited node, not arithmetic, so a projection saves little per hop and loses
# accuracy that more candidates must buy back (docs/performance.md, "Projection").
IDENTITY_MAX_DIM = 512
EIGH_MAX_DIM = 1024  # above this the fit uses a randomised SVD instead of a D x D eigensolve


@dataclass
class Projection:
    """``matrix`` (D, p) float32 with orthonormal columns, or None for the identity."""

    matrix: np.ndarray | None
    fit_count: int  # items the fit saw
    fit_residual: float  # mean share of an item's energy outside the projection, on the fit sample
    dim: int = 0  # D, needed when matrix is None

    def __post_init__(self) -> None:
        if self.matrix is not None:
            self.dim = int(self.matrix.shape[0])

    @property
    def identity(self) -> bool:
        """The graph then holds the full vectors and its scores are already exact (float32)."""
        return self.matrix is None

    @property
    def out_dim(self) -> int:
        return self.dim if self.matrix is None else int(self.matrix.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, p) float32, C-contiguous (what hnswlib wants)."""
        if self.matrix is None:
            return np.ascontiguousarray(vectors, np.float32)
        return np.ascontiguousarray(np.asarray(vectors, np.float32) @ self.matrix)

    def residuals(self, vectors: np.ndarray, projected: np.ndarray) -> np.ndarray:
        """Per item: 1 - |W^T x|^2 / |x|^2, the share of its energy the projection loses."""
        if self.matrix is None:
            return np.zeros(len(vectors))
        full = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        kept = np.einsum("ij,ij->i", projected, projected, dtype=np.float64)
        return np.clip(1.0 - kept / np.maximum(full, 1e-30), 0.0, 1.0)


def choose_dim(variance: np.ndarray, total: float, in_dim: int, n: int) -> int:
    """Smallest p (mean direction + components, a multiple of 8 in [MIN_DIM, MAX_DIM]) whose
    components keep KEEP_VARIANCE of the centred variance; never more than the data supports."""
    captured = np.cumsum(variance) / max(total, 1e-30)
    p = int(np.searchsorted(captured, KEEP_VARIANCE) + 2)
    p = min(max(-(-p // 8) * 8, MIN_DIM), MAX_DIM)
    return max(1, min(p, in_dim, n))


def fit_projection(sample: np.ndarray, dim: int | None = None, seed: int = 0) -> Projection:
    """Fit on (n, D) item vectors; ``dim`` None picks p by the variance rule, or the identity
    when D <= IDENTITY_MAX_DIM; ``dim`` = D asks for the identity."""
    x = np.asarray(sample, np.float32)
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot fit a projection on zero items")
    if (dim is None and d <= IDENTITY_MAX_DIM) or dim == d:
        return Projection(None, n, 0.0, d)
    mean = x.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(mean))
    axis = (mean / norm if norm > 1e-12 else np.eye(d, 1)[:, 0]).astype(np.float32)
    centred = x - mean.astype(np.float32)
    centred -= np.outer(centred @ axis, axis)  # the mean direction is kept on its own
    total = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    wanted = MAX_DIM if dim is None else int(dim)
    if d <= EIGH_MAX_DIM:
        values, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
        variance, basis = values[::-1].clip(0), vectors[:, ::-1]
    else:
        variance, basis = _randomized_top(centred, min(wanted, n, d) + 16, seed)
    p = choose_dim(variance, total, d, n) if dim is None else max(1, min(wanted, d, n))
    components = basis[:, :p - 1] - np.outer(axis, axis @ basis[:, :p - 1])  # exact orthogonality
    matrix, _ = np.linalg.qr(np.concatenate([axis[:, None], components], axis=1).astype(np.float64))
    matrix = np.ascontiguousarray(matrix * np.sign(matrix[np.abs(matrix).argmax(axis=0), np.arange(p)]), np.float32)
    projected = x @ matrix
    kept = float(np.einsum("ij,ij->", projected, projected, dtype=np.float64))
    energy = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    return Projection(matrix, n, max(0.0, 1.0 - kept / max(energy, 1e-30)))


def _randomized_top(x: np.ndarray, rank: int, seed: int, power_iters: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top singular values^2 and right singular vectors (D, rank) of x (Halko et al.)."""
    rng = np.random.default_rng(seed)
    rank = max(1, min(rank, *x.shape))
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], rank), dtype=np.float32))
    for _ in range(power_iters):
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    b = (q.T @ x).astype(np.float64)  # (rank, D)
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    return s ** 2, vt.T

"""FashionSearchNet's attribute weights lambda_{b,a*} (Eq. 6), fitted with the global ranking loss (Eq. 7).

Run after stage 1 on frozen training features (the paper trains them jointly with the network;
here the network is fixed and only the A x A weights learn, in seconds). For a change of a*, the
query's chunks after replacement are compared with the gallery's under
d^2 = sum_b lambda_{b,a*}^2 |q_b - g_b|^2, and the soft triplet d+ = sigmoid(d(q, p) - d(q, n)) is
minimised with p a training item carrying the target combination (the paper's rule) and n an item
without it. The paper draws n at random; here n is drawn from the 50 nearest unweighted neighbours
that lack the target, the items the weights must push down for Top-k to change (random negatives
are already far and teach the weights nothing). Each column of lambda^2 averages 1 (its scale does
not change a ranking and cannot shrink the loss) and no weight falls below ``FLOOR``: unbounded,
the fit put all the weight on articleType for every change (a small validation gallery rewards
"same garment, any colour"), which lost 2 points of test Top-30 and 12 on colour changes
(benchmarks/results/fsn-demo-free-weights). The caller keeps the fitted weights only if validation
Top-30 improves (``fit_attribute_weights`` returns both scores).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fashsdk.eval.protocol import combination_keys, exact_topk, manipulation_queries
from fashsdk.schema import AttributeSchema

from .models import ADDE

NEIGHBOURS = 50
FLOOR = 0.5  # the least weight lambda^2 a chunk keeps: every attribute still counts


def _triplets(embedding: np.ndarray, codes: np.ndarray, manipulated: np.ndarray, targets: np.ndarray,
              sizes: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query index, positive row, negative row) for the queries that have both."""
    keys = combination_keys(codes, sizes)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    wanted = combination_keys(targets, sizes)
    lo, hi = np.searchsorted(sorted_keys, wanted, "left"), np.searchsorted(sorted_keys, wanted, "right")
    near = exact_topk(manipulated, embedding, NEIGHBOURS)
    wrong = keys[near] != wanted[:, None]
    ok = (hi > lo) & wrong.any(1)
    q = np.flatnonzero(ok)
    positives = order[lo[q] + (rng.random(len(q)) * (hi[q] - lo[q])).astype(np.int64)]
    pick = np.array([rng.choice(np.flatnonzero(w)) for w in wrong[q]], dtype=np.int64)
    return q, positives, near[q, pick]


def chunk_squared_distances(a: np.ndarray, b: np.ndarray, layout: list[tuple[int, int]]) -> np.ndarray:
    """(N, A): |a_b - b_b|^2 per chunk b for paired rows."""
    return np.stack([((a[:, s:e] - b[:, s:e]) ** 2).sum(1) for s, e in layout], axis=1)


def squared_weights(theta: torch.Tensor, floor: float = FLOOR) -> torch.Tensor:
    """(A, A) lambda^2: per column, ``floor`` plus a softmax share of the rest, averaging 1."""
    count = theta.shape[0]
    return floor + count * (1 - floor) * torch.softmax(theta, dim=0)


def fit_weights(pos: np.ndarray, neg: np.ndarray, changed: np.ndarray, count: int, steps: int = 400,
                lr: float = 0.05, seed: int = 0, floor: float = FLOOR) -> np.ndarray:
    """(A, A) lambda from per-chunk squared distances to positives and negatives (N, A) and the
    changed attribute of each triplet (N,): minimises the mean soft triplet of Eq. 7."""
    torch.manual_seed(seed)
    theta = torch.zeros(count, count, requires_grad=True)
    pos_t, neg_t = torch.from_numpy(pos).float(), torch.from_numpy(neg).float()
    col = torch.from_numpy(changed.astype(np.int64))
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        w = squared_weights(theta, floor)[:, col].T  # (N, A): lambda^2 of each triplet's change
        d_pos = (pos_t * w).sum(1).clamp_min(1e-12).sqrt()
        d_neg = (neg_t * w).sum(1).clamp_min(1e-12).sqrt()
        loss = torch.sigmoid(d_pos - d_neg).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return squared_weights(theta, floor).sqrt().numpy()


@torch.no_grad()
def fit_attribute_weights(model: ADDE, schema: AttributeSchema, features: torch.Tensor, codes: np.ndarray,
                          validate: Callable[[], float], log: Callable[[str], None], queries: int = 8000,
                          seed: int = 0) -> tuple[float, float]:
    """Fit ``model.attribute_weights`` on training ``features``; keep them only if ``validate()``
    (validation Top-30) improves. Returns (Top-30 with uniform weights, with the fitted ones)."""
    model.eval()
    model.attribute_weights.fill_(1.0)
    uniform = validate()
    embedding = model.head_outputs(features)[0].numpy()
    sizes = schema.sizes
    query_set = manipulation_queries(codes, sizes, max_queries=queries, seed=seed)
    manipulated = model.query_family(schema).change_batch(embedding[query_set.rows], codes[query_set.rows],
                                                          query_set.attrs, query_set.values)
    rng = np.random.default_rng(seed)
    q, positives, negatives = _triplets(embedding, codes, manipulated, query_set.targets, sizes, rng)
    d = model.config.dim
    layout = [(a * d, (a + 1) * d) for a in range(len(sizes))]
    pos = chunk_squared_distances(manipulated[q], embedding[positives], layout)
    neg = chunk_squared_distances(manipulated[q], embedding[negatives], layout)
    with torch.enable_grad():
        weights = fit_weights(pos, neg, query_set.attrs[q, 0], len(sizes), seed=seed)
    model.attribute_weights.copy_(torch.from_numpy(weights))
    fitted = validate()
    log(f"  attribute weights (Eq. 7) on {len(q)} training triplets: val Top-30 {fitted:.3f} vs {uniform:.3f} "
        f"uniform; lambda^2 per changed attribute (columns) {np.round(weights ** 2, 2).tolist()}")
    if fitted <= uniform:
        model.attribute_weights.fill_(1.0)
        log("  kept uniform weights: the fitted ones did not improve validation Top-30")
    return uniform, fitted

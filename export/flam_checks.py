"""FLAM's checks on real features: the paper's classifier check (its Table 5) and cycle consistency.

An independent classifier per attribute (softmax regression, not FLAM's embedders) is fitted on
real training features with their labels. On test items with a known value, each query changes one
random attribute to another value through the served manipulator (the bundle's ONNX graph):

- ``wanted_before`` / ``wanted_after``: the share the classifier reads as the wanted value on x and
  on x~ (the paper: before vs after manipulation);
- ``kept_after``: over the other attributes, the share whose prediction on x~ equals that on x;
- ``cycle_cosine``: cosine between x and G(G(x, wanted), original value), beside ``moved_cosine``,
  the cosine between x and x~ (how far G moved it at all).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def fit_classifiers(features: np.ndarray, codes: np.ndarray, sizes: list[int], steps: int = 400,
                    seed: int = 0) -> list[torch.nn.Linear]:
    """One softmax regression per attribute on the rows whose value is known (full batch, Adam)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    heads = []
    for a, n in enumerate(sizes):
        known = np.flatnonzero(codes[:, a] >= 0)
        head = torch.nn.Linear(x.shape[1], n)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        y = torch.from_numpy(codes[known, a].astype(np.int64))
        for _ in range(steps):
            loss = F.cross_entropy(head(x[known]), y) + 1e-4 * head.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        heads.append(head.eval())
    return heads


def _predict(heads: list[torch.nn.Linear], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        return np.stack([h(t).argmax(1).numpy() for h in heads], axis=1)


def manipulation_checks(train_features: np.ndarray, train_codes: np.ndarray, bundle_dir: Path, index_dir: Path,
                        queries: int = 3000, seed: int = 0) -> dict[str, Any]:
    """The numbers of the module docstring for the bundle's manipulator on its index's test items."""
    from fashsdk.bundle import Bundle
    from fashsdk.index import CatalogIndex

    bundle = Bundle.load(bundle_dir)
    family, sizes = bundle.family, bundle.schema.sizes
    _, vectors, codes = CatalogIndex.load(index_dir).vectors_and_codes()
    heads = fit_classifiers(train_features, train_codes, sizes, seed=seed)
    predicted = _predict(heads, vectors)
    test_accuracy = [float(np.mean(predicted[codes[:, a] >= 0, a] == codes[codes[:, a] >= 0, a]))
                     for a in range(len(sizes))]
    rng = np.random.default_rng(seed)
    attrs = rng.integers(0, len(sizes), queries)
    rows = np.array([rng.choice(np.flatnonzero(codes[:, a] >= 0)) for a in attrs])
    current = codes[rows, attrs]
    wanted = (current + np.array([rng.integers(1, sizes[a]) for a in attrs])) % np.asarray(sizes)[attrs]
    x = vectors[rows]
    moved = family.change_batch(x, codes[rows], attrs[:, None], wanted[:, None])
    back = family.change_batch(moved, codes[rows], attrs[:, None], current[:, None])
    before, after = _predict(heads, x), _predict(heads, moved)
    other = np.ones_like(before, bool)
    other[np.arange(queries), attrs] = False
    return {
        "queries": queries,
        "classifier_test_accuracy": [round(v, 4) for v in test_accuracy],
        "wanted_before": round(float(np.mean(before[np.arange(queries), attrs] == wanted)), 4),
        "wanted_after": round(float(np.mean(after[np.arange(queries), attrs] == wanted)), 4),
        "wanted_after_per_attribute": {bundle.schema.names[a]: round(float(np.mean(
            after[attrs == a, a] == wanted[attrs == a])), 4) for a in range(len(sizes)) if np.any(attrs == a)},
        "kept_after": round(float(np.mean((after == before)[other])), 4),
        "moved_cosine": round(float(np.mean(np.sum(moved * x, axis=1))), 4),
        "cycle_cosine": round(float(np.mean(np.sum(back * x, axis=1))), 4),
    }


def markdown(checks: dict[str, Any]) -> str:
    per = ", ".join(f"{name} {v:.3f}" for name, v in checks["wanted_after_per_attribute"].items())
    return (f"Classifier check ({checks['queries']} test queries, one random attribute each, an independent softmax "
            f"classifier fitted on real training features, test accuracy "
            f"{' / '.join(f'{v:.3f}' for v in checks['classifier_test_accuracy'])}): wanted value read on "
            f"{checks['wanted_before']:.3f} before and {checks['wanted_after']:.3f} after manipulation ({per}); the "
            f"other attributes' predictions kept on {checks['kept_after']:.3f}. Cosine x to x~ "
            f"{checks['moved_cosine']:.3f}; cycle G(G(x, v), v0) to x {checks['cycle_cosine']:.3f}.\n")

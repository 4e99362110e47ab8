"""The outfit head (the papers' ADDE-O) in numpy: per-attribute projections psi_a of the
embedding's attribute chunks and a category-pair attention kappa, and its exact reduction to
one inner product.

The model's outfit distance of a candidate x (target category t) to outfit items o_i
(categories c_i) is

    D(O, x) = mean_i sum_a w_a(c_i, t) ||psi_a o_ia - psi_a x_a||^2,   w(c, t) = softmax(kappa(c ++ t)).

Expanding the square, with q_a = psi_a x_a, p_ia = psi_a o_ia, W_a = mean_i w_ia and
P_a = mean_i w_ia p_ia:

    D(O, x) = sum_a W_a ||q_a||^2 - 2 q_a . P_a + mean_i sum_a w_ia ||p_ia||^2,

an inner product between the outfit's query u = [-2 P_1 .. -2 P_A, W_1 .. W_A] and the item's
gallery feature g = [q_1 .. q_A, ||q_1||^2 .. ||q_A||^2], plus a constant of the outfit: one
search ranks every candidate exactly as the model does. Training (export/outfit_head_train.py)
uses these same formulas on torch tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BundleError, QueryError, closest_match

if TYPE_CHECKING:
    from ..bundle import Bundle

KAPPA = ("kappa_w1", "kappa_b1", "kappa_w2", "kappa_b2")


@dataclass
class OutfitHead:
    categories: list[str]
    attribute: int  # the schema attribute whose value gives an item's outfit category
    value_category: np.ndarray  # (values of that attribute,) category index, -1 = in no outfit category
    spans: list[tuple[int, int]]  # each attribute's chunk of the embedding
    psi: list[np.ndarray]  # per attribute (p, d_a)
    kappa: dict[str, np.ndarray]
    _pair_weights: np.ndarray | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "OutfitHead":
        meta = bundle.outfit
        if meta is None:
            raise QueryError(f"bundle {str(bundle.directory)!r} has no outfit head; add one with "
                             "'python -m export outfit-head' (see README, outfit completion)")
        try:
            files, names = meta["files"], bundle.schema.names
            attribute = names.index(meta["category_attribute"])
            categories = [str(c) for c in meta["categories"]]
            values = bundle.schema.attributes[attribute].values
            value_category = np.array([categories.index(meta["value_category"][v]) if v in meta["value_category"]
                                       else -1 for v in values], np.int64)
            spans = [tuple(bundle.layout[name]) for name in names]
            psi = [bundle.array(files[f"psi_{a}"], f"outfit psi_{a}") for a in range(len(names))]
            kappa = {key: bundle.array(files[key], f"outfit {key}") for key in KAPPA}
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"bundle {str(bundle.directory)!r}: its outfit head is malformed ({exc}); "
                              "add it again with 'python -m export outfit-head'") from None
        head = cls(categories, attribute, value_category, spans, psi, kappa)  # type: ignore[arg-type]
        head._check()
        return head

    def _check(self) -> None:
        c, a = len(self.categories), len(self.spans)
        hidden = self.kappa["kappa_w1"].shape[-1]
        shapes = {"kappa_w1": (2 * c, hidden), "kappa_b1": (hidden,), "kappa_w2": (hidden, a), "kappa_b2": (a,)}
        bad = [k for k, shape in shapes.items() if self.kappa[k].shape != shape]
        bad += [f"psi_{i}" for i, (m, (s, e)) in enumerate(zip(self.psi, self.spans)) if m.ndim != 2 or m.shape[1] != e - s]
        if bad:
            raise BundleError(f"the outfit head's arrays {bad} do not fit {c} categories and the embedding layout")

    def category_index(self, category: str) -> int:
        if category not in self.categories:
            hint = closest_match(str(category), self.categories)
            raise QueryError(f"unknown outfit category {category!r}" + (f"; did you mean {hint!r}?" if hint else "")
                             + f" (categories: {', '.join(self.categories)})")
        return self.categories.index(category)

    def categories_of(self, codes: np.ndarray) -> np.ndarray:
        """(n,) outfit category index of items from their current value codes (n, A); -1 = none."""
        column = np.asarray(codes)[:, self.attribute].astype(np.int64)
        known = (column >= 0) & (column < len(self.value_category))
        return np.where(known, self.value_category[np.clip(column, 0, len(self.value_category) - 1)], -1)

    def weights(self, sources: np.ndarray, target: int) -> np.ndarray:
        """(n, A) attention over the attribute subspaces for source categories -> the target category
        (kappa has one input per category pair, so every pair's weights are computed once)."""
        sources = np.asarray(sources, np.int64)
        c = len(self.categories)
        if len(sources) and (sources.min() < 0 or sources.max() >= c) or not 0 <= target < c:
            raise ValueError(f"outfit categories must be 0..{c - 1}; got sources {sources.tolist()}, target {target}")
        if self._pair_weights is None:
            self._pair_weights = self._all_pair_weights()
        return self._pair_weights[sources, target]

    def _all_pair_weights(self) -> np.ndarray:
        """(C, C, A): softmax(kappa(onehot(source) ++ onehot(target))) for every pair."""
        c = len(self.categories)
        source, target = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
        x = np.zeros((c * c, 2 * c), np.float32)
        x[np.arange(c * c), source.ravel()] = 1.0
        x[np.arange(c * c), c + target.ravel()] = 1.0
        hidden = np.maximum(x @ self.kappa["kappa_w1"] + self.kappa["kappa_b1"], 0.0)
        logits = hidden @ self.kappa["kappa_w2"] + self.kappa["kappa_b2"]
        logits = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (logits / logits.sum(axis=1, keepdims=True)).astype(np.float64).reshape(c, c, -1)

    def project(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Per attribute (n, p) float64: psi_a applied to each vector's chunk (a float32 product; the
        sums after it are float64, so the served ranking matches the definition's to rounding)."""
        return [(np.ascontiguousarray(vectors[:, s:e], np.float32) @ m.T).astype(np.float64)
                for (s, e), m in zip(self.spans, self.psi)]

    def gallery_features(self, vectors: np.ndarray) -> np.ndarray:
        """(n, A p + A) features g: projections, then their squared norms."""
        parts = self.project(vectors)
        return np.concatenate(parts + [np.einsum("ij,ij->i", q, q)[:, None] for q in parts], axis=1)

    def query(self, vectors: np.ndarray, sources: np.ndarray, target: int) -> tuple[np.ndarray, float]:
        """The outfit's (u, constant): D(O, x) = g(x) . u + constant for every candidate x."""
        w = self.weights(sources, target)
        parts = self.project(vectors)
        n = len(w)
        big_w = w.sum(axis=0) / n
        pulls = [(-2.0 / n) * (w[:, a] @ p) for a, p in enumerate(parts)]  # -2 mean_i w_ia p_ia
        constant = sum(float(w[:, a] @ np.einsum("ij,ij->i", p, p)) for a, p in enumerate(parts)) / n
        return np.concatenate(pulls + [big_w]), constant

    def distance(self, vectors: np.ndarray, sources: np.ndarray, target: int, candidates: np.ndarray) -> np.ndarray:
        """D(O, x) for each candidate, straight from the definition (the reference for the reduction)."""
        w = self.weights(sources, target)
        outfit, items = self.project(vectors), self.project(candidates)
        total = np.zeros(len(candidates), np.float64)
        for a, (p, q) in enumerate(zip(outfit, items)):
            gaps = ((p[:, None, :] - q[None, :, :]) ** 2).sum(axis=2)  # (outfit items, candidates)
            total += (w[:, a:a + 1] * gaps).mean(axis=0)
        return total

"""Label rerank: a manipulation query's candidates reordered by how likely each carries the wanted values.

The changed query vector finds ``candidates`` nearest neighbours, and ``value_candidates`` more
among the items whose current value (stored label, else prediction) is the wanted one for every
changed attribute (a ``where`` search: a value the vector moves towards weakly, such as a usage,
still reaches the pool); each candidate's score becomes

    cosine + sum over attributes a of w_a * log p_a(wanted value of a | the candidate's vector)

where p_a is a linear softmax probe on the stored, L2-normalised embedding (fitted on the
training split at export, export/label_probe.py) and w_a is ``changed`` for the attributes the
query changes and ``kept`` for the others (the query's own values), both chosen on the
validation split. Why: the vector alone ranks by overall resemblance, so results drift on the
attributes the shopper kept (a men's shirt changed to red returns red T-shirts) and on values
that are weakly visible; the probe reads those attributes from the same vector, so the rerank
needs nothing stored beyond the embedding and serves every family and index backend alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import BundleError, QueryError
from ..index import Filter, Hits, IndexBackend

if TYPE_CHECKING:
    from ..bundle import Bundle

MANIFEST_KEY = "label_rerank"
LOG_FLOOR = math.log(1e-4)  # one confidently wrong attribute costs a bounded amount, not minus infinity
EXP_SAFE = 60.0  # float32 exp is finite and normal for |x| < 87


@dataclass(frozen=True)
class LabelRerank:
    weights: np.ndarray  # (D, J) the probe's weights over all attributes' values
    bias: np.ndarray  # (J,)
    sizes: tuple[int, ...]  # values per attribute; attribute a owns columns offsets[a]:offsets[a] + sizes[a]
    kept: float  # weight of log p for each attribute the query keeps
    changed: float  # weight of log p for each attribute the query changes
    candidates: int  # neighbours of the changed query that are reordered
    value_candidates: int = 0  # and its neighbours among the items that carry every wanted value

    def __post_init__(self) -> None:
        total = sum(self.sizes)
        if self.weights.ndim != 2 or self.weights.shape[1] != total or self.bias.shape != (total,):
            raise ValueError(f"label probe shapes {self.weights.shape} and {self.bias.shape} do not fit {total} "
                             f"attribute values")
        if not (np.isfinite(self.weights).all() and np.isfinite(self.bias).all()):
            raise ValueError("label probe holds NaN or infinity")
        if not (math.isfinite(self.kept) and math.isfinite(self.changed)) or self.kept < 0 or self.changed < 0:
            raise ValueError(f"rerank weights must be finite and >= 0, got kept {self.kept}, changed {self.changed}")
        if self.candidates < 1 or self.value_candidates < 0:
            raise ValueError(f"rerank candidates must be >= 1 and value candidates >= 0, got {self.candidates} and "
                             f"{self.value_candidates}")
        object.__setattr__(self, "_starts", np.cumsum((0, *self.sizes[:-1])).astype(np.int64))
        # for unit vectors every logit lies within +-(|w_j| + |b_j|): below EXP_SAFE, exp needs no shift
        bound = float(np.max(np.linalg.norm(self.weights, axis=0) + np.abs(self.bias))) if total else 0.0
        object.__setattr__(self, "_unshifted", bound < EXP_SAFE)

    @property
    def offsets(self) -> list[int]:
        return self._starts.tolist()

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "LabelRerank | None":
        """The bundle's rerank (checksummed arrays, no pickle), or None when it has none."""
        section = bundle.manifest.get(MANIFEST_KEY)
        if section is None:
            return None
        where = f"bundle {str(bundle.directory)!r}: {MANIFEST_KEY}"
        try:
            files = section["files"]
            weights = bundle.array(str(files["weights"]), "label probe weights").astype(np.float32)
            bias = bundle.array(str(files["bias"]), "label probe bias").astype(np.float32)
            rerank = cls(weights, bias, tuple(bundle.schema.sizes), float(section["kept"]), float(section["changed"]),
                         int(section["candidates"]), int(section.get("value_candidates", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} is malformed ({exc}); export the rerank again "
                              "(python -m export label-rerank)") from None
        if rerank.weights.shape[0] != bundle.dim:
            raise BundleError(f"{where}: probe for {rerank.weights.shape[0]}-d vectors, the embedding has "
                              f"{bundle.dim}; export the rerank again (python -m export label-rerank)")
        return rerank

    def to_manifest(self, files: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"files": files, "kept": self.kept, "changed": self.changed, "candidates": self.candidates,
                "value_candidates": self.value_candidates, **(extra or {})}

    def value_filter(self, change: Mapping[int, int], where: Filter | None = None) -> Filter | None:
        """The ``where`` that finds a changed query's value candidates: the query's own filter AND
        each changed attribute at its wanted value; None when there is nothing to find (no value
        candidates asked for, no change, or a filter that excludes a wanted value)."""
        if self.value_candidates <= 0 or not change:
            return None
        out = dict(where or {})
        for a, v in change.items():
            allowed = out.get(a, frozenset([v])) & frozenset([v])
            if not allowed:
                return None
            out[a] = allowed
        return out

    def lacks_values(self, nearest: Hits, change: Mapping[int, int]) -> bool:
        """Whether the value search can add anything to ``nearest`` (the query's nearest candidates,
        found under the same filter): when they already hold ``value_candidates`` items carrying the
        wanted values, the nearest carriers overall are among them, so the search is skipped."""
        current = np.where(nearest.labels >= 0, nearest.labels, nearest.predicted)
        carries = np.ones(len(nearest.ids), bool)
        for a, v in change.items():
            carries &= current[:, a] == v
        return int(carries.sum()) < self.value_candidates

    def log_probs(self, vectors: np.ndarray) -> np.ndarray:
        """(n, J): per attribute, the log-softmax of the probe's logits for each value (a few whole-array
        calls rather than a loop over attributes: this runs on every changed query's candidates)."""
        logits = np.asarray(vectors, np.float32) @ self.weights + self.bias
        starts = self._starts
        top = np.repeat(np.maximum.reduceat(logits, starts, axis=1), self.sizes, axis=1)
        logits -= top
        norms = np.log(np.add.reduceat(np.exp(logits), starts, axis=1))
        logits -= np.repeat(norms, self.sizes, axis=1)
        return logits

    def bonus(self, log_probs: np.ndarray, rows: np.ndarray, wanted: np.ndarray, changed: np.ndarray) -> np.ndarray:
        """Score added to each candidate (Q, K): ``log_probs`` (n, J) of the items, ``rows`` (Q, K) the
        candidates' rows in it, ``wanted`` (Q, A) value codes (negative: unknown, no term),
        ``changed`` (Q, A) bool."""
        wanted = np.asarray(wanted, np.int64)
        total = np.zeros(rows.shape, np.float32)
        for a, offset in enumerate(self.offsets):
            known = wanted[:, a] >= 0
            column = offset + np.where(known, wanted[:, a], 0)
            term = np.maximum(log_probs[rows, column[:, None]], LOG_FLOOR)
            weight = np.where(changed[:, a], self.changed, self.kept) * known
            total += weight[:, None].astype(np.float32) * term
        return total

    def order(self, scores: np.ndarray, log_probs: np.ndarray, rows: np.ndarray, wanted: np.ndarray,
              changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions (Q, K) reordered best first, and their new scores; ``scores`` (Q, K)
        are the candidates' cosines, the rest as in ``bonus``."""
        total = np.asarray(scores, np.float32) + self.bonus(log_probs, rows, wanted, changed)
        order = np.argsort(-total, axis=1, kind="stable")
        return order, np.take_along_axis(total, order, axis=1)

    def rerank_hits(self, index: IndexBackend, hits: Hits, wanted: Sequence[int], changed: np.ndarray,
                    k: int) -> Hits:
        """One query's index hits (its candidates) reordered, the first ``k`` kept; scores become
        the reranked scores."""
        if not hits.ids:
            return hits
        try:
            vectors = index.get_many(hits.ids)[0]
        except QueryError:  # a concurrent remove took a candidate between the two reads
            alive = [n for n, i in enumerate(hits.ids) if i in index]
            hits = Hits([hits.ids[n] for n in alive], hits.scores[alive], hits.labels[alive], hits.predicted[alive],
                        hits.confidence[alive])
            vectors = index.get_many(hits.ids)[0]
        total = hits.scores + self.single_bonus(vectors, wanted, changed)
        keep = np.argsort(-total, kind="stable")[:k]
        return Hits([hits.ids[n] for n in keep.tolist()], total[keep].astype(np.float32), hits.labels[keep],
                    hits.predicted[keep], hits.confidence[keep])

    def single_bonus(self, vectors: np.ndarray, wanted: Sequence[int], changed: np.ndarray) -> np.ndarray:
        """``bonus`` for one query's candidate ``vectors`` (K, D), in a few whole-array calls (this is
        on the path of every changed search)."""
        wanted = np.asarray(wanted, np.int64)
        known = wanted >= 0
        columns = self._starts + np.where(known, wanted, 0)
        if not self._unshifted:
            terms = self.log_probs(vectors)[:, columns]
        else:  # index vectors are unit length, so no logit can overflow exp: skip the per-attribute shift
            logits = np.asarray(vectors, np.float32) @ self.weights
            logits += self.bias
            terms = logits[:, columns] - np.log(np.add.reduceat(np.exp(logits), self._starts, axis=1))
        weights = np.where(np.asarray(changed, bool), self.changed, self.kept) * known
        return np.maximum(terms, LOG_FLOOR) @ weights.astype(np.float32)


def with_extra(hits: Hits, extra: Hits) -> Hits:
    """``hits`` followed by the items of ``extra`` it lacks: one pool of candidates to reorder."""
    seen = set(hits.ids)
    new = [n for n, i in enumerate(extra.ids) if i not in seen]
    if not new:
        return hits

    def joined(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
        return np.concatenate([mine, theirs[new]])

    return Hits(hits.ids + [extra.ids[n] for n in new], joined(hits.scores, extra.scores),
                joined(hits.labels, extra.labels), joined(hits.predicted, extra.predicted),
                joined(hits.confidence, extra.confidence))


def wanted_values(current: np.ndarray, attrs: np.ndarray, values: np.ndarray,
                  no_change: int) -> tuple[np.ndarray, np.ndarray]:
    """(wanted (Q, A), changed (Q, A) bool): the query's current values with the changes applied;
    ``attrs``/``values`` are (Q, C) with ``no_change`` in unused slots."""
    wanted = np.array(current, np.int64, copy=True)
    changed = np.zeros(wanted.shape, bool)
    rows = np.arange(len(wanted))
    for c in range(attrs.shape[1]):
        used = attrs[:, c] != no_change
        wanted[rows[used], attrs[used, c]] = values[used, c]
        changed[rows[used], attrs[used, c]] = True
    return wanted, changed

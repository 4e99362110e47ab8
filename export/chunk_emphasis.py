"""How much the changed attribute's chunk counts when chunk_replace ranks the gallery.

chunk_replace (the wanted value's mean chunk replaces the changed chunk) ranks by the plain sum of
per-chunk similarities, so the query's unchanged chunks, which still carry traces of its old
value (a men's shirt's articleType chunk resembles men's shirts), pull results back towards the
old value. FashionSearchNet weights each chunk for the changed attribute (its Eq. 6); here that
weight is one number c, the changed chunk's squared weight against 1 for the others, served by
the ``fsn`` family (``fashsdk.families.fsn``) with an (A, A) weight table of c on the diagonal.

c is chosen on the validation split from ``EMPHASIS_GRID``: the smallest c whose Top-30 is
within one standard error (paired, on the same queries) of the best c's. A larger c keeps fewer
of the unchanged attributes in the results, so among scores the split cannot tell apart the
least emphasis wins; c = 1 is plain chunk_replace. Fitting a full (A, A) table by the paper's
ranking loss (export/fsn_weights.py) was measured on the demo model and lost to this one number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fashsdk.eval.protocol import QuerySet, exact_topk, paired_lead, query_hits
from fashsdk.families.chunk_replace import ChunkReplace
from fashsdk.families.fsn import FashionSearchNetFamily
from fashsdk.schema import AttributeSchema

EMPHASIS_GRID = (1.0, 1.5, 2.0, 2.5, 3.0)
TOP_K = 30


def emphasis_weights(count: int, emphasis: float) -> np.ndarray:
    """The fsn family's (A, A) squared chunk weights: ``emphasis`` for the changed attribute's
    chunk (the diagonal), 1 for every other chunk."""
    if not emphasis >= 1.0:
        raise ValueError(f"chunk emphasis must be at least 1 (1 = plain chunk_replace), got {emphasis}")
    weights = np.ones((count, count), np.float32)
    np.fill_diagonal(weights, emphasis)
    return weights


@dataclass
class EmphasisChoice:
    """The chosen emphasis and, per grid value, the per-query Top-30 hits on the validation split."""

    emphasis: float
    hits: dict[float, np.ndarray]

    def top30(self, emphasis: float) -> float:
        hits = self.hits[emphasis]
        return float(hits.mean()) if len(hits) else 0.0

    def to_json(self) -> dict[str, object]:
        return {"chunk_emphasis": self.emphasis,
                "val_top30_by_chunk_emphasis": {str(c): round(self.top30(c), 4) for c in self.hits}}


def emphasis_family(schema: AttributeSchema, layout: Sequence[tuple[int, int]], table: np.ndarray,
                    emphasis: float) -> ChunkReplace:
    """chunk_replace over ``table`` with the changed chunk's squared weight ``emphasis``."""
    if emphasis == 1.0:
        return ChunkReplace(schema, layout, table)
    return FashionSearchNetFamily(schema, layout, table, emphasis_weights(len(schema.sizes), emphasis))


def choose_emphasis(schema: AttributeSchema, layout: Sequence[tuple[int, int]], table: np.ndarray,
                    embeddings: np.ndarray, codes: np.ndarray, queries: QuerySet,
                    grid: Sequence[float] = EMPHASIS_GRID) -> EmphasisChoice:
    """Top-30 of each emphasis on ``queries`` over the ``embeddings`` gallery (validation items),
    and the smallest emphasis within one paired standard error of the best."""
    if not len(grid) or min(grid) != 1.0:
        raise ValueError(f"the emphasis grid must include 1.0 (plain chunk_replace) as its least value, got {grid}")
    hits = {}
    for emphasis in sorted(grid):
        family = emphasis_family(schema, layout, table, emphasis)
        searched = family.change_batch(embeddings[queries.rows], codes[queries.rows], queries.attrs, queries.values)
        hits[float(emphasis)] = query_hits(exact_topk(searched, embeddings, TOP_K), codes, queries.targets, TOP_K)
    return EmphasisChoice(least_within_one_error(hits), hits)


def least_within_one_error(hits: dict[float, np.ndarray]) -> float:
    """The least emphasis whose hits (per query, the same queries for every emphasis) are behind
    the best emphasis' by at most one paired standard error."""
    best = max(hits, key=lambda c: (hits[c].mean() if len(hits[c]) else 0.0, -c))

    def close_to_best(emphasis: float) -> bool:
        deficit, error = paired_lead(hits[emphasis], hits[best])
        return deficit <= error

    return min(c for c in hits if close_to_best(c))

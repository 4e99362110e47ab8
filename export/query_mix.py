"""How an ADDE model's manipulation query is made: adde, the weighted chunk_replace, or a blend.

chunk_replace (the wanted value's mean chunk replaces the changed chunk) ranks by the plain sum of
per-chunk similarities, so the query's unchanged chunks, which still carry traces of its old
value (a men's shirt's articleType chunk resembles men's shirts), pull results back towards the
old value. FashionSearchNet weights each chunk for the changed attribute (its Eq. 6); here that
weight is one number c per changed attribute, the changed chunk's squared weight against 1 for
the others (the ``fsn`` family's (A, A) table with c on the diagonal). adde moves the whole
vector by its memory block instead, and the two fail on different queries, so the served query
is the blend (1 - b) q_adde + b q_fsn (``fashsdk.families.blend``; b = 0 is adde, b = 1 fsn).

(b, c) is the pair of ``BLEND_GRID`` x ``EMPHASIS_GRID`` with the best Top-30 on the validation
split's queries, one pair for every attribute. The bundle format holds a pair per attribute, but
choosing them per attribute was measured on the demo model and did not carry to the test split:
an attribute's best of 21 pairs on a few hundred queries is mostly noise, and the low emphases it
picked returned fewer results with the requested value. Fitting a full (A, A) weight table by
the paper's ranking loss (export/fsn_weights.py) also lost to this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fashsdk.eval.protocol import QuerySet, exact_topk, paired_lead, query_hits
from fashsdk.families.adde import Adde
from fashsdk.families.blend import blend_query
from fashsdk.families.chunk_replace import ChunkReplace
from fashsdk.families.fsn import FashionSearchNetFamily
from fashsdk.schema import AttributeSchema

EMPHASIS_GRID = (1.0, 1.5, 2.0, 2.5, 3.0)
BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
TOP_K = 30
Pair = tuple[float, float]  # (blend b, emphasis c)
ADDE_ONLY: Pair = (0.0, 1.0)  # b = 0: the emphasis does not matter


def emphasis_weights(count: int, emphasis: float | Sequence[float]) -> np.ndarray:
    """The fsn family's (A, A) squared chunk weights: ``emphasis`` (one number, or one per
    attribute) for the changed attribute's chunk (the diagonal), 1 for every other chunk."""
    diagonal = np.broadcast_to(np.asarray(emphasis, np.float32), (count,))
    if not (diagonal >= 1.0).all():
        raise ValueError(f"chunk emphasis must be at least 1 (1 = plain chunk_replace), got {emphasis}")
    weights = np.ones((count, count), np.float32)
    np.fill_diagonal(weights, diagonal)
    return weights


def emphasis_family(schema: AttributeSchema, layout: Sequence[tuple[int, int]], table: np.ndarray,
                    emphasis: float | Sequence[float]) -> ChunkReplace:
    """chunk_replace over ``table`` with the changed chunk's squared weight ``emphasis``."""
    if np.all(np.asarray(emphasis) == 1.0):
        return ChunkReplace(schema, layout, table)
    return FashionSearchNetFamily(schema, layout, table, emphasis_weights(len(schema.sizes), emphasis))


@dataclass
class QueryMix:
    """The chosen pair (blend b, emphasis c) and the validation hits (per query) of every grid pair."""

    pair: Pair
    grid: dict[Pair, np.ndarray]

    @property
    def hits(self) -> np.ndarray:
        return self.grid[self.pair]

    def top30(self, pair: Pair | None = None) -> float:
        hits = self.grid[self.pair if pair is None else pair]
        return float(hits.mean()) if len(hits) else 0.0

    def lead_over_adde(self) -> tuple[float, float]:
        """The chosen pair's Top-30 lead over adde on the same validation queries, and its standard error."""
        return paired_lead(self.grid[ADDE_ONLY], self.hits)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        lead, error = self.lead_over_adde()
        b, c = self.pair
        return {"query_mix": {name: {"blend": b, "chunk_emphasis": c} for name in names},
                "val_top30_mix": round(self.top30(), 4), "val_top30_mix_lead": lead, "val_top30_mix_lead_se": error,
                "val_top30_chunk_replace": round(self.top30((1.0, 1.0)), 4),
                "val_top30_by_mix": {f"b{b:g} x{c:g}": round(self.top30((b, c)), 4) for b, c in self.grid}}


def mix_arrays(best: dict[str, Any], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(blend, emphasis) per attribute from a training report's ``query_mix``; None when training
    chose none (not an ADDE model)."""
    mix = best.get("query_mix")
    if mix is None:
        return None
    return (np.array([mix[n]["blend"] for n in names], np.float32),
            np.array([mix[n]["chunk_emphasis"] for n in names], np.float32))


def choose_query_mix(schema: AttributeSchema, layout: Sequence[tuple[int, int]], prototypes: np.ndarray,
                     table: np.ndarray, embeddings: np.ndarray, codes: np.ndarray, queries: QuerySet,
                     blends: Sequence[float] = BLEND_GRID, emphases: Sequence[float] = EMPHASIS_GRID) -> QueryMix:
    """Top-30 of every (b, c) on ``queries`` over the ``embeddings`` gallery (validation items), and
    the best pair."""
    if 0.0 not in blends or 1.0 not in emphases:
        raise ValueError(f"the grids must hold blend 0 (adde) and emphasis 1 (plain chunk_replace); got {blends}, "
                         f"{emphases}")
    changed = (embeddings[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    by_adde = Adde(schema, prototypes).change_batch(*changed)
    grid: dict[Pair, np.ndarray] = {}
    for c in sorted(emphases):
        by_fsn = emphasis_family(schema, layout, table, c).change_batch(*changed)
        for b in sorted(blends):
            if b == 0.0 and c != 1.0:
                continue
            searched = blend_query(by_adde, by_fsn, b)
            grid[(float(b), float(c))] = query_hits(exact_topk(searched, embeddings, TOP_K), codes, queries.targets,
                                                    TOP_K)
    return QueryMix(best_pair(grid), grid)


def best_pair(grid: dict[Pair, np.ndarray]) -> Pair:
    """The pair with the most hits; ties go to the least emphasis, then the least blend (adde)."""
    return max(grid, key=lambda pair: (int(grid[pair].sum()), -pair[1], -pair[0]))

"""blend: adde's query and the weighted chunk_replace (fsn) query, mixed per changed attribute.

Over one ADDE model the two manipulations fail on different queries: adde's memory block moves
the whole vector (it leads where an attribute is spread over every chunk, such as gender), the
replaced chunk sets the wanted value exactly (it leads on article type and colour). Searching
with q = normalise((1 - b) q_adde + b q_fsn) ranks by (1 - b) times adde's cosine plus b times
fsn's (both are unit vectors), so one index serves the mix. ``blend_weights.npy`` (A,) holds b
for a change of each attribute, chosen on the validation split with fsn's chunk weights
(export/query_mix.py); several changed attributes use the mean of their b, as fsn uses the mean
of their weight columns. b = 0 is adde, b = 1 is fsn.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import AttributeSchema
from .adde import Adde
from .base import NO_CHANGE, check_change_batch, normalized
from .chunk_replace import checked_value_table
from .fsn import ATTRIBUTE_WEIGHTS, FashionSearchNetFamily

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "blend"
BLEND_WEIGHTS = "blend_weights"  # the family file's role in the manifest


class Blend:
    """(1 - b) adde + b fsn, b per changed attribute."""

    name = NAME

    def __init__(self, adde: Adde, fsn: FashionSearchNetFamily, blend: np.ndarray) -> None:
        blend = np.asarray(blend, np.float32)
        count = len(adde.schema.sizes)
        if blend.shape != (count,) or not np.isfinite(blend).all() or (blend < 0).any() or (blend > 1).any():
            raise ValueError(f"blend weights must be ({count},) values between 0 and 1; got shape {blend.shape}")
        self.schema: AttributeSchema = adde.schema
        self.adde, self.fsn, self.blend = adde, fsn, blend

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "Blend":
        adde = Adde.from_bundle(bundle)
        try:
            fsn = FashionSearchNetFamily(bundle.schema, list(bundle.layout.values()), checked_value_table(bundle),
                                         bundle.family_array(ATTRIBUTE_WEIGHTS))
            return cls(adde, fsn, bundle.family_array(BLEND_WEIGHTS))
        except ValueError as exc:
            raise BundleError(f"bundle {str(bundle.directory)!r}: {exc}; export the bundle again") from None

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        # the hot path: both queries built in place with dot-product norms (numpy call overhead dominates here)
        by_adde = self.adde.change_one(vector, current, change)
        if not change:
            return by_adde
        by_fsn = np.array(vector, dtype=np.float32)
        table, layout, offsets = self.fsn.table, self.fsn.layout, self.fsn._offsets
        for a, v in change.items():
            start, stop = layout[a]
            by_fsn[start:stop] = table[offsets[a] + v, start:stop]
        by_fsn *= self.fsn._scales[a] if len(change) == 1 else self.fsn._scales[list(change)].mean(0)
        b = float(self.blend[a]) if len(change) == 1 else float(self.blend[list(change)].mean())
        # fsn's vector is normalised twice (after the replacement, after the weighting): only the second scale matters
        by_fsn *= np.float32(b / max(math.sqrt(float(np.dot(by_fsn, by_fsn))), 1e-12))
        by_fsn += np.float32(1.0 - b) * by_adde
        by_fsn *= np.float32(1.0 / max(math.sqrt(float(np.dot(by_fsn, by_fsn))), 1e-12))
        return by_fsn

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        vectors, current, attrs, values = check_change_batch(vectors, current, attrs, values, self.schema.sizes)
        by_adde = self.adde.change_batch(vectors, current, attrs, values)
        by_fsn = self.fsn.change_batch(vectors, current, attrs, values)
        used = attrs != NO_CHANGE
        counts = used.sum(1)
        b = np.where(used, self.blend[np.where(used, attrs, 0)], 0.0).sum(1) / np.maximum(counts, 1)
        mixed = normalized((1.0 - b)[:, None] * by_adde + b[:, None] * by_fsn)
        return np.where(counts[:, None] > 0, mixed, by_adde).astype(np.float32)


def blend_query(adde_vectors: np.ndarray, fsn_vectors: np.ndarray, blend: float) -> np.ndarray:
    """The searched vectors of one b for queries both families already changed (validation grids)."""
    return normalized((1.0 - blend) * adde_vectors + blend * fsn_vectors).astype(np.float32)

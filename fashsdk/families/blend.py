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

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import AttributeSchema
from .adde import Adde
from .base import NO_CHANGE, check_change_batch, normalized, scale_to_length
from .chunk_replace import checked_value_table
from .fsn import ATTRIBUTE_WEIGHTS, FashionSearchNetFamily

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "blend"
BLEND_WEIGHTS = "blend_weights"  # the family file's role in the manifest


class Blend:
    """(1 - b) adde + b fsn, b per changed attribute (the mean of b over several changed ones)."""

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
        by_adde = self.adde.change_one(vector, current, change)
        if not change:
            return by_adde
        b = float(self.blend[next(iter(change))]) if len(change) == 1 else float(self.blend[list(change)].mean())
        # fsn's query, scaled to length b in place (the hot path: numpy call overhead dominates here)
        out = self.fsn.replaced(vector, change)
        out *= self.fsn.scale(change)
        scale_to_length(out, b)
        out += np.float32(1.0 - b) * by_adde
        return scale_to_length(out)

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        vectors, current, attrs, values = check_change_batch(vectors, current, attrs, values, self.schema.sizes)
        by_adde = self.adde.change_batch(vectors, current, attrs, values)
        by_fsn = self.fsn.change_batch(vectors, current, attrs, values)
        used = attrs != NO_CHANGE
        counts = used.sum(1)
        b = np.where(used, self.blend[np.where(used, attrs, 0)], 0.0).sum(1) / np.maximum(counts, 1)
        return np.where(counts[:, None] > 0, blend_query(by_adde, by_fsn, b), by_adde).astype(np.float32)


def blend_query(adde_vectors: np.ndarray, fsn_vectors: np.ndarray, blend: float | np.ndarray) -> np.ndarray:
    """normalise((1 - b) adde + b fsn) for queries both families already changed; ``blend`` is one b
    or one per query."""
    b = np.reshape(np.asarray(blend, np.float32), (-1, 1))
    return normalized((1.0 - b) * adde_vectors + b * fsn_vectors).astype(np.float32)

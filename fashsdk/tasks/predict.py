"""Attribute prediction: the heads' most likely values with their probabilities, for images
(from the model) and for indexed ids (the stored label, else the prediction made at indexing)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..index import IndexBackend
from ..schema import AttributeSchema
from .search import Encode


@dataclass(frozen=True)
class AttributePrediction:
    value: str
    probability: float | None  # None: a stored label, or a prediction whose probability was not recorded
    source: str = "model"  # "model" (just now), "label" (stored), "indexed" (predicted when the item was indexed)


Prediction = dict[str, list[AttributePrediction]]


def predict(index: IndexBackend | None, schema: AttributeSchema, encode: Encode, items: Sequence[object],
            top: int = 3) -> list[Prediction]:
    """One prediction per item: images through the model (``top`` values per attribute), indexed ids
    from what the index holds (their label, else the value predicted when they were indexed)."""
    out: list[Prediction | None] = [None] * len(items)
    images = []
    for n, item in enumerate(items):
        if index is not None and isinstance(item, (str, int, np.integer)) and not isinstance(item, bool) \
                and item in index:
            out[n] = _indexed(index, schema, item)
        else:  # anything else is an image: decoding says precisely what is wrong with it
            images.append(n)
    if images:
        logits = encode([items[n] for n in images]).logits
        for n, row in zip(images, logits):
            out[n] = _from_logits(schema, row, top)
    return out  # type: ignore[return-value]


def _from_logits(schema: AttributeSchema, logits: np.ndarray, top: int) -> Prediction:
    result: Prediction = {}
    for a, (offset, size) in enumerate(zip(schema.offsets, schema.sizes)):
        block = logits[offset:offset + size].astype(np.float64)
        probs = np.exp(block - block.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[:top]
        result[schema.names[a]] = [AttributePrediction(schema.attributes[a].values[i], round(float(probs[i]), 4))
                                   for i in order.tolist()]
    return result


def _indexed(index: IndexBackend, schema: AttributeSchema, item_id: object) -> Prediction:
    hits = index.hits_of([item_id])[0]
    result: Prediction = {}
    for a, attr in enumerate(schema.attributes):
        label, guess, p = int(hits.labels[0, a]), int(hits.predicted[0, a]), float(hits.confidence[0, a])
        if label >= 0:
            result[attr.name] = [AttributePrediction(attr.values[label], None, "label")]
        elif guess >= 0:
            result[attr.name] = [AttributePrediction(attr.values[guess], None if p != p else round(p, 4), "indexed")]
        else:
            result[attr.name] = []
    return result


SINGLE = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, np.ndarray)

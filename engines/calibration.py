"""Real catalog images for calibrating and checking reduced-precision engines.

Calibration images come from the training split (seeded), check images from a split the
model never trained on, so the numbers an engine records are not tuned on what it is
judged by. Images are decoded with the bundle's own preprocessing (fashsdk.sources.preprocess).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fashsdk.errors import CatalogError
from fashsdk.sources.catalog import read_rows
from fashsdk.sources.images import load_images
from fashsdk.sources.preprocess import PreprocessSpec, decode_resized, normalize


def sample_ids(labels: str | Path, count: int, *, split: str | None = "train", seed: int = 0,
               id_column: str = "id", split_column: str = "split", exclude: Sequence[str] = ()) -> list[str]:
    """``count`` ids drawn without replacement (fixed seed) from ``split`` of a labels CSV.

    ``split=None`` (or a CSV without the split column) draws from every row.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    header, rows = read_rows(labels, id_column)
    if split is not None and split_column in header:
        rows = [r for r in rows if (r.get(split_column) or "").strip() == split]
        if not rows:
            raise CatalogError(f"labels file {str(labels)!r} has no rows with {split_column}={split!r}")
    skip = set(exclude)
    ids = [r[id_column].strip() for r in rows if r[id_column].strip() not in skip]
    if not ids:
        raise CatalogError(f"labels file {str(labels)!r} has no usable rows to sample from")
    pick = np.random.default_rng(seed).choice(len(ids), min(count, len(ids)), replace=False)
    return [ids[i] for i in np.sort(pick)]


def ids_digest(ids: Sequence[str]) -> str:
    """A short fingerprint of an id list, recorded so a calibration set can be reproduced."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def load_pixels(images: str | Path | Sequence[str | Path], ids: Sequence[str], spec: PreprocessSpec) -> np.ndarray:
    """Decoded, resized uint8 pixels (N, H, W, 3) for ``ids``, in order."""
    encoded = load_images(images, list(ids))
    return np.stack([decode_resized(encoded[i], spec) for i in ids])


def batches(pixels: np.ndarray, spec: PreprocessSpec, batch_size: int = 32) -> Iterator[np.ndarray]:
    """Normalised float32 batches (n, 3, H, W) of uint8 pixels."""
    for s in range(0, len(pixels), batch_size):
        yield normalize(pixels[s:s + batch_size], spec)


def even_batch_size(n: int, largest: int = 32, smallest: int = 8) -> int:
    """A batch size that splits ``n`` images into equal batches (histogram calibrators need
    equal shapes); when none between ``smallest`` and ``largest`` exists the tail is dropped."""
    for size in range(min(largest, n), smallest - 1, -1):
        if n % size == 0:
            return size
    return min(largest, n)


class CalibrationReader:
    """An onnxruntime.quantization CalibrationDataReader over real, preprocessed images.

    Every batch has the same size (see ``even_batch_size``); ``used`` says how many images
    that covers.
    """

    def __init__(self, pixels: np.ndarray, spec: PreprocessSpec, input_name: str, batch_size: int | None = None) -> None:
        batch_size = batch_size or even_batch_size(len(pixels))
        self.used = len(pixels) - len(pixels) % batch_size
        pixels = pixels[:self.used]
        self.pixels, self.spec, self.input_name, self.batch_size = pixels, spec, input_name, batch_size
        self._batches: Iterator[np.ndarray] = batches(pixels, spec, batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = batches(self.pixels, self.spec, self.batch_size)

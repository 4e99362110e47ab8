"""Catalog images decoded once into memory (uint8), batches sampled by label combination.

Decoding uses fashsdk.sources.preprocess, the same code the runtime uses, so training pixels and
production pixels cannot drift apart.
"""
from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from fashsdk.eval.protocol import combination_keys
from fashsdk.files import atomic_save_npy, load_npy
from fashsdk.sources.catalog import Catalog
from fashsdk.sources.images import load_images
from fashsdk.sources.preprocess import PreprocessSpec, decode_resized


@dataclass
class ImageSet:
    """Decoded pixels (n, H, W, 3) uint8 aligned with a catalog's rows."""

    catalog: Catalog
    pixels: np.ndarray

    def subset(self, rows: np.ndarray) -> "ImageSet":
        return ImageSet(self.catalog.subset(rows), self.pixels[rows])


def decode_catalog(catalog: Catalog, images: str | Path | Sequence[str | Path], spec: PreprocessSpec,
                   cache_dir: Path | None = None, workers: int = 2) -> ImageSet:
    """Decode every catalog image at the model's input size (cached as .npy if asked)."""
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(("|".join(catalog.ids) + repr(spec.to_json()) + str(images)).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"pixels-{spec.height}x{spec.width}-{key}.npy"
        if cache.is_file():
            pixels = load_npy(cache, "pixel cache", RuntimeError)
            if pixels.shape == (len(catalog), spec.height, spec.width, 3):
                return ImageSet(catalog, pixels)
    encoded = load_images(images, catalog.ids)
    pixels = np.empty((len(catalog), spec.height, spec.width, 3), np.uint8)

    def work(i: int) -> None:
        pixels[i] = decode_resized(encoded[catalog.ids[i]], spec)

    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(work, range(len(catalog)), chunksize=256), total=len(catalog),
                  desc="decode images", unit="img", file=sys.stdout, mininterval=2))
    if cache is not None:
        atomic_save_npy(cache, pixels)
    return ImageSet(catalog, pixels)


def split_validation(catalog: Catalog, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) carved from the training rows by a seeded shuffle."""
    rows = np.random.default_rng(seed).permutation(len(catalog))
    n_val = max(1, int(round(len(rows) * fraction)))
    return np.sort(rows[n_val:]), np.sort(rows[:n_val])


class CombinationSampler:
    """Batches of P label combinations x K images (so anchors have positives) plus
    ``extra`` items drawn at random (so the heads see the natural, diverse distribution:
    P x K alone gives only P distinct looks per batch and the classifiers learn slowly)."""

    def __init__(self, codes: np.ndarray, sizes: Sequence[int], p: int = 16, k: int = 4, seed: int = 0,
                 power: float = 0.5, extra: int = 64) -> None:
        keys = combination_keys(codes, sizes)
        order = np.argsort(keys, kind="stable")
        uniq, starts = np.unique(keys[order], return_index=True)
        groups = np.split(order, starts[1:])
        self.groups = [g for g in groups if len(g) >= 2]
        # combinations drawn with probability ~ size**power: 0 = uniform over combinations
        # (rare ones dominate and the heads learn a skewed prior), 1 = natural frequency
        weights = np.array([len(g) for g in self.groups], dtype=np.float64) ** power
        self.weights = weights / weights.sum()
        self.p, self.k, self.extra = p, k, extra
        self.rng = np.random.default_rng(seed)
        self.n_items = len(codes)

    def __len__(self) -> int:
        return max(1, self.n_items // (self.p * self.k + self.extra))

    def __iter__(self):
        for _ in range(len(self)):
            chosen = self.rng.choice(len(self.groups), size=min(self.p, len(self.groups)), replace=False,
                                     p=self.weights)
            rows = [self.rng.choice(self.groups[g], size=self.k, replace=len(self.groups[g]) < self.k) for g in chosen]
            rows.append(self.rng.integers(0, self.n_items, self.extra))
            yield np.concatenate(rows)


SHIFT_PAD = 4  # pixels of random translation in training


def to_tensor(pixels: np.ndarray, spec: PreprocessSpec, augment: bool, generator: torch.Generator | None = None,
              shift_per_sample: bool = False) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), channels_last; flip/shift if ``augment``.

    Normalisation is the same arithmetic as fashsdk.preprocess.normalize. No colour
    jitter: colour is a label. The shift (up to 4 px, edges replicated) is one per
    batch, or one per image with ``shift_per_sample``, so that the images of one
    combination group in a P x K batch are not all moved alike.
    """
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0
    x = (x - mean) / std
    if augment:
        n, _, h, w = x.shape
        flip = torch.rand(n, generator=generator) < 0.5
        x[flip] = x[flip].flip(3)
        pad = SHIFT_PAD
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        if shift_per_sample:
            dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator)
            rows = (dy + torch.arange(h)).view(n, 1, h, 1)
            cols = (dx + torch.arange(w)).view(n, 1, 1, w)
            x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        else:
            dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
            x = padded[:, :, dy:dy + h, dx:dx + w]
    return x.contiguous(memory_format=torch.channels_last)

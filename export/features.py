"""Where training gets its backbone features from.

- ``PixelFeatures``: decoded pixels through the whole backbone, augmented (flip, shift) in
  training (the from-scratch backbones).
- ``TrunkFeatures``: a pretrained backbone's frozen trunk runs once over every image (ONNX
  Runtime, all cores) and its activations are kept in float16; training runs only the top.
  Augmentation is precomputed as extra variants per image (flipped; flipped or not with a
  random shift), one drawn per image per step. A 35k-image catalog at 128x96 keeps about
  0.4 GB per variant at split 11.
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fashsdk.sources.preprocess import PreprocessSpec, normalize
from fashsdk.system import cpu_session

from .data import ImageSet, to_tensor


class TrainingFeatures(Protocol):
    def batch(self, model: nn.Module, rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Training features (augmented, with gradients through the trainable backbone) of ``rows``."""
        ...

    def features(self, model: nn.Module, rows: np.ndarray | None = None, flip: bool = False) -> torch.Tensor:
        """Evaluation features (no augmentation, no gradients) of ``rows`` (all when None)."""
        ...


class PixelFeatures:
    def __init__(self, images: ImageSet, spec: PreprocessSpec, shift_per_sample: bool = False) -> None:
        self.images, self.spec, self.shift_per_sample = images, spec, shift_per_sample

    def batch(self, model: nn.Module, rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        x = to_tensor(self.images.pixels[rows], self.spec, augment=True, generator=generator,
                      shift_per_sample=self.shift_per_sample)
        return model.backbone(x)

    @torch.no_grad()
    def features(self, model: nn.Module, rows: np.ndarray | None = None, flip: bool = False,
                 batch: int = 256, desc: str | None = None) -> torch.Tensor:
        model.eval()
        pixels = self.images.pixels if rows is None else self.images.pixels[rows]
        out = []
        for s in tqdm(range(0, len(pixels), batch), desc=desc, disable=desc is None, file=sys.stdout, mininterval=2):
            x = to_tensor(pixels[s:s + batch], self.spec, augment=False)
            out.append(model.backbone(x.flip(3) if flip else x))
        return torch.cat(out) if out else torch.zeros(0, model.backbone.out_features)


class TrunkFeatures:
    """Frozen-trunk activations (N, V, C, H, W) float16: variant 0 plain, 1 flipped, 2+ shifted."""

    def __init__(self, activations: torch.Tensor) -> None:
        self.activations = activations

    @classmethod
    def build(cls, trunk: nn.Module, images: ImageSet, spec: PreprocessSpec, variants: int = 1, seed: int = 0,
              threads: int | None = None, desc: str = "trunk activations") -> "TrunkFeatures":
        session, name = _trunk_session(trunk, spec, threads)
        generator = torch.Generator().manual_seed(seed)
        pixels = images.pixels
        out: torch.Tensor | None = None
        step = 256
        bar = tqdm(total=len(pixels) * variants, desc=desc, unit="img", file=sys.stdout, mininterval=5)
        for s in range(0, len(pixels), step):
            chunk = pixels[s:s + step]
            for v in range(variants):
                if v == 0:
                    x = normalize(chunk, spec)
                elif v == 1:
                    x = np.ascontiguousarray(normalize(chunk, spec)[:, :, :, ::-1])
                else:
                    x = to_tensor(chunk, spec, augment=True, generator=generator, shift_per_sample=True)
                    x = np.ascontiguousarray(x.contiguous().numpy())
                act = torch.from_numpy(session.run(None, {name: x})[0]).to(torch.float16)
                if out is None:
                    out = torch.empty((len(pixels), variants, *act.shape[1:]), dtype=torch.float16)
                out[s:s + len(chunk), v] = act
                bar.update(len(chunk))
        bar.close()
        assert out is not None
        return cls(out)

    def batch(self, model: nn.Module, rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        variant = torch.randint(0, self.activations.shape[1], (len(rows),), generator=generator)
        x = self.activations[torch.from_numpy(rows), variant].float()
        return model.backbone.top(x.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def features(self, model: nn.Module, rows: np.ndarray | None = None, flip: bool = False,
                 batch: int = 512, desc: str | None = None) -> torch.Tensor:
        model.eval()
        variant = 1 if flip and self.activations.shape[1] > 1 else 0
        acts = self.activations[:, variant] if rows is None else self.activations[torch.from_numpy(rows), variant]
        out = []
        for s in tqdm(range(0, len(acts), batch), desc=desc, disable=desc is None, file=sys.stdout, mininterval=2):
            out.append(model.backbone.top(acts[s:s + batch].float().contiguous(memory_format=torch.channels_last)))
        return torch.cat(out) if out else torch.zeros(0, model.backbone.out_features)


def _trunk_session(trunk: nn.Module, spec: PreprocessSpec, threads: int | None) -> tuple[object, str]:
    """The frozen trunk as an ONNX Runtime session (several times faster than eager PyTorch on CPU)."""
    trunk = trunk.eval()
    example = torch.zeros(2, 3, spec.height, spec.width)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "trunk.onnx"
        torch.onnx.export(trunk, (example,), str(path), input_names=["images"], output_names=["activations"],
                          dynamic_axes={"images": {0: "batch"}, "activations": {0: "batch"}}, opset_version=18,
                          dynamo=False)
        session = cpu_session(path.read_bytes(), threads)
    return session, "images"


def features_for(model: nn.Module, images: ImageSet, spec: PreprocessSpec, variants: int, seed: int,
                 shift_per_sample: bool, desc: str) -> TrainingFeatures:
    """Trunk activations for a backbone with a frozen trunk, pixels otherwise."""
    trunk = getattr(model.backbone, "trunk", None)
    if trunk is not None and len(trunk):
        return TrunkFeatures.build(trunk, images, spec, variants, seed, desc=desc)
    return PixelFeatures(images, spec, shift_per_sample)

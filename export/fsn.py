"""FashionSearchNet (paper 004): attribute activation maps, a box per attribute, region-of-interest
pooling into per-attribute fully connected layers, and attribute-weighted global representations.

Per image (Sec. 3, sizes scaled to the catalog's photos):
trunk -> conv6 -> conv7 (C = 256, ReLU) -> GAP -> one linear classifier per attribute (Eq. 1);
for attribute a, the activation map of its predicted value M_a = sum_k w_a(k, c) conv7_k (Eq. 2),
min-max scaled, thresholded at 20% of its maximum, a box around the pixels above it; RoI Align
of conv7 inside the box (3x3 bins) -> FC 256 -> ReLU -> fc10_a (d). The chunks fc10_a are the
embedding; a change replaces the changed attribute's chunk by the wanted value's mean chunk over
training images (the paper's memory of attribute representations, served as chunk_replace), and
the global representation for a changed attribute a* weights chunk b by lambda_{b,a*} (Eq. 6).

Choices where the paper is silent, for a model that trains on 2 CPU cores:
- The trunk is EfficientNet-Lite0 (ImageNet-pretrained) through block 10 (stride 16, 112
  channels) instead of AlexNet conv1-5; blocks before ``lite_split`` are frozen and their
  activations computed once in training. conv6 and conv7 are 3x3 convolutions with batch norm.
- The box covers every pixel above the threshold (the paper: the largest connected region;
  connected components have no ONNX operator). A map that is flat everywhere gives the whole image.
- RoI Align is bilinear sampling (2x2 points per bin, ONNX GridSample, border clamping) and an
  average per bin: the arithmetic of ONNX RoiAlign (mode avg, half_pixel, sampling_ratio 2),
  written from standard operators so the graph exports without a custom translation. It pools
  conv7 (the map the boxes come from). Boxes are detached: gradients reach the features, not the box.
- Ranking: the soft-triplet function of Eqs. 3-5, d+ = sigmoid(|a - p| - |a - n|), per attribute
  on its normalised chunk, a random positive sharing the anchor's value and a random negative.
- Eq. 6's projection W_a* is the identity: the global representation is the lambda-weighted
  concatenation, so every manipulated attribute searches the same index (the weighting is exact
  on the query side, see fashsdk.families.fsn). lambda is fitted after stage 1 with the global
  ranking loss of Eq. 7 on frozen training features (export/fsn_weights.py), not jointly.

``fsn_localize=False`` is the paper's ablation without localisation (the box is the whole map).
forward(images) -> (embedding (N, A*d), logits (N, J), boxes (N, A, 4) as x0, y0, x1, y1 in input pixels).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import LiteBackbone, _conv_bn
from .models import ADDE, ModelConfig

if TYPE_CHECKING:
    from fashsdk.families.base import Family
    from fashsdk.schema import AttributeSchema

MAP_BLOCKS = 11  # Lite0 blocks 0-10: stride 16, 112 channels
CONV7_CHANNELS = 256
POOLED = 3  # RoI Align output bins per side
SAMPLES = 2  # bilinear samples per bin per side (RoiAlign's sampling_ratio)
HIDDEN = 256
THRESHOLD = 0.2  # of the activation map's maximum (Sec. 3)


class FsnBackbone(nn.Module):
    """Frozen Lite0 trunk (``trunk``, cached in training) and the fine-tuned rest up to conv7 (``top``),
    which returns the conv7 map (N, C, h, w): the model pools it itself."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not 1 <= config.lite_split <= MAP_BLOCKS:
            raise ValueError(f"FashionSearchNet fine-tunes Lite0 blocks from --lite-split up to block "
                             f"{MAP_BLOCKS - 1}; "
                             f"got --lite-split {config.lite_split}: use 1-{MAP_BLOCKS} (default {MAP_BLOCKS})")
        lite = LiteBackbone(config.lite_split, config.pretrained)
        blocks = list(lite.top.children())[:MAP_BLOCKS - config.lite_split]
        self.trunk = lite.trunk.eval()
        self.top = nn.Sequential(*blocks, _conv_bn(112, CONV7_CHANNELS, 3), _conv_bn(CONV7_CHANNELS, CONV7_CHANNELS, 3))
        self.out_features = CONV7_CHANNELS

    def train(self, mode: bool = True) -> "FsnBackbone":
        super().train(mode)
        self.trunk.eval()  # frozen: ImageNet's batch-norm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x))


def activation_boxes(maps: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor,
                     localize: bool = True) -> torch.Tensor:
    """(N, C, h, w) conv7, (n, C) one attribute's classifier weights, (N, n) its logits ->
    (N, 4) box x0, y0, x1, y1 in map cells (x1, y1 exclusive) around the predicted value's map."""
    n, _, h, w = maps.shape
    if not localize:
        return maps.new_tensor([0.0, 0.0, w, h]).expand(n, 4)
    cam = torch.einsum("nc,nchw->nhw", weights[logits.argmax(1)], maps)  # Eq. 2
    low = cam.amin(dim=(1, 2), keepdim=True)
    cam = (cam - low) / (cam.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    keep = cam >= THRESHOLD * cam.amax(dim=(1, 2), keepdim=True)  # a flat map (all 0) keeps every pixel
    rows, cols = keep.any(dim=2), keep.any(dim=1)
    ys = torch.arange(h, device=maps.device, dtype=maps.dtype).expand(n, h)
    xs = torch.arange(w, device=maps.device, dtype=maps.dtype).expand(n, w)
    x0 = torch.where(cols, xs, float(w)).amin(1)
    x1 = torch.where(cols, xs, -1.0).amax(1) + 1
    y0 = torch.where(rows, ys, float(h)).amin(1)
    y1 = torch.where(rows, ys, -1.0).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], dim=1)


def roi_align(maps: torch.Tensor, boxes: torch.Tensor, pooled: int = POOLED, samples: int = SAMPLES) -> torch.Tensor:
    """(N, C, h, w) maps, (N, B, 4) boxes in map cells -> (N, B, C, pooled, pooled): per bin, the mean of
    samples x samples bilinear samples at the sub-bin centres (ONNX RoiAlign, avg, half_pixel)."""
    n, c, h, w = maps.shape
    b = boxes.shape[1]
    steps = (torch.arange(pooled * samples, device=maps.device, dtype=maps.dtype) + 0.5) / (pooled * samples)
    x0, y0, x1, y1 = boxes.unbind(-1)  # (N, B) each
    xs = x0[..., None] + (x1 - x0)[..., None] * steps  # (N, B, P): continuous coordinates, cell i spans [i, i+1)
    ys = y0[..., None] + (y1 - y0)[..., None] * steps
    gx = (2 * xs / w - 1)[:, :, None, :].expand(n, b, len(steps), len(steps))  # grid_sample, align_corners=False
    gy = (2 * ys / h - 1)[:, :, :, None].expand(n, b, len(steps), len(steps))
    grid = torch.stack([gx, gy], dim=-1)  # (N, B, P, P, 2)
    grid = grid.permute(0, 2, 1, 3, 4).reshape(n, len(steps), b * len(steps), 2)  # the B boxes side by side
    sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    binned = F.avg_pool2d(sampled, samples)  # (N, C, pooled, B * pooled)
    return binned.view(n, c, pooled, b, pooled).permute(0, 3, 1, 2, 4)


class FashionSearchNet(ADDE):
    """FashionSearchNet behind ADDE's interface (same training loop, memory = value means)."""

    output_names = ("embedding", "logits", "boxes")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        channels = self.backbone.out_features
        self.heads = nn.ModuleList(nn.Linear(channels, n) for n in config.attribute_sizes)  # Eq. 1, on GAP(conv7)
        # lambda_{b, a*} of Eq. 6 (row b scales chunk b when a* changes); fitted after stage 1
        self.attribute_weights = nn.Parameter(torch.ones(len(config.attribute_sizes), len(config.attribute_sizes)),
                                              requires_grad=False)

    def _make_backbone(self, config: ModelConfig) -> nn.Module:
        return FsnBackbone(config)

    def _make_learners(self, config: ModelConfig) -> nn.ModuleList:
        inputs = self.backbone.out_features * POOLED * POOLED
        return nn.ModuleList(nn.Sequential(nn.Flatten(), nn.Linear(inputs, HIDDEN), nn.ReLU(inplace=True),
                                           nn.Linear(HIDDEN, config.dim)) for _ in config.attribute_sizes)

    def localized(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """conv7 maps -> (logits (N, J), boxes (N, A, 4) in map cells, chunks fc10_a)."""
        logits = [head(maps.mean(dim=(2, 3))) for head in self.heads]
        boxes = torch.stack([activation_boxes(maps, head.weight, lg, self.config.fsn_localize).detach()
                             for head, lg in zip(self.heads, logits)], dim=1)
        pooled = roi_align(maps, boxes)
        chunks = [learner(pooled[:, a]) for a, learner in enumerate(self.learners)]
        return torch.cat(logits, dim=1), boxes, chunks

    def attribute_chunks(self, features: torch.Tensor) -> list[torch.Tensor]:
        return self.localized(features)[2]

    def head_outputs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        logits, _, chunks = self.localized(features)
        return self.embedding_of(chunks), logits, chunks

    def forward(self, images: torch.Tensor  # type: ignore[override]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.backbone(images)
        logits, boxes, chunks = self.localized(maps)
        scale = boxes.new_tensor([images.shape[3] / maps.shape[3], images.shape[2] / maps.shape[2]]).repeat(2)
        return self.embedding_of(chunks), logits, boxes * scale

    def attribute_ranking_loss(self, embedding: torch.Tensor, codes: torch.Tensor, margin: float,
                               generator: torch.Generator) -> torch.Tensor:
        """Eq. 5: per attribute, the soft triplet d+ on its normalised chunk (margin unused)."""
        from .losses import soft_triplets

        return soft_triplets(embedding, codes, self.config.dim, generator)

    def query_family(self, schema: "AttributeSchema") -> "Family":
        from fashsdk.families.fsn import FashionSearchNetFamily

        d = self.config.dim
        layout = [(a * d, (a + 1) * d) for a in range(len(schema.sizes))]
        return FashionSearchNetFamily(schema, layout, self.memory.detach().numpy().T,
                                      self.attribute_weights.detach().numpy())

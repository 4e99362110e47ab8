"""ADDE: backbone (backbones.py) -> one learner per attribute -> heads, plus the memory block."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import make_backbone


@dataclass
class ModelConfig:
    backbone: str = "compact"
    attribute_sizes: list[int] = field(default_factory=list)
    dim: int = 64  # d, per attribute
    width: int = 32  # compact backbone base width
    height_px: int = 80
    width_px: int = 64
    lite_split: int = 11  # efficientnet-lite0: blocks before this one are frozen (and cached in training)
    pretrained: bool = True  # efficientnet-lite0: ImageNet weights (False: random, for tests)
    chunk_norm: bool = True  # each attribute chunk unit-length, scaled by 1/sqrt(A) (False: the paper's one norm)

    def to_json(self) -> dict:
        return asdict(self)


class ADDE(nn.Module):
    """Attribute-driven disentangled encoder with a memory block for manipulation.

    forward(images) -> (L2-normalised embedding (N, A*d), logits (N, J)); this is exactly
    the exported ONNX signature. The memory block (A*d, J) is exported as prototypes.npy and
    applied by ``fashsdk.families.adde`` (training uses that same function).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = make_backbone(config)
        feat, d, sizes = self.backbone.out_features, config.dim, config.attribute_sizes
        self.learners = nn.ModuleList(
            nn.Sequential(nn.Linear(feat, d), nn.ReLU(inplace=True), nn.Linear(d, d)) for _ in sizes)
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in sizes)
        self.memory = nn.Parameter(torch.zeros(d * len(sizes), sum(sizes)))
        self.register_buffer("offblock_mask", self._offblock_mask(sizes, d), persistent=False)

    @staticmethod
    def _offblock_mask(sizes: Sequence[int], d: int) -> torch.Tensor:
        mask = torch.ones(d * len(sizes), sum(sizes))
        col = 0
        for a, n in enumerate(sizes):
            mask[a * d:(a + 1) * d, col:col + n] = 0
            col += n
        return mask

    def head_outputs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Backbone features -> (normalised embedding, logits, raw chunks)."""
        chunks = [learner(features) for learner in self.learners]
        logits = torch.cat([head(c) for head, c in zip(self.heads, chunks)], dim=1)
        if self.config.chunk_norm:  # every attribute gets 1/A of the squared norm: none can drown the others
            parts = [F.normalize(c, dim=1) for c in chunks]
            embedding = torch.cat(parts, dim=1) / len(parts) ** 0.5
        else:
            embedding = F.normalize(torch.cat(chunks, dim=1), dim=1)
        return embedding, logits, chunks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits, _ = self.head_outputs(self.backbone(images))
        return embedding, logits

"""ADDE: backbone (backbones.py) -> one learner per attribute -> heads, plus the memory block."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .backbones import make_backbone

if TYPE_CHECKING:
    from fashsdk.families.base import Family
    from fashsdk.schema import AttributeSchema


@dataclass
class ModelConfig:
    architecture: str = "adde"  # adde | datrnet (export/datrnet.py) | fsn (export/fsn.py)
    backbone: str = "compact"
    attribute_sizes: list[int] = field(default_factory=list)
    dim: int = 64  # d, per attribute
    width: int = 32  # compact backbone base width
    height_px: int = 80
    width_px: int = 64
    lite_split: int = 11  # efficientnet-lite0: blocks before this one are frozen (and cached in training)
    pretrained: bool = True  # efficientnet-lite0: ImageNet weights (False: random, for tests)
    chunk_norm: bool = True  # each attribute chunk unit-length, scaled by 1/sqrt(A) (False: the paper's one norm)
    block: str = "ase"  # datrnet: ase | msf (no axial attention) | residual (the paper's ablations)
    fsn_localize: bool = True  # fsn: RoI pooling inside each attribute's box (False: the whole map, the ablation)

    def to_json(self) -> dict:
        return asdict(self)


class ADDE(nn.Module):
    """Attribute-driven disentangled encoder with a memory block for manipulation.

    forward(images) -> (L2-normalised embedding (N, A*d), logits (N, J)); this is exactly
    the exported ONNX signature (``output_names``). The memory block (A*d, J) is exported as prototypes.npy and
    applied by ``fashsdk.families.adde`` (training uses that same function).
    """

    output_names: tuple[str, ...] = ("embedding", "logits")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = self._make_backbone(config)
        d, sizes = config.dim, config.attribute_sizes
        self.learners = self._make_learners(config)
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in sizes)
        self.memory = nn.Parameter(torch.zeros(d * len(sizes), sum(sizes)))
        self.register_buffer("offblock_mask", self._offblock_mask(sizes, d), persistent=False)

    def _make_backbone(self, config: ModelConfig) -> nn.Module:
        return make_backbone(config)

    def _make_learners(self, config: ModelConfig) -> nn.ModuleList:
        """One learner per attribute, each reading the whole backbone feature."""
        feat, d = self.backbone.out_features, config.dim
        return nn.ModuleList(nn.Sequential(nn.Linear(feat, d), nn.ReLU(inplace=True), nn.Linear(d, d))
                             for _ in config.attribute_sizes)

    def chunk_layout(self) -> list[tuple[int, int]]:
        """The embedding's (start, stop) slice of each attribute, in schema order."""
        d = self.config.dim
        return [(a * d, (a + 1) * d) for a in range(len(self.config.attribute_sizes))]

    def attribute_chunks(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [learner(features) for learner in self.learners]

    def query_family(self, schema: "AttributeSchema") -> "Family":
        """The runtime arithmetic that changes this model's queries (validation uses it)."""
        from fashsdk.families.adde import Adde

        return Adde(schema, self.memory.detach().numpy())

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
        chunks = self.attribute_chunks(features)
        logits = torch.cat([head(c) for head, c in zip(self.heads, chunks)], dim=1)
        return self.embedding_of(chunks), logits, chunks

    def embedding_of(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        """The normalised embedding of the raw attribute chunks."""
        if self.config.chunk_norm:  # every attribute gets 1/A of the squared norm: none can drown the others
            parts = [F.normalize(c, dim=1) for c in chunks]
            return torch.cat(parts, dim=1) / len(parts) ** 0.5
        return F.normalize(torch.cat(chunks, dim=1), dim=1)

    def attribute_ranking_loss(self, embedding: torch.Tensor, codes: torch.Tensor, margin: float,
                               generator: torch.Generator) -> torch.Tensor:
        """Stage 1's per-attribute ranking term: batch-hard triplets on each chunk."""
        return losses.attribute_triplets(embedding, codes, self.config.dim, margin)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits, _ = self.head_outputs(self.backbone(images))
        return embedding, logits


def build_model(config: ModelConfig) -> ADDE:
    """The model of ``config.architecture``."""
    if config.architecture == "adde":
        return ADDE(config)
    if config.architecture == "datrnet":
        from .datrnet import DAtRNet

        return DAtRNet(config)
    if config.architecture == "fsn":
        from .fsn import FashionSearchNet

        return FashionSearchNet(config)
    raise ValueError(f"unknown architecture {config.architecture!r}; choose adde, datrnet or fsn")

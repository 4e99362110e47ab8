"""DAtRNet (paper 002): one attribute representation network per attribute, built from
Attentive Style Embedding (ASE) modules, their outputs concatenated into one embedding.

Per attribute (Table 1, sizes scaled to the catalog's photos):
stem Conv(w, 3x3) -> MaxPool 2 -> ASE-1 (2w) -> MaxPool 2 -> ASE-2 (4w) -> MaxPool 2 -> ASE-3 (8w)
-> global average pooling; then (in ``DAtRNet.learners``) Dense 256 -> dropout 0.25 -> Dense d.

Choices where the paper is silent or inconsistent, for a model that trains on 2 CPU cores:
- The stem does not see pixels: it reads the activations of a frozen, ImageNet-pretrained
  EfficientNet-Lite0 trunk (stem and first ``lite_split`` blocks, stride 4 at the default
  split 3), shared by all attribute networks. Those activations are computed once per image
  in training (export/features.py); from random weights a few thousand CPU steps learn
  little (issue 19). The stem convolution has stride 1 (Table 1's stride 2 contradicts its
  own output size); the max pooling after it halves the map as the table's sizes do.
- ASE paths (the kernels appear only in Fig. 2): Conv 3x3 -> MaxPool 3 (stride 1) and
  Conv 5x5 -> MaxPool 5 (stride 1), each C channels; concatenated, then Conv 3x3 to 2C.
- Dense layers inside the masks have a ReLU between them (two linear layers alone
  collapse into one). Height and width descriptors: a 1x1 convolution to one channel,
  averaged over the other spatial axis, through Dense(H/4) -> Dense(H) (Eq. 2).
- The three masks are concurrent branches; their attended outputs are averaged:
  Y = (X*M_ch + X*M_h + X*M_w) / 3 (the paper does not say how they combine).
- Logits for ``predict()`` come from a classifier head per attribute on its chunk,
  trained beside the paper's per-attribute batch-hard triplet loss (export/train.py).

``block`` selects the ablations of the paper's Table 4: ``ase`` (full), ``msf`` (the
multi-scale block alone, no axial attention), ``residual`` (a plain residual block).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import LITE_BLOCKS, LiteBackbone, _conv_bn
from .models import ADDE, ModelConfig

if TYPE_CHECKING:
    from fashsdk.families.base import Family
    from fashsdk.schema import AttributeSchema

BLOCKS = ("ase", "msf", "residual")
MAX_SPLIT = 6  # deeper trunks leave maps too small for three ASE modules at catalog photo sizes


def _bottleneck(n: int) -> nn.Sequential:
    """Dense(n/4) -> ReLU -> Dense(n): the two dense layers of each mask branch (Eqs. 1a-b, 2)."""
    return nn.Sequential(nn.Linear(n, max(1, n // 4)), nn.ReLU(inplace=True), nn.Linear(max(1, n // 4), n))


class AxialAttention(nn.Module):
    """Concurrent axial attention over an (N, D, H, W) map of fixed H, W (Eqs. 1-2)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        d = channels
        self.gmp_branch, self.gap_branch = _bottleneck(d), _bottleneck(d)
        self.channel_mask = nn.Linear(2 * d, d)
        self.height_conv = nn.Conv2d(d, 1, 1)
        self.width_conv = nn.Conv2d(d, 1, 1)
        self.height_mask, self.width_mask = _bottleneck(height), _bottleneck(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d, h, w = x.shape
        x1 = torch.sigmoid(self.gmp_branch(x.amax(dim=(2, 3))))  # Eq. 1a
        x2 = torch.sigmoid(self.gap_branch(x.mean(dim=(2, 3))))  # Eq. 1b
        m_ch = torch.sigmoid(self.channel_mask(torch.cat([x1, x2], dim=1))).view(n, d, 1, 1)  # Eq. 1c
        m_h = torch.sigmoid(self.height_mask(self.height_conv(x).mean(dim=3).flatten(1))).view(n, 1, h, 1)  # Eq. 2a
        m_w = torch.sigmoid(self.width_mask(self.width_conv(x).mean(dim=2).flatten(1))).view(n, 1, 1, w)  # Eq. 2b
        return x * ((m_ch + m_h + m_w) / 3.0)


class ASEModule(nn.Module):
    """C input channels -> two parallel conv/pool paths -> concat -> Conv to 2C -> axial attention."""

    def __init__(self, channels: int, height: int, width: int, attention: bool = True) -> None:
        super().__init__()
        c = channels
        self.path_small = nn.Sequential(_conv_bn(c, c, 3), nn.MaxPool2d(3, 1, 1))
        self.path_large = nn.Sequential(_conv_bn(c, c, 5), nn.MaxPool2d(5, 1, 2))
        self.merge = _conv_bn(2 * c, 2 * c, 3)
        self.attention = AxialAttention(2 * c, height, width) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.merge(torch.cat([self.path_small(x), self.path_large(x)], dim=1)))


class ResidualBlock(nn.Module):
    """The ablation's plain residual block, C -> 2C (two 3x3 convolutions, a 1x1 shortcut)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(_conv_bn(c, 2 * c, 3), nn.Conv2d(2 * c, 2 * c, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * c))
        self.shortcut = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class AttributeNetwork(nn.Module):
    """One attribute's network from trunk activations to its pooled 8w-d feature."""

    def __init__(self, in_channels: int, width: int, height_px: int, width_px: int, block: str) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown DAtRNet block {block!r}; choose {', '.join(BLOCKS)}")
        layers: list[nn.Module] = [_conv_bn(in_channels, width, 3), nn.MaxPool2d(2, ceil_mode=True)]
        h, w, c = _half(height_px), _half(width_px), width
        for stage in range(3):
            if block == "residual":
                layers.append(ResidualBlock(c))
            else:
                layers.append(ASEModule(c, h, w, attention=block == "ase"))
            c *= 2
            if stage < 2:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                h, w = _half(h), _half(w)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _half(n: int) -> int:
    return (n + 1) // 2


class AttributeNetworks(nn.Module):
    """All attributes' networks side by side: (N, C, h, w) -> (N, A * 8w), attribute a's slice a."""

    def __init__(self, count: int, in_channels: int, width: int, height: int, width_px: int, block: str) -> None:
        super().__init__()
        self.nets = nn.ModuleList(AttributeNetwork(in_channels, width, height, width_px, block) for _ in range(count))
        self.per_attribute = 8 * width  # three stages, each doubling the stem's channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], dim=1)


class DatrnetBackbone(nn.Module):
    """Frozen pretrained trunk (shared low-level features) + the per-attribute networks as ``top``.

    ``trunk`` and ``top`` follow LiteBackbone's split, so training caches the trunk's activations
    and trains only the attribute networks (export/features.py)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        split = config.lite_split
        if not 1 <= split <= MAX_SPLIT:
            raise ValueError(f"DAtRNet reads EfficientNet-Lite0 activations after block 1-{MAX_SPLIT} of {LITE_BLOCKS}; "
                             f"got --lite-split {split}: use 3 (stride 4, the default)")
        self.trunk = LiteBackbone(split, config.pretrained).trunk.eval()
        with torch.no_grad():  # the trunk's output shape at this input size: the masks' dense layers need it
            channels, h, w = self.trunk(torch.zeros(1, 3, config.height_px, config.width_px)).shape[1:]
        self.top = AttributeNetworks(len(config.attribute_sizes), channels, config.width, h, w, config.block)
        self.per_attribute = self.top.per_attribute
        self.out_features = self.per_attribute * len(config.attribute_sizes)

    def train(self, mode: bool = True) -> "DatrnetBackbone":
        super().train(mode)
        self.trunk.eval()  # frozen: ImageNet's batch-norm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x))


HIDDEN = 256  # Table 1: Dense(256) after global pooling
DROPOUT = 0.25


class DAtRNet(ADDE):
    """DAtRNet behind ADDE's interface: forward(images) -> (embedding (N, A*d), logits (N, J)).

    Attribute a's chunk comes only from attribute a's network (Dense 256 -> dropout -> Dense d
    on its own pooled feature), so the chunks are disentangled by construction. ``memory``
    holds each value's mean chunk over reference training images (set by averaging, never
    trained): the bundle's chunk_replace value table is its transpose.
    """

    def _make_backbone(self, config: ModelConfig) -> nn.Module:
        return DatrnetBackbone(config)

    def _make_learners(self, config: ModelConfig) -> nn.ModuleList:
        feat = self.backbone.per_attribute
        return nn.ModuleList(nn.Sequential(nn.Linear(feat, HIDDEN), nn.ReLU(inplace=True), nn.Dropout(DROPOUT),
                                           nn.Linear(HIDDEN, config.dim)) for _ in config.attribute_sizes)

    def attribute_chunks(self, features: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(features, self.backbone.per_attribute, dim=1)
        return [learner(part) for learner, part in zip(self.learners, parts)]

    def query_family(self, schema: "AttributeSchema") -> "Family":
        from fashsdk.families.chunk_replace import ChunkReplace

        d = self.config.dim
        layout = [(a * d, (a + 1) * d) for a in range(len(schema.sizes))]
        return ChunkReplace(schema, layout, self.memory.detach().numpy().T)

"""ADDE: backbone -> one learner per attribute -> heads, plus the memory block.

Backbones: the paper's AlexNet (fc7, 224x224), ResNet18, and a compact CNN sized for CPU
training on small catalog photos. Written here from the architectures' published
descriptions; no pretrained weights are loaded (none can be downloaded on these machines).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    backbone: str = "compact"
    attribute_sizes: list[int] = field(default_factory=list)
    dim: int = 64  # d, per attribute
    width: int = 32  # compact backbone base width
    height_px: int = 80
    width_px: int = 64

    def to_json(self) -> dict:
        return asdict(self)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    pad = k // 2 if stride == 1 or k > stride else 0
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactBackbone(nn.Module):
    """A small plain CNN (about 0.6 M parameters at width 24) for 80x64 catalog photos."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w, k=2, stride=2),
            _conv_bn(w, 2 * w, stride=2),
            _conv_bn(2 * w, 4 * w, stride=2),
            _conv_bn(4 * w, 4 * w),
            _conv_bn(4 * w, 8 * w, stride=2),
            _conv_bn(8 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_features = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AlexNetFc7(nn.Module):
    """AlexNet up to fc7 (4096-d linear output, no ReLU after it), as in ADDE-M."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
                                nn.Dropout(0.5), nn.Linear(4096, 4096))
        self.out_features = 4096

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)


class ResNet18(nn.Module):
    """ResNet18 trunk to the 512-d pooled feature, as in ADDE-C/ADDE-O."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_backbone(config: ModelConfig) -> nn.Module:
    if config.backbone == "compact":
        return CompactBackbone(config.width)
    if config.backbone == "alexnet":
        return AlexNetFc7()
    if config.backbone == "resnet18":
        return ResNet18()
    raise ValueError(f"unknown backbone {config.backbone!r}; choose compact, alexnet or resnet18")


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
        embedding = F.normalize(torch.cat(chunks, dim=1), dim=1)
        return embedding, logits, chunks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits, _ = self.head_outputs(self.backbone(images))
        return embedding, logits

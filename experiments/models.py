"""Models for the experiments."""

from __future__ import annotations

import torch
from torch import nn

from ikkuna_tune.demo import SmallCNN

__all__ = ["DeepCNN", "SmallCNN"]


class DeepCNN(nn.Module):
    """SmallCNN with ``depth`` convolutions: conv(width) -> pool -> conv(2*width) -> pool, then
    ``depth - 2`` more conv(2*width) at the pooled resolution, -> fc(hidden) -> fc(classes).

    ``depth=2`` has SmallCNN's layers and shapes; every extra convolution adds one layer (and a
    little compute), which is what an overhead measurement per layer needs.
    """

    def __init__(
        self,
        depth: int = 2,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 64,
        classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"Expected `depth` to be an integer >= 2 but got {depth!r}")
        convs = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.Conv2d(width, 2 * width, 3, padding=1),
        ]
        convs += [nn.Conv2d(2 * width, 2 * width, 3, padding=1) for _ in range(depth - 2)]
        self.convs = nn.ModuleList(convs)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i < 2:
                x = self.pool(x)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

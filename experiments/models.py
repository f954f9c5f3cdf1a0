"""Models for the experiments."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(width) -> pool -> conv(2*width) -> pool -> fc(hidden) -> fc(classes)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 64,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

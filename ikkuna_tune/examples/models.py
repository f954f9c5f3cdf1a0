"""The example models: the demo's CNN, a deeper CNN, an MLP and a small ResNet.

:class:`SmallCNN` (the demo's network) is :class:`DeepCNN` with two convolutions; the
experiments train all of them. They name their layers as the metrics show them: ``conv1``,
``fc1``, ``stage1.0.conv1``, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "BasicBlock", "DeepCNN", "SmallCNN", "SmallResNet"]


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive integer but got {value!r}")
    return value


def _check_sizes(name: str, values: object, allow_empty: bool) -> tuple[int, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(
            f"Expected `{name}` to be a sequence of positive integers but got {values!r}"
        )
    if not values and not allow_empty:
        raise ValueError(
            f"Expected `{name}` to hold at least one positive integer but got {values!r}"
        )
    return tuple(_check_positive(name, v) for v in values)


class DeepCNN(nn.Module):
    """``depth`` convolutions: conv1(width) -> pool -> conv2(2*width) -> pool, then ``conv3``
    ... ``conv{depth}`` with 2*width channels at the pooled resolution, -> fc1(hidden) ->
    fc2(classes), ReLU after every layer but the last.

    ``depth=2`` is :class:`SmallCNN`; every extra convolution adds one layer (and a little
    compute), which is what an overhead measurement per layer needs.
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
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"Expected `depth` to be an integer >= 2 but got {depth!r}")
        channels = [in_channels, width, *[2 * width] * (depth - 1)]
        self.conv_names = [f"conv{i + 1}" for i in range(depth)]
        for name, (n_in, n_out) in zip(self.conv_names, itertools.pairwise(channels)):
            self.add_module(name, nn.Conv2d(n_in, n_out, 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, name in enumerate(self.conv_names):
            x = torch.relu(getattr(self, name)(x))
            if i < 2:
                x = self.pool(x)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class SmallCNN(DeepCNN):
    """The demo's CNN, :class:`DeepCNN` with two convolutions: conv1(width) -> pool ->
    conv2(2*width) -> pool -> fc1(hidden) -> fc2(classes)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 64,
        classes: int = 10,
    ) -> None:
        super().__init__(2, in_channels, image_size, width, hidden, classes)


class MLP(nn.Module):
    """Flatten -> ``fc1`` ... ``fcK`` (ReLU between) -> ``fc{K+1}`` with ``classes`` outputs.

    ``hidden`` gives the widths of the hidden layers (may be empty: a linear classifier).
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (128, 64), classes: int = 10
    ) -> None:
        super().__init__()
        in_features = _check_positive("in_features", in_features)
        widths = _check_sizes("hidden", hidden, allow_empty=True)
        classes = _check_positive("classes", classes)
        sizes = [in_features, *widths, classes]
        self.layer_names = [f"fc{i + 1}" for i in range(len(sizes) - 1)]
        for name, (n_in, n_out) in zip(self.layer_names, itertools.pairwise(sizes)):
            self.add_module(name, nn.Linear(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i < len(self.layer_names) - 1:
                x = torch.relu(x)
        return x


class BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the input
    (through a 1x1 convolution + BN, ``down_conv``/``down_bn``, when stride or width change),
    then ReLU. Convolutions followed by BatchNorm have no bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.down_conv: nn.Conv2d | None = None
        self.down_bn: nn.BatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.down_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.down_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.down_conv is not None and self.down_bn is not None:
            x = self.down_bn(self.down_conv(x))
        return torch.relu(out + x)


class SmallResNet(nn.Module):
    """A small ResNet for small images (8x8 digits, 28x28 MNIST, 32x32 CIFAR).

    Stem: conv3x3(``width``) -> BN -> ReLU at full resolution (no pooling). Then one stage per
    entry of ``blocks``, stage ``i`` (``stage1``, ``stage2``, ...) holding ``blocks[i]``
    :class:`BasicBlock` s with ``width * 2**i`` channels, the first block of every stage after
    the first with stride 2. Global average pooling, then ``fc`` to ``classes``. Any image size
    works (the pooling is adaptive); each stride-2 stage halves the side, rounding up.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 10,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        in_channels = _check_positive("in_channels", in_channels)
        classes = _check_positive("classes", classes)
        width = _check_positive("width", width)
        per_stage = _check_sizes("blocks", blocks, allow_empty=False)
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        channels = width
        self.stage_names: list[str] = []
        for i, count in enumerate(per_stage):
            out = width * 2**i
            stage = [BasicBlock(channels, out, 1 if i == 0 else 2)]
            stage += [BasicBlock(out, out) for _ in range(count - 1)]
            name = f"stage{i + 1}"
            self.add_module(name, nn.Sequential(*stage))
            self.stage_names.append(name)
            channels = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x).flatten(1))

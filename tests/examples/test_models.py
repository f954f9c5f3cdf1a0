"""ikkuna_tune.examples.models: SmallCNN/DeepCNN, MLP and SmallResNet shapes, gradients, the
layers an Exporter tracks, and forward passes checked against plain functional calls with the
same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.examples.models import MLP, BasicBlock, DeepCNN, SmallCNN, SmallResNet


def _every_parameter_gets_a_gradient(model: nn.Module, x: torch.Tensor) -> None:
    y = torch.arange(len(x)) % 10
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# -------------------------------------------------------------------------------- CNN
def test_cnn_matches_functional() -> None:
    torch.manual_seed(0)
    model = DeepCNN(3, in_channels=2, image_size=12, width=4, hidden=16, classes=5)
    x = torch.randn(3, 2, 12, 12)
    h = F.max_pool2d(torch.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)), 2)
    h = F.max_pool2d(torch.relu(F.conv2d(h, model.conv2.weight, model.conv2.bias, padding=1)), 2)
    h = torch.relu(F.conv2d(h, model.conv3.weight, model.conv3.bias, padding=1))
    h = torch.relu(h.flatten(1) @ model.fc1.weight.T + model.fc1.bias)
    expected = h @ model.fc2.weight.T + model.fc2.bias
    assert h.shape == (3, 16) and expected.shape == (3, 5)
    torch.testing.assert_close(model(x), expected)


def test_small_cnn_is_deep_cnn_of_depth_two() -> None:
    """The same layers, in the same order, drawn from the same random numbers."""
    torch.manual_seed(3)
    small = SmallCNN(image_size=8, width=8, hidden=32)
    torch.manual_seed(3)
    deep = DeepCNN(2, image_size=8, width=8, hidden=32)
    assert isinstance(small, DeepCNN)
    assert list(small.state_dict()) == list(deep.state_dict())
    for name, value in small.state_dict().items():
        assert torch.equal(value, deep.state_dict()[name]), name
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(small(x), deep(x))
    _every_parameter_gets_a_gradient(small, x)


@pytest.mark.parametrize("depth", [2, 4])
def test_cnn_exporter_layers(depth: int) -> None:
    with ik.Exporter(DeepCNN(depth, width=4)) as exporter:
        convs = [f"conv{i}" for i in range(1, depth + 1)]
        assert list(exporter.modules) == [*convs, "fc1", "fc2"]


@pytest.mark.parametrize("depth", [1, 2.0, True])
def test_cnn_rejects(depth: object) -> None:
    with pytest.raises(ValueError, match="`depth` to be an integer >= 2"):
        DeepCNN(depth)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ MLP
def test_mlp_matches_functional() -> None:
    torch.manual_seed(0)
    model = MLP(64, hidden=(32, 16), classes=10)
    x = torch.randn(5, 1, 8, 8)
    h = x.reshape(5, 64)
    h = torch.relu(h @ model.fc1.weight.T + model.fc1.bias)
    h = torch.relu(h @ model.fc2.weight.T + model.fc2.bias)
    expected = h @ model.fc3.weight.T + model.fc3.bias
    torch.testing.assert_close(model(x), expected)


def test_mlp_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = MLP(3 * 32 * 32, hidden=(20,), classes=7)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 7)
    _every_parameter_gets_a_gradient(MLP(64, (16, 8)), torch.randn(6, 1, 8, 8))
    linear = MLP(784, hidden=(), classes=10)
    assert [n for n, _ in linear.named_children()] == ["fc1"]
    assert linear(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_exporter_layers() -> None:
    with ik.Exporter(MLP(64, (32, 16, 8))) as exporter:
        assert list(exporter.modules) == ["fc1", "fc2", "fc3", "fc4"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0}, "`in_features` to be a positive integer but got 0"),
        ({"in_features": 4, "hidden": (8, -1)}, "`hidden` to be a positive integer but got -1"),
        ({"in_features": 4, "hidden": 8}, "`hidden` to be a sequence"),
        ({"in_features": 4, "classes": True}, "`classes` to be a positive integer but got True"),
    ],
)
def test_mlp_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


# ----------------------------------------------------------------------------- ResNet
def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out."""
    mean = bn.running_mean.view(1, -1, 1, 1)
    var = bn.running_var.view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("stride", [1, 2])
def test_basic_block_matches_functional(stride: int) -> None:
    torch.manual_seed(0)
    block = BasicBlock(4, 4 * stride, stride)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 4, 6, 6)
    out = torch.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
    out = _bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    if stride == 2:
        shortcut = _bn(F.conv2d(x, block.down_conv.weight, stride=2), block.down_bn)
    else:
        assert block.down_conv is None
        shortcut = x
    torch.testing.assert_close(block(x), torch.relu(out + shortcut))


@pytest.mark.parametrize(
    ("channels", "side", "blocks", "sides"),
    [
        (1, 8, (1, 1, 1), [8, 4, 2]),
        (1, 28, (1, 2), [28, 14]),
        (1, 28, (1, 1, 1), [28, 14, 7]),
        (3, 32, (2, 1, 1), [32, 16, 8]),
    ],
)
def test_resnet_shapes(channels: int, side: int, blocks: tuple, sides: list) -> None:
    torch.manual_seed(0)
    model = SmallResNet(channels, classes=10, width=4, blocks=blocks)
    seen = {}
    for i in range(len(blocks)):
        stage = getattr(model, f"stage{i + 1}")
        assert len(stage) == blocks[i]
        stage.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out.shape))
    assert model(torch.randn(3, channels, side, side)).shape == (3, 10)
    assert [seen[i] for i in range(len(blocks))] == [
        (3, 4 * 2**i, s, s) for i, s in enumerate(sides)
    ]


@pytest.mark.parametrize(("channels", "side"), [(1, 8), (1, 28), (3, 32)])
def test_resnet_gradients_reach_every_parameter(channels: int, side: int) -> None:
    torch.manual_seed(0)
    model = SmallResNet(channels, width=4, blocks=(1, 1))
    _every_parameter_gets_a_gradient(model, torch.randn(4, channels, side, side))


def test_resnet_exporter_layers() -> None:
    block1 = ["stage1.0.conv1", "stage1.0.bn1", "stage1.0.conv2", "stage1.0.bn2"]
    block2 = [
        "stage2.0.conv1",
        "stage2.0.bn1",
        "stage2.0.conv2",
        "stage2.0.bn2",
        "stage2.0.down_conv",
        "stage2.0.down_bn",
    ]
    extra = ["stage2.1.conv1", "stage2.1.bn1", "stage2.1.conv2", "stage2.1.bn2"]
    model = SmallResNet(1, width=4, blocks=(1, 2))
    with ik.Exporter(model) as exporter:
        assert list(exporter.modules) == ["conv", "bn", *block1, *block2, *extra, "fc"]
    with ik.Exporter(model, module_filter=(nn.Conv2d, nn.Linear)) as exporter:
        expected = ["conv", *block1, *block2, *extra, "fc"]
        assert list(exporter.modules) == [n for n in expected if "bn" not in n]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blocks": ()}, "`blocks` to hold at least one"),
        ({"blocks": (1, 0)}, "`blocks` to be a positive integer but got 0"),
        ({"width": 2.5}, "`width` to be a positive integer but got 2.5"),
        ({"in_channels": 0}, "`in_channels` to be a positive integer"),
    ],
)
def test_resnet_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SmallResNet(**kwargs)

"""The experiments' models, defined in :mod:`ikkuna_tune.examples.models`."""

from ikkuna_tune.examples.models import MLP, BasicBlock, DeepCNN, SmallCNN, SmallResNet

__all__ = ["MLP", "BasicBlock", "DeepCNN", "SmallCNN", "SmallResNet"]

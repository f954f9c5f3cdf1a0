"""What a subscriber that runs the model may use of it: the small interface the Exporter offers.

Subscribers that evaluate or probe the model (test accuracy, SVCCA) get a :class:`ModelAccess`
from whoever wires them (the Exporter hands itself to the subscribers on its bus, which is what
:func:`ikkuna_tune.watch` sets up), never by reaching into the bus. Anything with these members
will do, so a subscriber can be tested against a stand-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.messages import NamedModule

__all__ = ["ModelAccess"]


@runtime_checkable
class ModelAccess(Protocol):
    """The model, its tracked layers, a probe context and freezing.

    Examples:
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with Exporter(model) as exporter:
        ...     isinstance(exporter, ModelAccess), list(exporter.modules), exporter.frozen
        (True, ['0', '2'], ())
        >>> isinstance(model, ModelAccess)  # a bare model offers none of it
        False
    """

    @property
    def model(self) -> nn.Module:
        """The watched model."""

    @property
    def modules(self) -> Mapping[str, NamedModule]:
        """The tracked layers by name, input side first."""

    @property
    def message_bus(self) -> MessageBus:
        """The bus the model's messages are published on."""

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen layers, in the order they were frozen."""

    def probe(self, tag: str = ...) -> AbstractContextManager[nn.Module]:
        """Run the model outside training (eval mode, no gradients, messages under ``tag``)."""

    def output_tensor(self, output: Any) -> torch.Tensor:
        """The tensor that stands for the model's output."""

    def freeze(self, name: str) -> None:
        """Stop training the layer ``name``."""

    def leaves_trainable(self, name: str, frozen: Iterable[str] = ()) -> bool:
        """Whether freezing ``name`` (besides ``frozen``) leaves a trainable layer."""

    def held_fixed(self) -> list[str]:
        """The tracked layers the training code holds fixed (no parameter requires grad)."""

    @property
    def layer_order(self) -> list[str]:
        """The tracked layers, input side first, as data flows through them (where known)."""

    def trains_upstream(self, name: str) -> list[str]:
        """The untracked modules with trainable parameters that run before layer ``name``."""

    def shares_with(self, name: str) -> list[str]:
        """The other tracked layers holding a trainable parameter of layer ``name``."""

"""Statistics of one tensor per message: norms, mean, variance and spectral norm.

Each subscriber takes one kind, computes its metric on the tensor's device with a function from
:mod:`ikkuna_tune.functional` and publishes it back on the bus as a 0-d tensor, under the kind
named in its docstring. Per-layer kinds (``weights``, ``activations``, ...) give per-layer kinds
(``DATA``); network-wide kinds (``loss``, ``network_output``) give network kinds (``META``).
Nothing here turns a tensor into a Python number: backends convert once per flush. The ratio of
two kinds is in :mod:`~ikkuna_tune.subscribers.ratio`, the mean over layers in
:mod:`~ikkuna_tune.subscribers.message_mean`, histograms in
:mod:`~ikkuna_tune.subscribers.histogram`.

Examples:
    >>> import torch
    >>> from ikkuna_tune.bus import MessageBus
    >>> from ikkuna_tune.messages import NamedModule
    >>> from ikkuna_tune.subscribers import CallbackSubscriber
    >>> bus = MessageBus()
    >>> norms = NormSubscriber("weights", bus, backend=None)
    >>> got = []
    >>> _ = CallbackSubscriber(["weights_norm2"], lambda m: got.append((m.key, m.data)), bus)
    >>> fc = NamedModule("fc", torch.nn.Linear(2, 1))
    >>> bus.publish_module_message(
    ...     "weights", fc, torch.tensor([3.0, -4.0]), global_step=0, train_step=0, epoch=0
    ... )
    >>> got
    [('fc', tensor(5.))]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.modules.conv import _ConvTransposeNd

from ikkuna_tune import functional as F
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_int
from ikkuna_tune.messages import (
    BUILTIN_KINDS,
    DEFAULT_TAG,
    KindType,
    LayerBatch,
    Message,
    MessageBundle,
)
from ikkuna_tune.subscribers.kinds import (
    check_spread_data,
    check_spread_kind,
    check_tensor_kind,
    kind_type,
)
from ikkuna_tune.subscribers.plotting import PlotSubscriber, plot_config
from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = [
    "MeanSubscriber",
    "NormSubscriber",
    "SpectralNormSubscriber",
    "VarianceSubscriber",
]


class _TensorMetricSubscriber(PlotSubscriber):
    """One kind in, one scalar per message out, published under :attr:`published_kind`.

    That kind is per layer (``DATA``) for per-layer kinds and network-wide (``META``) for
    network kinds; which one is decided when the subscriber is attached to a bus.
    """

    def __init__(
        self,
        kind: str,
        published_kind: str,
        message_bus: MessageBus | None,
        tag: str | None,
        subsample: int,
        ylims: tuple[float, float] | None,
        backend: str | None,
        ylabel: str,
    ) -> None:
        self.kind = check_tensor_kind(kind)
        self.published_kind = published_kind
        super().__init__(
            [Subscription(self, [kind], tag, subsample)],
            message_bus,
            plot_config(f"{published_kind} per layer", ylabel, ylims),
            backend,
            publishes={published_kind: kind_type([kind])},
        )

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        return {self.published_kind: kind_type([self.kind], message_bus)}

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        """The metric of one message's data (a 0-d tensor on the data's device)."""
        raise NotImplementedError

    #: Name under which :meth:`metric` results are shared with other subscribers of the same
    #: message (see :meth:`MessageBus.shared`); ``None`` shares nothing.
    shared_as: str | None = None

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if isinstance(message_or_bundle, Message):
            bus = self.message_bus
            if self.shared_as is not None and bus is not None:
                value = bus.shared(message_or_bundle, self.shared_as, self.metric)
            else:
                value = self.metric(message_or_bundle.data)
            self.publish(self.published_kind, value, message_or_bundle)

    takes_batches = True

    def metric_batch(self, data: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """:meth:`metric` of each tensor of a batch, as one 1-D tensor where they share a device
        (a subclass may compute it in one operation)."""
        return F.stacked([self.metric(x) for x in data])

    def compute_batch(self, batch: LayerBatch) -> None:
        own_compute = type(self).compute is not _TensorMetricSubscriber.compute
        if own_compute or not all(isinstance(x, torch.Tensor) for x in batch.data):
            super().compute_batch(batch)  # one message at a time, as compute() sees them
            return
        bus = self.message_bus
        if self.shared_as is not None and bus is not None:
            values = bus.shared(batch, self.shared_as, self.metric_batch)
        else:
            values = self.metric_batch(batch.data)
        self.publish_batch(self.published_kind, values, batch)


def _order_name(order: float) -> str:
    if order == math.inf:
        return "inf"
    if isinstance(order, float) and order.is_integer():
        return str(int(order))
    return str(order)


class NormSubscriber(_TensorMetricSubscriber):
    """The ``order``-norm of each message's tensor, taken as one vector (see
    :func:`ikkuna_tune.functional.norm`; the Frobenius norm of a weight matrix for ``order=2``).

    Publishes ``{kind}_norm{order}`` (``'weights_norm2'``), one 0-d tensor per layer and message.

    Args:
        kind: the message kind to take norms of.
        message_bus: attach to this bus right away.
        tag: receive only messages with this tag (``None``: every tag).
        subsample: process every ``subsample``-th message per layer.
        ylims: optional y-axis limits for plots.
        backend: ``'tb'`` or ``None``.
        order: the norm's order, a positive number (``math.inf`` for the largest magnitude).

    Examples:
        >>> import torch
        >>> sub = NormSubscriber("weights", order=math.inf, backend=None)
        >>> sub.published_kind, sub.metric(torch.tensor([3.0, -4.0]))
        ('weights_norminf', tensor(4.))
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        order: float = 2,
    ) -> None:
        check_tensor_kind(kind)
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not order > 0:
            raise ValueError(f"Expected argument `order` to be a positive number but got {order!r}")
        self.order = order
        self.shared_as = f"norm{_order_name(order)}"
        super().__init__(
            kind,
            f"{kind}_norm{_order_name(order)}",
            message_bus,
            tag,
            subsample,
            ylims,
            backend,
            f"L{_order_name(order)} norm",
        )

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        return F.norm(data, self.order)

    def metric_batch(self, data: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        return F.stacked(F.norms(data, self.order))


class MeanSubscriber(_TensorMetricSubscriber):
    """The mean of all entries of each message's tensor. Publishes ``{kind}_mean``.

    Arguments as for :class:`NormSubscriber` (without ``order``).

    Examples:
        >>> import torch
        >>> sub = MeanSubscriber("weight_gradients", backend=None)
        >>> sub.published_kind, sub.metric(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        ('weight_gradients_mean', tensor(3.))
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        check_tensor_kind(kind)
        super().__init__(kind, f"{kind}_mean", message_bus, tag, subsample, ylims, backend, "Mean")

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        return F.mean(data)


class VarianceSubscriber(_TensorMetricSubscriber):
    """The unbiased variance of all entries of each message's tensor (``n - 1`` in the
    denominator; NaN for a single entry). Publishes ``{kind}_variance``.

    Arguments as for :class:`NormSubscriber` (without ``order``).

    Examples:
        >>> import torch
        >>> sub = VarianceSubscriber("activations", backend=None)
        >>> sub.published_kind, sub.metric(torch.tensor([1.0, 2.0, 3.0]))
        ('activations_variance', tensor(1.))
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        check_spread_kind(check_tensor_kind(kind), type(self).__name__)
        self._data_checked = False
        super().__init__(
            kind, f"{kind}_variance", message_bus, tag, subsample, ylims, backend, "Variance"
        )

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        if not self._data_checked:  # a kind of one number (a subscriber's output): no variance
            if self.kind not in BUILTIN_KINDS:  # a built-in tensor of one entry gives NaN, as said
                check_spread_data(data, self.kind, type(self).__name__)
            self._data_checked = True
        return F.variance(data)


#: Power iterations at a layer's first message (from a random vector), at least.
FIRST_POWER_ITERATIONS = 30
#: Power iterations per message, by default, of a kind that changes direction between steps.
MOVING_POWER_ITERATIONS = 5
#: Of such a kind, by default, a matrix whose smaller side has at most this many entries gets
#: its exact spectral norm (:func:`ikkuna_tune.functional.largest_singular_value`: one product
#: of that side's size and its eigenvalues) instead of power iteration: 5 iterations still read
#: a gradient's up to 37 % low where its top direction turned since the last step.
EXACT_SIDE = 64


#: Kinds whose first dimension runs over the batch's samples.
_SAMPLE_KINDS = frozenset({"activations", "layer_gradients", "input_data", "network_output"})


class SpectralNormSubscriber(_TensorMetricSubscriber):
    """The spectral norm (largest singular value) of each message's tensor as a matrix
    ``(out, -1)``, estimated by power iteration (:func:`ikkuna_tune.functional.spectral_norm`).
    The output dimension is the first, except for a transposed convolution's weights
    ``(in, out, *kernel)``, whose rows run along the second, as for
    :func:`torch.nn.utils.spectral_norm`.

    One vector ``u`` per layer persists from message to message, so a few iterations per step
    track the slowly changing weights (the approach of :func:`torch.nn.utils.spectral_norm`); a
    layer's first message, which starts from a random vector, runs at least
    :data:`FIRST_POWER_ITERATIONS` (one iteration from there read 15-29 % low on the first
    step of a small CNN's weights). The vectors are in :meth:`state_dict` for checkpoints.
    Of a kind whose first dimension runs over the batch's samples (``activations``,
    ``layer_gradients``, ``input_data``, ``network_output``) the matrix is taken as
    ``(samples, -1)`` as well, and ``u`` runs along its other side (the features), which every
    batch shares: a vector over the samples says nothing of the next batch's (other samples,
    or fewer in an epoch's last batch). A ``u`` of another length than the message's (a
    sequence of another length) starts afresh, with as many iterations as a first message.
    Publishes ``{kind}_spectral_norm``.
    Gradients, updates and a batch's activations change direction from step to step, so power
    iteration gives a lower bound for them, which can be well below the true value (one
    iteration per step, or a few where the top direction turned or the two largest singular
    values are close). By default, a matrix of such a kind whose smaller side has at most
    :data:`EXACT_SIDE` entries gets its exact value
    (:func:`~ikkuna_tune.functional.largest_singular_value`), and a larger one
    :data:`MOVING_POWER_ITERATIONS` iterations per message; weights and biases, which move
    slowly, one iteration. That is a lower bound too, and while the weights still move fast it
    can read well below the true value: 8 % in the first 44 steps of a small CNN trained at
    learning rate 0.05 with momentum, and 14.6 % on a 256 x 256 layer of an MLP trained so (at
    its 24th step; more than 5 % low over steps 19 to 27). Pass ``n_power_iterations`` for more,
    or read ``weights`` spectral norms as a trend, not a measurement. On a GPU the
    exact value's eigenvalue solver synchronises the device with the host once per matrix;
    ``n_power_iterations`` (power iteration only) avoids that.

    Args:
        n_power_iterations: power iterations per message (>= 1), for every matrix; by default
            1 for ``weights`` and ``biases``, and for any other kind the exact value up to
            :data:`EXACT_SIDE`, :data:`MOVING_POWER_ITERATIONS` iterations beyond.
        Others as for :class:`NormSubscriber` (without ``order``).

    Examples:
        >>> import torch
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.messages import NamedModule
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> weights = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # singular values 3 and 1
        >>> bus = MessageBus()
        >>> sub = SpectralNormSubscriber("weights", bus, backend=None, n_power_iterations=10)
        >>> sigma = []
        >>> bus.register_subscriber(
        ...     CallbackSubscriber(["weights_spectral_norm"], lambda m: sigma.append(m.data))
        ... )
        >>> layer = NamedModule("fc", torch.nn.Linear(2, 2))
        >>> steps = {"global_step": 0, "train_step": 0, "epoch": 0}
        >>> bus.publish_module_message("weights", layer, weights, **steps)
        >>> sigma, list(sub.state_dict()["u"])  # one power-iteration vector per layer
        ([tensor(3.)], ['fc'])
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        n_power_iterations: int | None = None,
    ) -> None:
        check_spread_kind(check_tensor_kind(kind), type(self).__name__)
        self._data_checked = False
        slow = kind in ("weights", "biases")
        #: whether a small matrix gets its exact spectral norm (the default, for moving kinds)
        self.exact = n_power_iterations is None and not slow
        if n_power_iterations is None:
            n_power_iterations = 1 if slow else MOVING_POWER_ITERATIONS
        self.n_power_iterations = check_int("n_power_iterations", n_power_iterations)
        self.add_state("u", {}, _power_vectors)
        super().__init__(
            kind,
            f"{kind}_spectral_norm",
            message_bus,
            tag,
            subsample,
            ylims,
            backend,
            "Spectral norm",
        )

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        key = message_or_bundle.key or ""
        data = message_or_bundle.data
        if not self._data_checked:  # a kind of one number (a subscriber's output): no matrix
            if self.kind not in BUILTIN_KINDS:
                check_spread_data(data, self.kind, type(self).__name__, 1, 1)
            self._data_checked = True
        module = getattr(message_or_bundle, "module", None)
        # a ConvTranspose weight is (in, out, *kernel): its output side is dimension 1
        transposed = module is not None and isinstance(module.module, _ConvTransposeNd)
        dim = 1 if transposed and data.dim() > 1 else 0
        if self.kind in _SAMPLE_KINDS and data.dim() > 1:
            data = data.reshape(data.shape[0], -1).T  # u over the features, not the samples
            dim = 0  # (of any layer: the rows are now the features)
        rows = data.shape[dim] if data.dim() > 0 else 1
        if self.exact and min(rows, data.numel() // max(rows, 1)) <= EXACT_SIDE:
            sigma = F.largest_singular_value(data, dim=dim)
            self.publish(self.published_kind, sigma, message_or_bundle)
            return
        u = self.u.get(key)
        # a layer's first message starts from a random vector: enough iterations to start
        # near the value, which later messages then track
        iterations = (
            self.n_power_iterations
            if u is not None and u.shape[0] == data.shape[dim]
            else max(self.n_power_iterations, FIRST_POWER_ITERATIONS)
        )
        sigma, self.u[key] = F.spectral_norm(data, u, iterations, dim=dim)
        self.publish(self.published_kind, sigma, message_or_bundle)


def _power_vectors(u: object) -> dict[str, torch.Tensor]:
    """The saved power-iteration vectors ``{layer name: 1-d tensor}``, copied; they move to the
    data's device when used."""
    if not isinstance(u, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() == 1 for k, v in u.items()
    ):
        raise ValueError(
            "Expected a state {'u': {layer name: 1-d tensor}} for SpectralNormSubscriber "
            f"but got u={u!r}"
        )
    return {k: v.detach().clone() for k, v in u.items()}

"""DistributedDataParallel gradient synchronisation that leaves frozen parameters out.

DDP puts every parameter that requires grad when it is built into its gradient buckets and
all-reduces whole buckets at every step. A layer frozen later (:meth:`Exporter.freeze
<ikkuna_tune.exporter.Exporter.freeze>`: ``requires_grad=False``, with DDP's
``find_unused_parameters=True``) stays in its bucket, so DDP keeps all-reducing its (unused, zero)
slots and the freeze saves no communication. :func:`install_trainable_only_sync` registers
:func:`trainable_only_allreduce_hook` as the model's communication hook instead: per bucket it
all-reduces only the gradients of the parameters that still require grad, packed into one flat
tensor, and averages them over the ranks as DDP's default hook does (with nothing frozen the
gradients are the same); a bucket whose parameters are all frozen needs no collective at all.
The hook's :class:`TrainableOnlySyncState` counts the bytes it all-reduces.

Every rank must agree on which parameters are frozen when a step's backward runs (freeze the same
layers on every rank before the same step, as :meth:`Exporter.freeze
<ikkuna_tune.exporter.Exporter.freeze>` requires anyway): the ranks' packed tensors then have the
same size, and they skip the same buckets. The frozen parameters' gradients stay ``None``: DDP
(with ``find_unused_parameters=True``) writes no gradient to a parameter no rank used.

Limitations:
    * DDP takes one communication hook. Installing on a model that already has one (from
      ``register_comm_hook`` or a built-in hook) raises :class:`ValueError`; to keep another hook
      (compression, say), build on :func:`trainable_only_allreduce_hook` in your own.
    * Install before the first backward (DDP's advice for any hook); the steps before it were
      synchronised whole.
    * The counted bytes are the payload this rank hands to ``all_reduce``; the network carries
      about ``2 (world - 1) / world`` times that with a ring all-reduce. DDP's own small
      all-reduce of which parameters were used (``find_unused_parameters=True``) is not counted.
    * Sparse gradient buckets are all-reduced whole, as DDP does (counted by their values and
      indices).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 2)
    >>> install_trainable_only_sync(model)
    Traceback (most recent call last):
    ...
    TypeError: Expected a torch.nn.parallel.DistributedDataParallel model ... but got Linear
"""

# No ``from __future__ import annotations``: DDP compares the hook's annotations with
# ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]`` themselves, not with strings.

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ikkuna_tune.layers import wrappers

__all__ = [
    "TrainableOnlySyncState",
    "data_parallel_ranks",
    "install_trainable_only_sync",
    "trainable_only_allreduce_hook",
]

logger = logging.getLogger(__name__)

try:  # what DDP checks the hook's ``bucket`` annotation against
    from torch.distributed import GradBucket
except ImportError:  # torch built without distributed support: the module still imports
    GradBucket = Any  # type: ignore[misc,assignment]


class TrainableOnlySyncState:
    """The state of :func:`trainable_only_allreduce_hook`: the process group it all-reduces in,
    and the bytes it has all-reduced.

    A step is one backward pass that synchronised gradients (DDP calls the hook once per
    bucket; the step ends with the last bucket). ``bytes_total``, ``allreduces`` (collectives
    launched), ``skipped_buckets`` (buckets with every parameter frozen) and ``steps`` add up
    from the last :meth:`reset`; ``last_step_bytes`` are the bytes of the last complete step.

    Args:
        process_group: the group to all-reduce in; None for the default (world) group.

    Examples:
        >>> state = TrainableOnlySyncState()
        >>> state.bytes_total, state.steps, state.last_step_bytes, state.bytes_per_step
        (0, 0, None, None)
        >>> state.bytes_total, state.steps = 4096, 2
        >>> state.bytes_per_step
        2048.0
        >>> state.reset(); state.bytes_total, state.steps
        (0, 0)
    """

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group
        self.bytes_total = 0
        self.allreduces = 0
        self.skipped_buckets = 0
        self.steps = 0
        self.last_step_bytes: int | None = None
        self._step_bytes = 0  # of the step under way

    @property
    def bytes_per_step(self) -> float | None:
        """Mean bytes all-reduced per step since the last :meth:`reset` (None: no step yet)."""
        return self.bytes_total / self.steps if self.steps else None

    def reset(self) -> None:
        """Start counting afresh (``last_step_bytes`` is kept: it describes the last step)."""
        self.bytes_total = self.allreduces = self.skipped_buckets = self.steps = 0
        self._step_bytes = 0

    def _count(self, size: int | None, last: bool) -> None:
        """Count one bucket's all-reduce of ``size`` bytes (None: skipped); ``last``: the
        step's last bucket."""
        if size is not None:
            self.bytes_total += size
            self._step_bytes += size
            self.allreduces += 1
        else:
            self.skipped_buckets += 1
        if last:
            if self._step_bytes != self.last_step_bytes:
                logger.debug("Trainable-only sync: %d bytes all-reduced per step", self._step_bytes)
            self.last_step_bytes = self._step_bytes
            self._step_bytes = 0
            self.steps += 1

    def __repr__(self) -> str:
        return (
            f"TrainableOnlySyncState(bytes_total={self.bytes_total}, steps={self.steps}, "
            f"last_step_bytes={self.last_step_bytes})"
        )


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.element_size() * tensor.numel()


def _done(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(tensor)
    return future


def _allreduce_mean(
    state: TrainableOnlySyncState, tensor: torch.Tensor
) -> torch.futures.Future[torch.Tensor]:
    """Average ``tensor`` over the group, in place, as DDP's default hook does (divide first)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    tensor.div_(dist.get_world_size(group))
    work = dist.all_reduce(tensor, group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def trainable_only_allreduce_hook(
    state: TrainableOnlySyncState, bucket: GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average over the ranks only the gradients of the bucket's
    parameters that still require grad.

    A bucket with every parameter trainable is all-reduced in place as DDP's default hook does;
    one with some frozen has its trainable gradients packed into one flat tensor, all-reduced,
    and unpacked into the bucket (the frozen slots keep what they held, which DDP does not write
    to a parameter no rank used); one with every parameter frozen comes back as it is, with no
    collective. Register it with :func:`install_trainable_only_sync` (or
    ``ddp.register_comm_hook(TrainableOnlySyncState(), trainable_only_allreduce_hook)``).

    Examples:
        A bucket of frozen parameters needs no process group (a stand-in for DDP's bucket):

        >>> import torch
        >>> from types import SimpleNamespace
        >>> frozen = torch.zeros(3, requires_grad=False)
        >>> flat = torch.zeros(3)
        >>> bucket = SimpleNamespace(buffer=lambda: flat, gradients=lambda: [flat],
        ...                          parameters=lambda: [frozen], is_last=lambda: True)
        >>> state = TrainableOnlySyncState()
        >>> trainable_only_allreduce_hook(state, bucket).wait() is flat
        True
        >>> state.bytes_total, state.skipped_buckets, state.steps, state.last_step_bytes
        (0, 1, 1, 0)
    """
    buffer = bucket.buffer()
    last = bucket.is_last()
    if buffer.is_sparse:
        state._count(_nbytes(buffer._values()) + _nbytes(buffer._indices()), last)
        return _allreduce_mean(state, buffer)
    trainable = [p.requires_grad for p in bucket.parameters()]
    if all(trainable):
        state._count(_nbytes(buffer), last)
        return _allreduce_mean(state, buffer)
    if not any(trainable):
        state._count(None, last)
        return _done(buffer)
    views = [g for g, keep in zip(bucket.gradients(), trainable) if keep]
    packed = torch.cat([v.reshape(-1) for v in views])
    state._count(_nbytes(packed), last)

    def unpack(future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        reduced = future.value()
        start = 0
        for view in views:  # views into the bucket's buffer
            view.copy_(reduced[start : start + view.numel()].view_as(view))
            start += view.numel()
        return buffer

    return _allreduce_mean(state, packed).then(unpack)


def install_trainable_only_sync(
    model: nn.Module, process_group: Any = None, *, warn_late: bool = True
) -> TrainableOnlySyncState:
    """Make DDP all-reduce only the gradients of parameters that still require grad; returns
    the hook's state, which counts the bytes all-reduced.

    Call it once, before the first backward, on every rank. ``model`` is the
    ``DistributedDataParallel`` module, or ``torch.compile``'s wrapper of one. Freezing needs
    DDP built with ``find_unused_parameters=True`` (see :meth:`Exporter.freeze
    <ikkuna_tune.exporter.Exporter.freeze>`); with nothing frozen any DDP works.

    Args:
        model: the DDP module (or a ``torch.compile`` wrapper of one).
        process_group: the group to all-reduce in; None for DDP's own (the one it was built
            with, the default world group unless ``process_group=`` was given).
        warn_late: warn when the model has run a forward pass already. False where the
            install is meant to come late: :meth:`Exporter.freeze
            <ikkuna_tune.exporter.Exporter.freeze>` installs it at the first freeze, after
            training began, and loses nothing by it (with nothing frozen the hook all-reduces
            exactly what DDP's default does); it is then said at debug level.

    Raises:
        TypeError: ``model`` is not (a wrapper of) a ``DistributedDataParallel`` module.
        ValueError: the DDP module already has a communication hook (DDP takes only one).

    Examples:
        >>> from torch import nn
        >>> install_trainable_only_sync(nn.DataParallel(nn.Linear(2, 2)))
        Traceback (most recent call last):
        ...
        TypeError: Expected a torch.nn.parallel.DistributedDataParallel model ... but got
        DataParallel (wrapping Linear)

        On every rank, after ``dist.init_process_group``::

            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            sync = install_trainable_only_sync(ddp)
            ...  # train; exporter.freeze("conv1") on every rank before the same step
            sync.last_step_bytes  # bytes all-reduced by the last step
    """
    chain = wrappers(model) if isinstance(model, nn.Module) else []
    ddp = next((m for m in chain if isinstance(m, nn.parallel.DistributedDataParallel)), None)
    if ddp is None:
        got = type(model).__name__
        if len(chain) > 1:
            got += " (wrapping " + " wrapping ".join(type(m).__name__ for m in chain[1:]) + ")"
        raise TypeError(
            "Expected a torch.nn.parallel.DistributedDataParallel model (or torch.compile's "
            f"wrapper of one) but got {got}"
        )
    existing = getattr(ddp, "_comm_hooks", [])
    if existing:
        raise ValueError(
            "Expected a DistributedDataParallel module without a communication hook (DDP takes "
            f"one) but it already has {[getattr(h, '__qualname__', h) for h, _ in existing]}"
        )
    if getattr(ddp, "_lazy_init_ran", False):
        logger.log(
            logging.WARNING if warn_late else logging.DEBUG,
            "install_trainable_only_sync after the model's first forward pass: the steps "
            "before were synchronised by DDP's default all-reduce",
        )
    group = process_group if process_group is not None else getattr(ddp, "process_group", None)
    state = TrainableOnlySyncState(group)
    try:
        ddp.register_comm_hook(state, trainable_only_allreduce_hook)
    except RuntimeError as error:  # a built-in hook is registered in C++ only
        raise ValueError(
            "Expected a DistributedDataParallel module without a communication hook (DDP takes "
            f"one) but registering failed: {error}"
        ) from error
    logger.info("DDP synchronises only the gradients of parameters that require grad")
    return state


def data_parallel_ranks(model: nn.Module) -> int:
    """How many ranks train ``model`` together: the size of its ``DistributedDataParallel``'s
    process group, the ranks of an FSDP-sharded model (``FullyShardedDataParallel``, or
    modules of ``fully_shard``), or 1 for a model trained by one rank.

    Examples:
        >>> data_parallel_ranks(nn.Linear(2, 2))
        1
    """
    if not dist.is_available() or not dist.is_initialized():
        return 1
    ddp = next(
        (m for m in wrappers(model) if isinstance(m, nn.parallel.DistributedDataParallel)), None
    )
    if ddp is not None:
        return int(dist.get_world_size(ddp.process_group))
    try:  # a model sharded over the ranks: FSDP's wrapper, or fully_shard's modules
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:
        return 1
    sharded = (FSDPModule, FullyShardedDataParallel)
    if any(isinstance(m, sharded) for m in model.modules()):
        return int(dist.get_world_size())
    return 1

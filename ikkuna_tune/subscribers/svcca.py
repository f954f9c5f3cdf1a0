"""SVCCA self-similarity: how much each layer's representation still changes between checkpoints.

At every checkpoint a fixed probe set is pushed through the model (through
:meth:`Exporter.probe`: eval mode, no gradients, its own tag, step counters untouched), each
tracked layer's activations are recorded, and SVCCA
(:func:`ikkuna_tune.functional.svcca_similarity`) between them and the previous checkpoint's
activations is published as ``self_similarity``. A
value near 1 means the layer computes (up to an invertible linear map of its leading directions)
what it computed one checkpoint ago: it has converged, and may be frozen.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from ikkuna_tune import keys
from ikkuna_tune.backends import to_numbers
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_fraction_or_none, check_int
from ikkuna_tune.ddp_sync import data_parallel_ranks
from ikkuna_tune.freezing import frozen_prefix, next_to_freeze, tie_closed
from ikkuna_tune.functional.cka import CKASide, cka_side, linear_cka_of_sides, live_fraction
from ikkuna_tune.functional.layer_reduction import LayerReduction, reduce_layer
from ikkuna_tune.functional.svcca import (
    KeptBasis,
    _check_keep,
    kept_basis,
    similarity_of_bases,
    svcca_similarity_or_nan,
)
from ikkuna_tune.messages import DEFAULT_TAG, Message, MessageBundle
from ikkuna_tune.subscribers._device import check_device
from ikkuna_tune.subscribers.base import SUBSCRIPTIONS_STATE
from ikkuna_tune.subscribers.plotting import PlotSubscriber, plot_config
from ikkuna_tune.subscribers.probe import ActivationRecorder, Trigger, check_probe_args, draw_probe
from ikkuna_tune.subscribers.state_values import on_cpu
from ikkuna_tune.subscribers.subscriptions import Subscription

if TYPE_CHECKING:
    from ikkuna_tune.model_access import ModelAccess

__all__ = ["BatchedSVCCASubscriber", "SVCCASubscriber"]

logger = logging.getLogger(__name__)


class BatchedSVCCASubscriber(PlotSubscriber):
    r"""Publishes each tracked layer's SVCCA self-similarity between consecutive checkpoints.

    **Probe set.** ``n`` points drawn once, without replacement, from ``dataset`` with ``seed``;
    only their inputs are kept (so a copy of this subscriber does not copy the data set).

    **Checkpoints.** At every ``epoch_finished`` (``frequency='epoch'``) or every ``frequency``-th
    ``batch_finished`` of training messages with tag ``tag``, the probe set is pushed through the
    model in batches of ``batch_size`` inside :meth:`Exporter.probe` (eval mode,
    ``torch.no_grad()``, messages tagged ``probe_tag``, step counters and weight-update
    bookkeeping untouched). The layers' activations arrive as ``activations`` messages under
    ``probe_tag``; the hooks that produce them exist only during the probe.

    **Activation matrices** (:class:`~ikkuna_tune.subscribers.probe.ActivationRecorder`). A
    layer output of shape (N, F) gives N rows; a convolution output (N, C, \*S) is folded to
    (N * prod(S), C), at most ``max_positions`` rows of it (a fixed random subset, the same at
    every checkpoint). Memory peaks at one batch of activations plus the buffers of this and the
    previous checkpoint; with ``track_init`` the activations at initialisation are kept too,
    with a float64 centred copy of them (prepared once for CKA).

    **Publishing.** ``self_similarity`` (per layer, a 0-d float64 tensor on the activations'
    device) is SVCCA with ``keep`` between this checkpoint's and the previous checkpoint's
    activations; the first checkpoint only records. It is published with the step and epoch of
    the message that triggered the checkpoint. Probe points whose activations at a layer are
    not finite (inputs the model cannot score: a blank image normalised by its maximum) are left
    out of that layer's measures, with a logged warning naming how many (:func:`finite_rows`);
    a layer with more than half of them not finite (diverged) gets NaN, with a logged warning;
    training goes on. Each checkpoint reads the similarities back to
    the host once (one transfer per device), to warn about NaN and to decide on freezing. On a
    GPU each measured layer also synchronises the device with the host twice, in its
    eigendecomposition and in the singular values of its SVCCA (``torch.linalg.eigh`` and
    ``svdvals``, whose errors PyTorch checks on the host), at each checkpoint (once an epoch by
    default), not in the training steps.

    **Where the layer came from** (``track_init=True``, the default). When the subscriber is
    attached to a bus whose Exporter exists (as :func:`ikkuna_tune.watch` does) it records the
    probe activations once, before training. At every checkpoint it then also publishes
    ``init_similarity`` (linear CKA, :func:`ikkuna_tune.functional.cka.linear_cka`, between the
    activations now and at initialisation: how far the layer has come; unlike SVCCA it is not
    blind to invertible linear maps) and ``live_fraction`` (the share of the layer's features
    that vary over the probe set: 0 for a dead layer), both from the first checkpoint on.
    SVCCAScheduler reads all three to tell converged layers from slow, dead and diverged ones.
    Layers of the frozen input-side prefix no longer change and are not measured again (their
    metrics are left out of later reports rather than repeated).

    **Freezing** (``freeze_at``, for use without Tune): a layer whose self-similarity reaches
    ``freeze_at`` is frozen with :meth:`Exporter.freeze`, from the input side: a layer is frozen
    only when every tracked layer before it is frozen (in the order the probe's pass calls them,
    :attr:`Exporter.layer_order`), no untracked module with trainable parameters of its own runs
    before it (:meth:`Exporter.trains_upstream`: a BatchNorm ``module_filter`` left out would
    keep changing its input), and never if it holds the last trainable parameters; with
    ``track_init``, only once it has moved ``min_travel`` from its initialisation (a widening
    layer, an invertible linear map of its input, reads self-similarity 1.0 however its
    weights change; linear CKA is not blind to that). Only a frozen prefix saves backward
    computation.

    The arguments up to ``backend`` are the original ikkuna's, in its order (``dataset`` for
    its ``dataset_meta``); the rest are keywords only.

    Args:
        dataset: a map-style torch ``Dataset`` whose items are inputs or ``(input, ...)`` tuples,
            or a tensor of inputs (first dimension: samples).
        n: probe set size (at least 2, at most the data set size).
        forward_fn: maps a batch of inputs to outputs; by default the model of the Exporter on
            the bus. It must run the Exporter's model, whose hooks record the activations.
        freeze_at: similarity in (0, 1) at which to freeze a layer; ``None`` or, as in the
            original ikkuna, any value >= 1 turns freezing off (the default). Refused for a
            model several ranks train (DDP or FSDP): each rank would freeze on its own
            readings (see :meth:`use_model`).
        batch_size: probe points per forward pass.
        message_bus: attach to this bus right away (its Exporter should exist already).
        tag: tag of the training messages that trigger checkpoints (``None``: any tag).
        subsample: count every ``subsample``-th of the messages that trigger checkpoints
            only, as the original ikkuna's subscriptions do: with ``frequency='epoch'``, a
            check every ``subsample``-th epoch; with an integer ``k``, every ``k * subsample``
            training steps.
        probe_tag: tag of the probe passes' messages.
        frequency: ``'epoch'``, or an integer k to check every k training steps.
        min_travel: with ``track_init``, a layer is frozen only once it has moved at least
            this far from its initialisation (1 - ``init_similarity``), as
            :class:`~ikkuna_tune.tune.SVCCAScheduler` requires; 0 turns the check off.
        keep: fraction of variance SVCCA keeps on each side, in (0, 1].
        max_positions: at most this many rows per folded (convolution) layer.
        seed: seeds the probe set and the position subsets.
        ylims: optional y-axis limits for plots.
        backend: ``'tb'`` or ``None``.
        device: where to send the probe inputs; by default the device of the model's parameters.
            A device this machine lacks is rejected here (``ValueError``), not at the first
            checkpoint.
        track_init: record the activations at initialisation and publish ``init_similarity``
            and ``live_fraction`` (see above). Without it the probe runs once all the same
            when the subscriber is bound to the model, to check the model takes its data.

    Raises:
        ValueError: for invalid arguments, when attached to a bus with no Exporter while no
            ``forward_fn`` was given, and when the model cannot run on the probe data.

    Examples:
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> exporter = Exporter(model)
        >>> svcca = BatchedSVCCASubscriber(torch.randn(32, 4), 16, batch_size=4, freeze_at=0.99,
        ...                                message_bus=exporter.message_bus, backend=None)
        >>> svcca.checkpoint(_epoch_end())  # the first checkpoint only records
        {}
        >>> values = svcca.checkpoint(_epoch_end())  # nothing was trained in between
        >>> {name: round(value, 6) for name, value in values.items()}, exporter.frozen
        ({'0': 1.0, '2': 1.0}, ())
        >>> svcca.min_travel = 0.0  # not moved from initialisation is converged here
        >>> _ = svcca.checkpoint(_epoch_end())
        >>> exporter.frozen
        ('0',)
    """

    uses_model = "probe"

    def __init__(
        self,
        dataset: Dataset[Any] | torch.Tensor,
        n: int,
        forward_fn: Callable[[torch.Tensor], Any] | None = None,
        freeze_at: float | None = None,
        batch_size: int = 256,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        *,
        probe_tag: str = "svcca",
        frequency: int | str = "epoch",
        keep: float = 0.99,
        max_positions: int = 5000,
        seed: int = 0,
        device: torch.device | str | None = None,
        track_init: bool = True,
        min_travel: float = 0.02,
    ) -> None:
        n = check_int("n", n, minimum=2)  # (CCA of one point is none)
        if not isinstance(track_init, bool):
            raise ValueError(f"Expected `track_init` to be True or False but got {track_init!r}")
        self.track_init = track_init
        self.batch_size = check_int("batch_size", batch_size)
        check_probe_args(forward_fn, probe_tag)
        self.trigger = Trigger(frequency)
        self.frequency = self.trigger.frequency
        self.freeze_at = _freeze_threshold(freeze_at)
        if (
            isinstance(min_travel, bool)
            or not isinstance(min_travel, (int, float))
            or not 0 <= min_travel <= 1
        ):
            raise ValueError(
                f"Expected `min_travel` to be a number in [0, 1] but got {min_travel!r}"
            )
        self.min_travel = float(min_travel)
        self._told_not_freezing: set[str] = set()  # layers :meth:`_say_why_not` logged
        self._told_rows: set[str] = set()  # layers :meth:`_say_rows_left_out` logged
        self._told_few_rows: set[str] = set()  # layers warned of fewer rows than features
        self.keep = _check_keep(keep)
        self.max_positions = check_int("max_positions", max_positions)
        if self.max_positions < 2:
            raise ValueError(
                f"Expected `max_positions` to be an integer >= 2 but got {max_positions!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Expected `seed` to be an integer >= 0 but got {seed!r}")
        self.n = n
        self.seed = seed
        self.forward_fn = forward_fn
        self.probe_tag = probe_tag
        self.device = check_device(device)
        self.indices, self.probe_inputs = draw_probe(dataset, n, seed)
        self._recorder = ActivationRecorder(
            self.probe_inputs, self.batch_size, self.max_positions, seed, probe_tag
        )
        self._previous: dict[str, torch.Tensor] | None = None
        # each layer's SVCCA reduction of the previous checkpoint's activations (keep < 1): a
        # matrix is reduced once, at its own checkpoint, and reused at the next
        self._bases: dict[str, KeptBasis] = {}
        # per layer whose rows were not all finite at the previous checkpoint (or at
        # initialisation), which rows were: a comparison with it measures the rows finite in
        # both matrices, not a row repaired in one and real in the other
        self._previous_rows: dict[str, torch.Tensor] = {}
        self._initial_rows: dict[str, torch.Tensor] = {}
        self._initial: dict[str, torch.Tensor] | None = None
        # each layer's CKA side of the activations at initialisation: prepared once, compared
        # with every checkpoint's (rebuilt whenever those activations are recorded or restored)
        self._initial_sides: dict[str, CKASide] = {}
        # each layer's live fraction at initialisation (0: its output is the same for every
        # probe point by construction, as a constant-index embedding's), kept with its side
        self._initial_live: dict[str, torch.Tensor] = {}
        # the activations at initialisation are unknown: training went on from a checkpoint
        # without this subscriber's state (:meth:`restored_without_state`), so nothing is
        # compared with initialisation any more (recorded now, it would be the checkpoint's)
        self._initial_unknown = False
        self._told_constant: set[str] = set()
        published = (
            [keys.SELF_SIMILARITY, keys.INIT_SIMILARITY, keys.LIVE_FRACTION]
            if track_init
            else [keys.SELF_SIMILARITY]
        )
        super().__init__(
            [Subscription(self, [self.trigger.kind], tag, subsample)],
            message_bus,
            plot_config("SVCCA self-similarity", "Self-similarity", ylims),
            backend,
            publishes=dict.fromkeys(published, "DATA"),
        )

    # --------------------------------------------------------------------------- wiring
    def use_model(self, access: ModelAccess | None) -> None:
        """Run the model through ``access``; with ``track_init``, record the activations at
        initialisation now (once, while attached).

        Raises:
            ValueError: with ``freeze_at``, for a model several ranks train
                (``DistributedDataParallel`` or FSDP): each rank reads its own similarities
                (their BatchNorm statistics differ; a probe on rank 0 alone is read there
                only), so a layer would freeze on some ranks and the next step fail across
                them, or a shared decision would wait for ranks that never make one.
        """
        if access is not None and self.freeze_at is not None:
            ranks = data_parallel_ranks(access.model)
            if ranks > 1:
                raise ValueError(
                    f"Expected freeze_at=None for a model trained by {ranks} ranks "
                    f"(DistributedDataParallel or FSDP) but got freeze_at={self.freeze_at}: "
                    "each rank reads its own self-similarities (their BatchNorm statistics "
                    "differ) and would freeze on its own, and the next step would fail across "
                    "the ranks; decide on one rank and call exporter.freeze(name) on every "
                    "rank before the same step, or run the trial as a Ray Train job steered "
                    "by SVCCAScheduler, which does"
                )
        super().use_model(access)
        # a model other than the one the activations at initialisation were recorded from
        # (a watch() that failed after attaching, retried on a new model) is recorded afresh;
        # those restored from a checkpoint stay
        recorded_from = self.__dict__.get("_initial_of")
        stale = recorded_from is not None and recorded_from != id(access)
        if access is None or self.message_bus is None:
            return
        if self.track_init and not self._initial_unknown and (self._initial is None or stale):
            self._initial = self._checked_record()
            self._initial_sides = {}
            self._initial_live = {}
            self._initial_of = id(access)
        elif not self.track_init and self.__dict__.get("_probe_checked") != id(access):
            # one probe pass now, as with track_init: probe data the model cannot take is
            # refused where it is given, not at the first epoch's end, after training
            self._checked_record()
            self._probe_checked = id(access)

    def _checked_record(self) -> dict[str, torch.Tensor]:
        """:meth:`record`, with a failure of the model on the probe data said as such."""
        try:
            return self.record()
        except Exception as error:
            raise ValueError(
                f"{type(self).__name__} cannot run the model on its probe data (the probe "
                f"pass failed: {type(error).__name__}: {error})"
            ) from error

    def restored_without_state(self) -> None:
        """The activations at initialisation are unknown: ``init_similarity`` and
        ``live_fraction`` are no longer published (None in the reports) rather than measured
        against the checkpoint's model as if it were the initial one."""
        if not self.track_init or self._initial_unknown:
            return
        self._forget_initial()
        logger.warning(
            "%s: training goes on from a checkpoint without its state, so the activations at "
            "initialisation are unknown; init_similarity and live_fraction are not published "
            "from here on (the model recorded now is the checkpoint's, not the initial one)",
            type(self).__name__,
        )

    def _forget_initial(self) -> None:
        self._initial_unknown = True
        self._initial = None
        self._initial_sides = {}
        self._initial_live = {}

    def detached(self, message_bus: MessageBus) -> None:
        super().detached(message_bus)
        reason = self.trigger.never_reached()
        if reason is not None:
            logger.warning("%s made no checkpoint: %s", type(self).__name__, reason)

    # ------------------------------------------------------------------------ checkpoints
    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if self.trigger.due(message_or_bundle):
            self.checkpoint(message_or_bundle)

    def checkpoint(self, source: Message | MessageBundle) -> dict[str, float]:
        """Record the probe activations, publish the self-similarities, freeze converged layers.

        ``source`` supplies the step, epoch and tag of the published messages. Returns the
        similarities as Python floats by layer name (empty at the first checkpoint).
        """
        exporter = self._exporter()
        current = self.record()
        previous, self._previous = self._previous, current
        initial = self._initial if self.track_init else None
        settled = self._frozen_prefix(exporter)
        items: list[tuple[str, str, torch.Tensor]] = []
        # per layer, the rows of its matrix left out, and its rows
        unmeasured: list[tuple[str, torch.Tensor, int]] = []
        # per layer compared with initialisation, its live fraction there
        constant: list[tuple[str, torch.Tensor]] = []
        bases, self._bases = self._bases, {}
        # per layer, which rows of its matrix are finite (None: all, known without a read)
        finite_now: dict[str, torch.Tensor | None] = {}
        befores: dict[str, torch.Tensor] = {}
        # per layer whose side at initialisation is built now: its rows left out, which
        initial_unmeasured: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for name, now in list(current.items()):
            if name in settled:
                continue  # a frozen prefix no longer changes: nothing new to measure
            # a few probe points the model cannot score (a blank image normalised by its
            # maximum: 0/0) are left out rather than make the whole layer NaN; the stored
            # matrix is the repaired one, so the next checkpoint compares like with like
            if now.shape[0] <= now.shape[-1] and name not in self._told_few_rows:
                self._told_few_rows.add(name)
                logger.warning(
                    "Layer %r: the probe gives %d rows for %d features; with no more rows than "
                    "features CCA finds correlations of 1 whatever the data, so its similarities "
                    "read high (choose n, or max_positions for a convolution, so that every "
                    "layer has several times more rows than features)",
                    name,
                    now.shape[0],
                    now.shape[-1],
                )
            now, left_out, finite_now[name] = _finite_rows(now)
            current[name] = now
            unmeasured.append((name, left_out, now.shape[0]))
            before = previous.get(name) if previous is not None else None
            if before is not None and before.shape != now.shape:
                logger.warning(
                    "Layer %r: activations of shape %s cannot be compared with the previous "
                    "checkpoint's %s; skipped",
                    name,
                    tuple(now.shape),
                    tuple(before.shape),
                )
                before = None
            start = initial.get(name) if initial is not None else None
            if start is not None and start.shape != now.shape:
                start = None
            # the CKA side and live fraction of ``now``, where made with its basis
            shared: LayerReduction | None = None
            if self.keep < 1:
                if start is not None:  # all three from one centring
                    shared = reduce_layer(now, self.keep)
                    now_basis = self._bases[name] = shared.basis
                else:
                    now_basis = self._bases[name] = kept_basis(now, self.keep)
                if before is not None:
                    before_basis = bases.get(name)
                    if before_basis is None:  # after a restore: reduced here, once
                        before_basis = kept_basis(before, self.keep)
                    similarity = similarity_of_bases(now_basis, before_basis)
                    items.append((keys.SELF_SIMILARITY, name, similarity))
            elif before is not None:
                similarity = svcca_similarity_or_nan(now, before, self.keep)
                items.append((keys.SELF_SIMILARITY, name, similarity))
            if before is not None:
                befores[name] = before
            if start is not None:
                side = self._initial_sides.get(name)
                if side is None or name not in self._initial_live:
                    start, start_left_out, start_rows = _finite_rows(start.to(now.device))
                    side = self._initial_sides[name] = cka_side(start)
                    self._initial_live[name] = live_fraction(start)
                    self._initial_rows.pop(name, None)
                    if start_rows is not None:  # which rows, once their count is read
                        initial_unmeasured.append((name, start_left_out, start_rows))
                now_side = shared.cka if shared is not None else cka_side(now)
                now_live = shared.live if shared is not None else live_fraction(now)
                items.append((keys.INIT_SIMILARITY, name, linear_cka_of_sides(now_side, side)))
                items.append((keys.LIVE_FRACTION, name, now_live))
                constant.append((name, self._initial_live[name]))
        if not items:
            return {}
        # the one host synchronisation of this checkpoint (one per device)
        varies = self._recorder.output_varies
        numbers = to_numbers(
            [(kind, value, 0) for kind, _, value in items]
            + [("rows", count, 0) for _, count, _ in unmeasured]
            + [("live", live, 0) for _, live in constant]
            + [("initial rows", count, 0) for _, count, _ in initial_unmeasured]
            + ([("varies", varies, 0)] if varies is not None else [])
        )
        rows_at = len(items) + len(unmeasured)
        live_at = rows_at + len(constant)
        varies_at = live_at + len(initial_unmeasured)
        self._say_rows_left_out(unmeasured, numbers[len(items) : rows_at], source)
        initial_live = list(zip((name for name, _ in constant), numbers[rows_at:live_at]))
        for (name, _, rows), count in zip(initial_unmeasured, numbers[live_at:varies_at]):
            if count > 0:
                self._initial_rows[name] = rows
        # (not told, no tensor output to compare: as if it varies, the layer alone decides)
        output_varies = bool(numbers[varies_at]) if varies is not None else True
        left_out_now = {
            name: finite_now[name]
            for (name, _, _), count in zip(unmeasured, numbers[len(items) : rows_at])
            if count > 0
        }
        numbers = numbers[: len(items)]
        self._remeasure_on_common_rows(items, numbers, current, befores, left_out_now)
        unvaried = self._constant_by_construction(items, numbers, initial_live, output_varies)
        values: dict[str, float] = {}
        travelled: dict[str, float] = {}  # 1 - init_similarity, where measured
        for (kind, name, value), number in zip(items, numbers):
            if name in unvaried:
                continue  # no measure of a layer whose output never varied: None, not 0
            if kind == keys.INIT_SIMILARITY:
                travelled[name] = 1.0 - number
            if kind == keys.SELF_SIMILARITY:
                values[name] = number
                if math.isnan(number):
                    logger.warning(
                        "Layer %r has non-finite activations at step %d; publishing NaN "
                        "self-similarity",
                        name,
                        source.global_step,
                    )
            self.publish(kind, value, source, module=exporter.modules[name])
        if self.freeze_at is not None:
            self._freeze(values, travelled)
        return values

    def _remeasure_on_common_rows(
        self,
        items: list[tuple[str, str, torch.Tensor]],
        numbers: list[float],
        current: dict[str, torch.Tensor],
        befores: dict[str, torch.Tensor],
        left_out_now: dict[str, torch.Tensor | None],
    ) -> None:
        """Measure again, in place, each similarity between two matrices of which one had
        rows that are not finite (repaired by :func:`finite_rows`) and the other not those
        same rows: on the rows finite in both. A row repaired in one matrix and real in the
        other would count as a change of the layer (a layer that did not move read 0.83).
        This is the rare case; it costs a second read back to the host."""
        previous_rows, self._previous_rows = self._previous_rows, {}
        for name, rows in left_out_now.items():
            if rows is not None:
                self._previous_rows[name] = rows  # for the next checkpoint's comparison
        redo = []
        for position, (kind, name, _) in enumerate(items):
            if kind == keys.SELF_SIMILARITY:
                other_rows = previous_rows.get(name)
            elif kind == keys.INIT_SIMILARITY:
                other_rows = self._initial_rows.get(name)
            else:
                continue
            rows = left_out_now.get(name)
            if rows is None and other_rows is None:
                continue
            now = current[name]
            ok = torch.ones(now.shape[0], dtype=torch.bool, device=now.device)
            for mask in (rows, other_rows):
                if mask is not None:
                    ok &= mask.to(now.device)
            if kind == keys.SELF_SIMILARITY:
                other = befores[name]
                value = svcca_similarity_or_nan(_on_rows(now, ok), _on_rows(other, ok), self.keep)
            else:
                start = _finite_rows(self._initial[name].to(now.device))[0]  # type: ignore[index]
                value = linear_cka_of_sides(
                    cka_side(_on_rows(now, ok)), cka_side(_on_rows(start, ok))
                )
            usable = (2 * ok.sum() >= ok.numel()) & (ok.sum() >= 2)
            value = torch.where(usable, value, torch.full_like(value, math.nan))
            redo.append((position, kind, name, value))
        if not redo:
            return
        for (position, kind, name, value), number in zip(
            redo, to_numbers([(kind, value, 0) for _, kind, _, value in redo])
        ):
            items[position] = (kind, name, value)
            numbers[position] = number

    def _constant_by_construction(
        self,
        items: list[tuple[str, str, torch.Tensor]],
        numbers: list[float],
        initial_live: list[tuple[str, float]],
        output_varies: bool,
    ) -> set[str]:
        """The layers whose output is the same for every probe point now and was at
        initialisation: one that does not depend on the input (a constant-index embedding, a
        class token, BERT's token-type embedding of one type). Such a layer did not die (dead
        is a layer that varied and collapsed) and has nothing to compare: its similarities and
        live fraction are not published (None in the trial's reports) rather than 0, with one
        warning."""
        live_now = {
            name: number
            for (kind, name, _), number in zip(items, numbers)
            if kind == keys.LIVE_FRACTION
        }
        # ...while the network's output does vary over the probe (a network dead from
        # initialisation, all its units off, gives the same output everywhere: dead)
        unvaried = {
            name
            for name, live in initial_live
            if live == 0 and live_now.get(name) == 0 and output_varies
        }
        for name in sorted(unvaried - self._told_constant):
            self._told_constant.add(name)
            logger.warning(
                "Layer %r gives the same output for every probe point, as it did at "
                "initialisation (it does not depend on the input: a constant-index embedding, a "
                "class token): it has no self-similarity or live fraction (None), and does not "
                "count as dead",
                name,
            )
        return unvaried

    def _say_rows_left_out(
        self,
        unmeasured: list[tuple[str, torch.Tensor, int]],
        counts: list[float],
        source: Message | MessageBundle,
    ) -> None:
        """Warn once per layer whose probe activations had rows that are not finite."""
        for (name, _, rows), count in zip(unmeasured, counts, strict=True):
            if count > 0 and name not in self._told_rows:
                self._told_rows.add(name)
                logger.warning(
                    "Layer %r: %d of its %d probe rows (probe points, or their positions for a "
                    "convolution) have activations that are not finite at step %d; its "
                    "similarities are measured on the other rows (with more than half of them "
                    "not finite, the layer's values are NaN)",
                    name,
                    int(count),
                    rows,
                    source.global_step,
                )

    @staticmethod
    def _frozen_prefix(exporter: ModelAccess) -> set[str]:
        """The frozen layers at the input end, as data flows (``layer_order``), before any
        layer with something trainable upstream of it: they cannot change."""
        prefix = []
        for name in frozen_prefix(exporter.layer_order, exporter.frozen):
            if exporter.trains_upstream(name):
                break
            prefix.append(name)
        return set(prefix)

    def _exporter(self) -> ModelAccess:
        exporter = self.model_access
        if exporter is None:
            raise RuntimeError(
                f"{type(self).__name__} needs an Exporter on its bus to record activations"
            )
        return exporter

    def record(self) -> dict[str, torch.Tensor]:
        """Push the probe set through the model now; the activation matrices by layer name.

        Each matrix has one row per probe point (per kept position, for folded layers) and one
        column per feature (channel). Nothing is published and no state changes.
        """
        return self._recorder.record(self._exporter(), self.forward_fn, self.device)

    # ---------------------------------------------------------------------------- freezing
    def _freeze(self, values: dict[str, float], travelled: dict[str, float] | None = None) -> None:
        """Freeze the converged layers at the input end, in order; ``travelled``: each layer's
        distance from its initialisation, where measured (a layer without one is not held
        back by ``min_travel``)."""
        travelled = travelled or {}
        exporter = self._exporter()
        freeze_at = self.freeze_at
        assert freeze_at is not None

        def settled(name: str) -> bool:
            # every call of a layer the forward pass calls more than once ('fc', 'fc#2'): a
            # later call (after layers that still train) may still change
            calls = [k for k in values if k == name or keys.layer_of_call(k) == name]
            if name not in values or not all(values[k] >= freeze_at for k in calls):
                return False  # (NaN never freezes)
            # a layer SVCCA cannot see change (a widening layer: an invertible linear map of
            # its input reads 1.0 between unrelated weights) must have come some way from
            # its initialisation, which CKA sees
            short = [k for k in calls if not travelled.get(k, math.inf) >= self.min_travel]
            if short:
                self._say_not_travelled(name, travelled.get(short[0], math.nan))
                return False
            upstream = exporter.trains_upstream(name)  # its input still changes: no prefix
            if upstream:
                self._say_why_not(name, upstream, [])
                return False
            return True

        # a layer the training code holds fixed is passed over as a frozen one
        done = {*exporter.frozen, *exporter.held_fixed()}
        chosen = next_to_freeze(exporter.layer_order, done, settled, exporter.leaves_trainable)
        # a tied weight freezes in every layer holding it: only with all of them
        chosen, cut = tie_closed(chosen, exporter.frozen, exporter.shares_with)
        if cut is not None:
            self._say_why_not(cut[0], [], cut[1])
        for name in chosen:
            logger.info(
                "Freezing layer %r: self-similarity %.6f >= %s",
                name,
                values.get(name, math.nan),
                freeze_at,
            )
            exporter.freeze(name)

    def _say_not_travelled(self, name: str, travelled: float) -> None:
        """Log once per layer that a layer similar enough to freeze has not come far enough."""
        if name in self._told_not_freezing:
            return
        self._told_not_freezing.add(name)
        logger.warning(
            "Not freezing layer %r, similar enough at freeze_at=%s: it has moved %.4g from "
            "its initialisation (1 - init_similarity), less than min_travel=%s; SVCCA cannot "
            "see some changes (a widening layer reads 1.0 whatever its weights), so it waits "
            "until linear CKA sees the layer has moved (freezing goes from the input side, so "
            "the layers after it wait too)",
            name,
            self.freeze_at,
            travelled,
            self.min_travel,
        )

    def _say_why_not(self, name: str, upstream: list[str], waiting: list[str]) -> None:
        """Log once per layer why a layer similar enough to freeze is not frozen."""
        if name in self._told_not_freezing:
            return
        self._told_not_freezing.add(name)
        why = []
        if upstream:
            why.append(
                f"{upstream} still train(s) upstream of it, or where the probe cannot tell "
                "(modules outside the tracked layers, layers the probe never called)"
            )
        if waiting:
            why.append(
                f"it shares a parameter with {waiting} (or with a layer tied to it), which would "
                "stay trainable"
            )
        logger.warning(
            "Not freezing layer %r, similar enough at freeze_at=%s: %s (freezing goes from the "
            "input side, so the layers after it wait too)",
            name,
            self.freeze_at,
            "; ".join(why),
        )

    # -------------------------------------------------------------------------- checkpoint
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seed": self.seed,
            "max_positions": self.max_positions,
            "keep": self.keep,
        }

    def state_dict(self) -> dict[str, Any]:
        """The previous checkpoint's activations (on the CPU) and the step counter."""
        previous = initial = None
        # one transfer per device and dtype for all of them, not one per layer
        saved = on_cpu([*(self._previous or {}).values(), *(self._initial or {}).values()])
        if self._previous is not None:
            previous = dict(zip(self._previous, saved))
            saved = saved[len(previous) :]
        if self._initial is not None:
            initial = dict(zip(self._initial, saved))
        state = {
            "previous": previous,
            "initial": initial,
            "batches": self.trigger.batches,
            "probe": self._fingerprint(),
        }
        if self._initial_unknown:  # (saved only then: states saved before read the same)
            state["initial_unknown"] = True
        # which rows of the kept matrices were not finite, and repaired (saved only where some
        # were: a repaired row compared with a real one would read as a change of the layer)
        for key, rows in (
            ("previous_rows", self._previous_rows),
            ("initial_rows", self._initial_rows),
        ):
            if rows:
                state[key] = {name: mask.detach().cpu() for name, mask in rows.items()}
        counts = self._subscription_counts()  # where the thinning stands, if it thins
        if counts is not None:
            state[SUBSCRIPTIONS_STATE] = counts
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the next checkpoint compares against it.

        Raises:
            ValueError: for missing or unknown keys, or a state saved with another probe set.
        """
        state = self._load_subscription_counts(state)
        keys = {"previous", "batches", "probe"}
        optional = {"initial", "initial_unknown", "previous_rows", "initial_rows"}
        if not isinstance(state, dict) or not keys <= set(state) <= keys | optional:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                "Expected a state with keys ['batches', 'previous', 'probe'] (and optionally "
                f"'initial', 'initial_unknown', 'previous_rows', 'initial_rows') but got {got}"
            )
        if state["probe"] != self._fingerprint():
            raise ValueError(
                f"The state was saved with probe settings {state['probe']} but this subscriber "
                f"uses {self._fingerprint()}"
            )
        for key in ("previous", "initial", "previous_rows", "initial_rows"):
            held = state.get(key)
            if held is not None and (
                not isinstance(held, dict)
                or not all(isinstance(t, torch.Tensor) for t in held.values())
                or (key.endswith("_rows") and any(t.dtype != torch.bool for t in held.values()))
            ):
                kind = "boolean tensors" if key.endswith("_rows") else "tensors"
                raise ValueError(f"Expected `{key}` to map layer names to {kind}, or be None")
        previous = state["previous"]
        self._previous = None if previous is None else dict(previous)
        self._bases = {}
        self._previous_rows = dict(state.get("previous_rows") or {})
        self._initial_rows = dict(state.get("initial_rows") or {})
        if state.get("initial_unknown", False) is not False:
            if state["initial_unknown"] is not True:
                raise ValueError(
                    f"Expected `initial_unknown` to be True but got {state['initial_unknown']!r}"
                )
            self._forget_initial()  # whatever model comes, its start stays unknown
        elif state.get("initial") is not None:
            self._initial_unknown = False
            self._initial = dict(state["initial"])
            self._initial_sides = {}
            self._initial_live = {}
            self._initial_of = None  # from the checkpoint: kept whatever model comes
        self.trigger.batches = int(state["batches"])


def _freeze_threshold(freeze_at: object) -> float | None:
    """``freeze_at`` as a similarity in (0, 1) at which to freeze, or None: no freezing, for
    None and, as in the original ikkuna (whose default was 10), any number >= 1.

    Examples:
        >>> _freeze_threshold(0.99), _freeze_threshold(None), _freeze_threshold(10)
        (0.99, None, None)
    """
    real = isinstance(freeze_at, (int, float)) and not isinstance(freeze_at, bool)
    # (NaN is not >= 1: it is refused below)
    if real and freeze_at >= 1:  # type: ignore[operator]
        return None
    try:
        return check_fraction_or_none("freeze_at", freeze_at)
    except ValueError:
        raise ValueError(
            f"Expected `freeze_at` to be a similarity in (0, 1), or None or a number >= 1 "
            f"(no freezing), but got {freeze_at!r}"
        ) from None


class SVCCASubscriber(BatchedSVCCASubscriber):
    """:class:`BatchedSVCCASubscriber` that pushes the whole probe set through in one batch.

    Arguments as for :class:`BatchedSVCCASubscriber`, without ``batch_size`` (the original
    ikkuna's signature: ``SVCCASubscriber(dataset, n, *args, **kwargs)``, the positional ones
    ``forward_fn`` and ``freeze_at``).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> exporter = Exporter(model)
        >>> bus = exporter.message_bus
        >>> svcca = SVCCASubscriber(torch.randn(32, 4), 16, message_bus=bus, backend=None)
        >>> sorted(svcca.checkpoint(_epoch_end()))  # the first checkpoint only records
        []
        >>> with torch.no_grad():
        ...     _ = model[2].weight.mul_(2.0)  # a linear map of the same features
        >>> round(svcca.checkpoint(_epoch_end())["2"], 6)
        1.0
    """

    def __init__(self, dataset: Dataset[Any] | torch.Tensor, n: int, *args: Any, **kwargs: Any):
        if "batch_size" in kwargs:
            raise ValueError(
                f"SVCCASubscriber pushes the whole probe set through in one batch, so it takes "
                f"no `batch_size` (got {kwargs['batch_size']!r}); use BatchedSVCCASubscriber "
                "for probe passes in batches"
            )
        if len(args) > 2:
            raise TypeError(
                "SVCCASubscriber takes dataset, n, forward_fn and freeze_at by position (the "
                f"original ikkuna's order, without batch_size) but got {2 + len(args)} "
                "positional arguments; pass the others by keyword (message_bus=...)"
            )
        try:
            super().__init__(dataset, n, *args, batch_size=check_int("n", n, minimum=2), **kwargs)
        except TypeError as error:
            # Python's own message names BatchedSVCCASubscriber.__init__, a class the caller
            # never named (an unknown keyword, too many arguments, one given twice)
            text = str(error)
            prefix = "BatchedSVCCASubscriber.__init__() "
            if not text.startswith(prefix):
                raise
            taken = [
                name
                for name in inspect.signature(BatchedSVCCASubscriber.__init__).parameters
                if name not in ("self", "dataset", "n", "batch_size")
            ]
            raise TypeError(
                f"SVCCASubscriber {text[len(prefix) :]}; it takes a dataset, n and then "
                f"{', '.join(taken)}"
            ) from None


def _finite_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`finite_rows`, and which rows of ``x`` are finite (None: all of them, known on
    the CPU without building the mask)."""
    if x.device.type == "cpu" and math.isfinite(float(x.sum())):
        # on a CPU reading a number back costs nothing: the common case (every row finite, so
        # the sum is too, unless it overflows) copies nothing
        return x, torch.zeros((), dtype=torch.int64), None
    ok = torch.isfinite(x).all(dim=1)
    good = ok.sum()
    usable = (2 * good >= x.shape[0]) & (good >= 2)
    fixed = torch.where(ok[:, None] | ~usable, x, _row_mean(x, ok).to(x.dtype))
    return fixed, torch.where(usable, x.shape[0] - good, 0), ok


def _row_mean(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The mean of the rows of ``x`` where ``ok``."""
    return torch.where(ok[:, None], x, 0).sum(dim=0) / ok.sum().clamp_min(1)


def _on_rows(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``x`` with every row not ``ok`` replaced by the mean of the others: centred, those rows
    are zero, so SVCCA and CKA of two such matrices measure the ``ok`` rows alone."""
    return torch.where(ok[:, None], x, _row_mean(x, ok).to(x.dtype))


def finite_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows: probe points) with each row that holds a NaN or an infinity replaced by the
    mean of the finite rows, and the number of rows replaced (a 0-d tensor; off the CPU
    nothing is read back to the host).

    Centred, a replaced row is zero: it adds nothing to a covariance, a Gram matrix or a cross
    product. Of two checkpoints compared, the subscribers measure the rows finite in both
    (a row repaired in one matrix only is repaired in the other too), so SVCCA and linear CKA
    see those rows alone. With fewer than half the rows
    finite, or fewer than 2, ``x`` is returned as it is: a layer that is mostly not finite has
    diverged, and its values stay NaN.

    Examples:
        >>> x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0]])
        >>> fixed, count = finite_rows(x)
        >>> fixed[1].tolist(), int(count)
        ([2.0, 3.0], 1)
    """
    fixed, count, _ = _finite_rows(x)
    return fixed, count


def _epoch_end() -> Message:
    """An ``epoch_finished`` message (for the examples)."""
    from ikkuna_tune.messages import NetworkMessage

    return NetworkMessage("epoch_finished", DEFAULT_TAG, 0, 0, 0, None)

"""Loss and accuracy: the training loss, the accuracy of each training batch, and the accuracy
over a held-out data set evaluated through the Exporter's probe."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ikkuna_tune import functional as F
from ikkuna_tune import keys
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_int
from ikkuna_tune.functional.accuracy import (
    Counts,
    check_targets,
    check_top_label,
    class_range,
    rate,
    without_ignored,
)
from ikkuna_tune.messages import DEFAULT_TAG, LabelsMessage, Message, MessageBundle
from ikkuna_tune.subscribers._device import check_device, device_of, own_random_state
from ikkuna_tune.subscribers.plotting import PlotSubscriber, plot_config
from ikkuna_tune.subscribers.probe import Trigger, check_probe_args
from ikkuna_tune.subscribers.subscriptions import Subscription, SynchronizedSubscription

if TYPE_CHECKING:
    from ikkuna_tune.model_access import ModelAccess

__all__ = ["LossSubscriber", "TestAccuracySubscriber", "TrainAccuracySubscriber"]

logger = logging.getLogger(__name__)


class LossSubscriber(PlotSubscriber):
    """Draws the training loss at every step (its mean, if the loss is not a scalar).

    The loss is already on the bus as the built-in ``loss`` kind, so this subscriber publishes
    no new kind; it sends ``loss`` to the backend.

    Args:
        message_bus: attach to this bus right away.
        tag: receive only messages with this tag (``None``: every tag).
        subsample: draw every ``subsample``-th loss.
        ylims: optional y-axis limits for plots.
        backend: ``'tb'`` or ``None``.

    Examples:
        >>> from ikkuna_tune.backends import Backend
        >>> class PrintingBackend(Backend):
        ...     def add_scalar(self, tag, value, step):
        ...         print(tag, float(value), step)
        >>> bus = MessageBus()
        >>> LossSubscriber(bus, backend=None).backend = PrintingBackend()
        >>> bus.publish_network_message("loss", torch.tensor([1.0, 2.0]), global_step=3,
        ...                             train_step=3, epoch=0)  # a mean of a loss per sample
        loss 1.5 3
    """

    def __init__(
        self,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        super().__init__(
            [Subscription(self, ["loss"], tag, subsample)],
            message_bus,
            plot_config("Loss", "Loss", ylims),
            backend,
        )

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        data = message_or_bundle.data if isinstance(message_or_bundle, Message) else None
        if isinstance(data, torch.Tensor):
            # the backend keeps it until its next flush: a copy, since the published loss is
            # the user's own tensor, which their code may change in place (``loss /= k``)
            value = data.detach().clone() if data.numel() == 1 else data.detach().float().mean()
            tag = self._tag("loss", None, message_or_bundle.tag)  # 'loss', 'loss/eval', ...
            self.backend.add_scalar(tag, value, message_or_bundle.global_step)


class TrainAccuracySubscriber(PlotSubscriber):
    """The accuracy of each training batch: the fraction of samples whose arg-max output equals
    the label (:func:`ikkuna_tune.functional.accuracy`).

    Needs ``network_output`` and ``input_labels`` of the same step (publish labels with
    :meth:`Exporter.wrap_loss` or :meth:`Exporter.publish_labels`). Publishes ``train_accuracy``
    (network-wide, a 0-d tensor) per step. Negative labels (an ignore index such as
    ``cross_entropy``'s ``-100``, e.g. padding) are not counted; a batch with no label left to
    count has accuracy 0; samples whose scores hold a NaN are never correct, and a batch of
    nothing else has accuracy NaN. A step of several forward passes before one optimizer step
    (gradient accumulation) is one batch: each of its passes publishes the accuracy over all of
    the step's passes so far, so the last (what a report takes) is that of the whole step (of
    its passes so far, where an epoch ends among them: see :meth:`Exporter.epoch_finished`).
    With ``tag=None``, each tag is counted on its own: the passes of an evaluation under its
    own tag (which carry the last training step's number) give the accuracy over all of them,
    without that step's training samples. An evaluation ends at an epoch's end, and (where the
    subscriber sees the training steps too, ``tag=None``) at the next training step: a test
    evaluation after the epoch's validation, or a validation before training and one after
    the first step, are each counted on their own.

    The first labels of each loss are checked to be classification labels
    (:func:`ikkuna_tune.functional.accuracy.check_targets`): float labels and integer one-hot
    labels cost one read back to the host there, once; later steps read nothing back.

    The output counted is the one the loss scored, when :meth:`Exporter.wrap_loss` published
    the labels (a batch run through the model in chunks and concatenated for one loss, or a
    second pass run before the first pass's loss); else the step's last forward pass's. Every
    wrapped loss with class labels counts (several heads are pooled); the targets of one that
    has none (torch's regression losses, or ``wrap_loss(loss, classes=False)``) are left out,
    and so, with a warning, are those of a loss whose first labels are no class labels, and
    those of a loss of unknown kind in a step where a loss known to take class labels counts
    (a center loss or a distillation term beside a cross-entropy).

    Arguments as for :class:`LossSubscriber`, and ``threshold``: for a model with one output
    per sample, the score above which it predicts class 1; by default the Exporter's
    ``binary_threshold`` (0 for logits, 0.5 once :meth:`Exporter.wrap_loss` wrapped a loss that
    takes probabilities, such as :class:`torch.nn.BCELoss`).

    Raises:
        ValueError: at the first step, if labels published by hand are no classification
            labels (say, the real-valued targets of a regression), naming what was expected
            and what was got.

    Examples:
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> bus = MessageBus()
        >>> _ = TrainAccuracySubscriber(bus, backend=None)
        >>> _ = CallbackSubscriber(["train_accuracy"], lambda m: print(float(m.data)), bus)
        >>> step = {"global_step": 0, "train_step": 0, "epoch": 0}
        >>> output = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # predicts classes 0 and 1
        >>> bus.publish_network_message("network_output", output, **step)
        >>> bus.publish_network_message("input_labels", torch.tensor([0, 0]), **step)
        0.5
    """

    def __init__(
        self,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        threshold: float | None = None,
    ) -> None:
        self.threshold = _check_threshold(threshold)
        super().__init__(
            [SynchronizedSubscription(self, ["network_output", "input_labels"], tag, subsample)],
            message_bus,
            plot_config("Train accuracy", "Accuracy", ylims),
            backend,
            publishes={keys.TRAIN_ACCURACY: "META"},
        )
        #: the wrapped losses (their number; None for labels published by hand) whose first
        #: labels were checked to be class labels
        self._labels_checked: set[int | None] = set()
        self._left_out: set[int | None] = set()  # the wrapped losses left out
        #: per tag, the step being counted (an evaluation's: its step and epoch) and what it
        #: counted so far (device tensors), of losses known to take class labels and of the
        #: others (an evaluation pass under its own tag carries the last training step's
        #: number: its counts are its own)
        self._step: dict[str, tuple[Any, Counts | None, Counts | None]] = {}
        self._told_unknown = False
        #: the samples counted for the latest accuracy published under each tag
        self._counted: dict[str, torch.Tensor] = {}

    def _say_unknown_left_out(self) -> None:
        if not self._told_unknown:
            self._told_unknown = True
            logger.warning(
                "TrainAccuracySubscriber: a wrapped loss of unknown kind is left out of train "
                "accuracy in the steps where a loss known to take class labels counts (a "
                "center loss or a distillation term beside a cross-entropy); "
                "wrap_loss(loss, classes=True) counts it"
            )

    def _leave_out(self, source: int | None, why: str) -> None:
        """Leave out the labels of wrapped loss ``source`` from now on (one warning)."""
        if source not in self._left_out:
            self._left_out.add(source)
            logger.warning(
                "TrainAccuracySubscriber: the targets of the loss wrapped number %s are left "
                "out of train accuracy: %s (a model trained with no other loss reports no train "
                "accuracy; wrap_loss(loss, classes=False) says so without this warning)",
                source,
                why,
            )

    def unmeasurable(self) -> dict[str, str]:
        """``train_accuracy``, with why, while every wrapped loss so far was left out and
        nothing was counted (a regression trained on ``mse_loss``)."""
        if not self._left_out or self._counted or self._labels_checked:
            return {}
        return {
            keys.TRAIN_ACCURACY: "the targets of every wrapped loss so far are no class labels "
            "(a regression loss's, say), which have no accuracy"
        }

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if isinstance(message_or_bundle, MessageBundle):
            bundle = message_or_bundle
            labels = bundle.messages["input_labels"]
            # (the output the loss scored, when the labels came with it: see LabelsMessage)
            output = bundle["network_output"]
            wrapped = isinstance(labels, LabelsMessage)
            source = labels.source if wrapped else None
            if wrapped and labels.classes is False:  # a regression loss's targets, say
                self._leave_out(source, "its loss has no class labels (a regression loss, say)")
                return
            if source in self._left_out:
                return
            told = labels.binary_threshold if wrapped else None
            threshold = _binary_threshold(self.threshold, self.model_access, told)
            if source not in self._labels_checked:  # the first labels of each wrapped loss
                _check_scores(output)
                try:
                    check_targets(labels.data, output)  # one host read for float/one-hot labels
                except ValueError as error:
                    if source is None:  # labels published by hand: they are meant as classes
                        raise
                    self._leave_out(source, str(error))
                    return
                _warn_if_probabilities(output, threshold, type(self).__name__)
                self._labels_checked.add(source)
            target = labels.data
            ignored = labels.ignore_index if wrapped else None
            if ignored is not None:
                target = without_ignored(target, output, ignored)  # counts nowhere
            counts = F.count_predictions(output, target, threshold[0])
            # a step's counts of losses known to take class labels, and of the others (a loss
            # of one's own): where the first count, the others are left out (a center loss's
            # or a distillation term's targets beside a cross-entropy's)
            known = not wrapped or labels.classes is True
            if bundle.tag == DEFAULT_TAG:
                at: Any = bundle.global_step
                if len(self._step) > (DEFAULT_TAG in self._step):
                    # a training step ends the evaluations before it: the next one under their
                    # tags (which carry the last training step's number) is counted afresh
                    self._step = {t: held for t, held in self._step.items() if t == DEFAULT_TAG}
            else:  # an evaluation: its passes of one step and epoch (an epoch's end ends it)
                at = (bundle.global_step, bundle.epoch)
            step, *buckets = self._step.get(bundle.tag, (None, None, None))
            if step != at:
                buckets = [None, None]
            slot = 0 if known else 1
            held = buckets[slot]
            buckets[slot] = counts if held is None else _added(held, counts)
            self._step[bundle.tag] = (at, buckets[0], buckets[1])
            known_counts, other_counts = buckets
            if known_counts is None or other_counts is None:
                chosen: Counts = known_counts or other_counts  # type: ignore[assignment]
                value, counted = rate(chosen), chosen.total
            else:
                self._say_unknown_left_out()
                # (where the known losses' labels were all ignored, the others', on the device)
                some = known_counts.total > 0
                value = torch.where(some, rate(known_counts), rate(other_counts))
                counted = torch.where(some, known_counts.total, other_counts.total)
            self._counted[bundle.tag] = counted
            self.publish(keys.TRAIN_ACCURACY, value, bundle)

    def sample_counts(self) -> dict[tuple[str, str], Any]:
        """The labels counted for the latest train accuracy of each tag (those not ignored):
        a data-parallel job weights each rank's accuracy by them, the accuracy over all the
        ranks' samples of the step, whatever the size of each rank's shard.

        Examples:
            >>> bus = MessageBus()
            >>> accuracy = TrainAccuracySubscriber(bus, backend=None)
            >>> step = {"global_step": 0, "train_step": 0, "epoch": 0}
            >>> bus.publish_network_message("network_output", torch.eye(3), **step)
            >>> bus.publish_network_message("input_labels", torch.tensor([0, 2, -1]), **step)
            >>> {key: int(n) for key, n in accuracy.sample_counts().items()}  # -1: ignored
            {('train_accuracy', 'default'): 2}
        """
        return {(keys.TRAIN_ACCURACY, tag): counted for tag, counted in self._counted.items()}


def _check_threshold(threshold: float | None) -> float | None:
    """``threshold`` (None or a finite number) as a float, or a ValueError saying what was got."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"Expected `threshold` to be a number or None but got {threshold!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"Expected `threshold` to be a finite number but got {threshold!r}")
    return float(threshold)


def _binary_threshold(
    own: float | None, access: ModelAccess | None, told: float | None = None
) -> tuple[float, bool]:
    """The score above which one output per sample predicts class 1: the subscriber's own,
    else the one the labels' message tells (``told``), else its Exporter's
    ``binary_threshold``, else 0 (a logit); and whether it is known (given, or set from the
    loss by :meth:`Exporter.wrap_loss`) rather than assumed."""
    if own is not None:
        return own, True
    if told is not None:
        return float(told), True
    known = bool(getattr(access, "scores_known", False))
    return float(getattr(access, "binary_threshold", 0.0)), known


def _warn_if_probabilities(output: torch.Tensor, threshold: tuple[float, bool], who: str) -> None:
    """Warn when one output per sample, assumed to be logits (``threshold`` 0, not known),
    lies wholly in [0, 1], as a sigmoid's does: read as logits, every sample would be
    predicted class 1. One read back to the host; call it once."""
    if threshold != (0.0, False) or not isinstance(output, torch.Tensor):
        return
    if not output.is_floating_point() or output.numel() < 2:
        return
    if not (output.dim() == 1 or (output.dim() >= 2 and output.shape[1] == 1)):
        return
    finite = output.detach()[output.detach().isfinite()]
    if finite.numel() >= 2 and bool(((finite >= 0) & (finite <= 1)).all()):
        logger.warning(
            "%s: the model gives one output per sample, all in [0, 1] (%d of them), read as "
            "logits: class 1 wherever one is above 0. If they are probabilities (a sigmoid at "
            "the end), pass threshold=0.5, or train with nn.BCELoss / "
            "F.binary_cross_entropy through Exporter.wrap_loss, which sets it",
            who,
            finite.numel(),
        )


def _added(a: Counts, b: Counts) -> Counts:
    """The sum of two batches' :class:`Counts` (on ``b``'s device)."""
    return Counts(*(x.to(y.device) + y for x, y in zip(a, b, strict=True)))


def _check_scores(output: object) -> None:
    """Refuse a ``network_output`` that is no batch of scores (a 0-d tensor: the loss a model
    returns first, as ``(loss, logits)``), naming the Exporter's ``output_fn``."""
    if isinstance(output, torch.Tensor) and output.dim() == 0:
        raise ValueError(
            "Expected `network_output` to be a batch of scores for train accuracy but got a 0-d "
            "tensor (the first tensor of the model's output is a scalar: a loss computed in "
            "forward?); choose the scores with Exporter(..., output_fn=lambda out: out[1]) or "
            "ik.watch(..., output_fn=...)"
        )


def _module_of(forward_fn: Callable[..., Any]) -> nn.Module | None:
    if isinstance(forward_fn, nn.Module):
        return forward_fn
    owner = getattr(forward_fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _modules_named_by(forward_fn: Callable[..., Any]) -> list[nn.Module]:
    """The modules a plain function (a lambda around the model, say) refers to: those of its
    closure and the globals it names."""
    try:
        names = inspect.getclosurevars(forward_fn)
    except (TypeError, ValueError):  # not a Python function
        return []
    values = [*names.nonlocals.values(), *names.globals.values()]
    return [v for v in values if isinstance(v, nn.Module)]


@contextmanager
def _evaluating(*models: nn.Module | None) -> Iterator[None]:
    """Eval mode and no gradients; every module's training flag restored afterwards."""
    modes = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _check_some_counted(labels: torch.Tensor, ignore_index: int | None) -> None:
    """Raise if no class index in ``labels`` is counted: all negative (an ignore index such as
    ``-100``) or ``ignore_index``. Its accuracy would read 0, as if the model were always wrong.

    Examples:
        >>> _check_some_counted(torch.tensor([-100, 2, 1]), ignore_index=2)
        >>> _check_some_counted(torch.tensor([-100, 2, 2]), ignore_index=2)
        Traceback (most recent call last):
        ...
        ValueError: Expected a test data set with labels to count but every one of its 3 ...
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        return  # one-hot or soft labels: every sample counts
    counted = labels >= 0
    if ignore_index is not None:
        counted &= labels != ignore_index
    if len(labels) and not bool(counted.any()):
        left_out = "negative" + (
            "" if ignore_index is None else f", or ignore_index={ignore_index}"
        )
        raise ValueError(
            "Expected a test data set with labels to count but every one of its "
            f"{len(labels)} labels is left out ({left_out}): its accuracy would read 0"
        )


def _first_labels(
    loader: DataLoader[Any], slices: tuple[tuple[torch.Tensor, ...], int] | None
) -> torch.Tensor | None:
    """The labels of the loader's first batch, fetched without iterating the loader (no worker
    processes, no random draws for a sampler or seed): the first samples of a map-style data set,
    collated by the loader's ``collate_fn``. None where they cannot be had that way (an iterable
    data set, samples that fetching or collating rejects out of order); the first evaluation
    checks them then.

    Raises:
        ValueError: for an empty data set, or a first batch that is no ``(inputs, labels)``
            pair (a dict, inputs alone): known here, it is refused here, not after training.
    """
    if slices is not None:
        tensors, size = slices
        if len(tensors[0]) == 0:
            raise ValueError("Expected a test data set with samples but got an empty one")
        if len(tensors) != 2:
            got = "inputs alone" if len(tensors) < 2 else f"{len(tensors)} tensors a sample"
            raise ValueError(
                "Expected the test data to hold (inputs, labels) pairs but got a TensorDataset "
                f"of {got} (which of them are the labels cannot be told: pass a data set of "
                "(input, label) pairs)"
            )
        return tensors[1][:size]
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return None
    try:
        n = len(dataset)
    except Exception:  # best effort: the first evaluation checks the labels
        return None
    if n == 0:
        raise ValueError("Expected a test data set with samples but got an empty one")
    try:
        batches = len(loader)
    except TypeError:  # a sampler without a length
        batches = None
    if batches == 0:  # drop_last with fewer samples than a batch, an empty sampler
        raise ValueError(
            f"Expected a test DataLoader that yields batches but got one that yields none "
            f"({n} samples, batch_size={loader.batch_size}, drop_last={loader.drop_last})"
        )
    try:
        if loader.batch_sampler is None:  # no automatic batching: every sample is a batch
            batch = loader.collate_fn(dataset[0])
        else:
            size = loader.batch_size if loader.batch_size is not None else 256
            batch = loader.collate_fn([dataset[i] for i in range(min(n, size))])
    except Exception:  # best effort: the first evaluation checks the labels
        return None
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {type(batch).__name__}"
        if isinstance(batch, (tuple, list)):
            got += f" of {len(batch)}"
        raise ValueError(
            f"Expected the test data to yield (inputs, labels) batches but its first batch is "
            f"{got}: pass a data set of (input, label) pairs"
        )
    return batch[1] if isinstance(batch[1], torch.Tensor) else None


def _warn_if_dropping(loader: DataLoader[Any]) -> None:
    """Warn when a test DataLoader's ``drop_last`` leaves samples out of every evaluation."""
    batch = loader.batch_size
    try:
        size = len(loader.sampler)  # type: ignore[arg-type]
    except TypeError:  # an iterable data set: its size is unknown here
        return
    if loader.drop_last and batch and size % batch:
        logger.warning(
            "TestAccuracySubscriber: the test DataLoader has drop_last=True, so %d of its %d "
            "samples are never evaluated: test accuracy and its chance level are over the "
            "other %d (build the loader with drop_last=False for the whole set)",
            size % batch,
            size,
            size - size % batch,
        )


def _summed(total: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    """``total + counts`` for per-class counts of possibly different lengths."""
    if total is None:
        return counts
    if len(total) < len(counts):
        total, counts = counts, total
    return torch.cat([total[: len(counts)] + counts.to(total.device), total[len(counts) :]])


class TestAccuracySubscriber(PlotSubscriber):
    """The accuracy over a whole held-out data set, evaluated every ``frequency`` training
    batches (or at the end of every epoch).

    Evaluation runs inside :meth:`Exporter.probe` (eval mode, ``torch.no_grad()``, its messages
    under ``probe_tag``, step counters and weight-update bookkeeping untouched, every module's
    training flag restored), with torch's random state forked (a DataLoader's seed is drawn
    from it, and must not change the training run's draws). Accuracy is correct predictions
    over all samples of the data set, not a mean of batch means; negative labels (an ignore
    index such as ``cross_entropy``'s ``-100``, e.g. padding) are not counted, nor is
    ``ignore_index`` (by default the non-negative one of the training loss, as train accuracy
    leaves it out). A ``TensorDataset`` whose labels are all left out so is refused when the
    subscriber is made; another data set with no label left to count has accuracy 0. A sample whose
    scores hold a NaN is never correct, and when every sample's do (a diverged model) the
    accuracy is NaN, not the share of the class an arg-max of NaN names. Publishes
    ``test_accuracy`` (network-wide, a 0-d tensor, at the step of the batch that triggered it)
    and beside it
    ``test_accuracy_chance``: the accuracy of always answering the data set's most frequent
    class (:attr:`chance`), which SVCCAScheduler reads: it freezes no layer of a trial at
    chance, and other trials that stand at chance have learned nothing to be behind.

    Args:
        dataset: a torch ``Dataset`` of ``(input, label)`` pairs, or a ``DataLoader`` over one.
        forward_fn: maps a batch of inputs to outputs; by default the model of the Exporter on
            the bus this subscriber is attached to. A tensor it returns is taken as the scores
            as it is (the Exporter's ``output_fn`` is for the model's own output). The model it
            runs is evaluated in eval mode: the module it is or is a method of, or the modules
            a plain function names (its closure and globals), and the watched model.
        batch_size: batch size for a ``Dataset`` (default 256); not allowed with a DataLoader.
        message_bus: attach to this bus right away.
        frequency: evaluate after every ``frequency``-th training batch, or ``'epoch'`` to
            evaluate at every ``epoch_finished``.
        ylims: optional y-axis limits for plots.
        tag: tag of the training messages that trigger evaluation.
        subsample: count only every ``subsample``-th trigger message.
        backend: ``'tb'`` or ``None``.
        probe_tag: tag of the evaluation passes' own messages.
        device: where to move each batch; by default the device of the model's parameters (when
            the model is known), else the batch is passed on as it is. A device this machine
            lacks is rejected here (``ValueError``), not at the first evaluation.
        threshold: as for :class:`TrainAccuracySubscriber` (one output per sample: the score
            above which it predicts class 1; by default the Exporter's ``binary_threshold``).
        ignore_index: a label that counts nowhere, neither in the accuracy nor in its chance
            level (padding, a segmentation's void class ``255``); by default the Exporter's
            :attr:`~ikkuna_tune.exporter.Exporter.ignore_index`, the non-negative
            ``ignore_index`` that every loss it wrapped with class labels was given (a loss
            ``nn.CrossEntropyLoss(ignore_index=0)``, say), else none. Negative labels never
            count.

    The labels must be classification labels (see
    :func:`ikkuna_tune.functional.accuracy.check_targets`). Those of the first batch are checked
    here, on the CPU, without iterating the data (the first samples of a ``Dataset``, collated as
    the ``DataLoader`` would); where that is not possible (an iterable data set), and against the
    model's outputs, they are checked in the first evaluation.

    Raises:
        ValueError: for invalid arguments; when attached to a bus without an Exporter and no
            ``forward_fn`` was given; for labels of the first batch that are no classification
            labels (say, the real-valued targets of a regression), naming what was expected and
            what was got; when attached to a bus with an Exporter, for a first batch the model
            cannot evaluate (inputs of the wrong shape, outputs that are no scores for the
            labels): that batch is evaluated then, its messages under ``probe_tag``.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1, 1, 1]))
        >>> def scores(x):  # class 1 where x > 0
        ...     return torch.cat([-x, x], dim=1)
        >>> sub = TestAccuracySubscriber(data, forward_fn=scores, batch_size=2, backend=None)
        >>> sub.evaluate()  # 2 of 3 samples, not the mean of the batches' 0.5 and 1.0
        tensor(0.6667)
        >>> sub.chance  # every label is 1: answering 1 always is right every time
        tensor(1.)
    """

    __test__ = False  # not a pytest test class, despite its name
    uses_model = "evaluate"

    def __init__(
        self,
        dataset: Dataset[Any] | DataLoader[Any],
        forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int | None = None,
        message_bus: MessageBus | None = None,
        frequency: int | str = 100,
        ylims: tuple[float, float] | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        backend: str | None = "tb",
        probe_tag: str = "test",
        device: torch.device | str | None = None,
        threshold: float | None = None,
        ignore_index: int | None = None,
    ) -> None:
        self.threshold = _check_threshold(threshold)
        if ignore_index is not None:
            check_int("ignore_index", ignore_index, minimum=0)
        self.ignore_index = ignore_index
        self._slices: tuple[tuple[torch.Tensor, ...], int] | None = None
        if isinstance(dataset, DataLoader):
            if batch_size is not None:
                raise ValueError(
                    "Expected `batch_size` to be None with a DataLoader (its own batch size is "
                    f"used) but got {batch_size!r}"
                )
            loader: DataLoader[Any] = dataset
            _warn_if_dropping(loader)
        elif isinstance(dataset, Dataset):
            size = check_int("batch_size", 256 if batch_size is None else batch_size)
            loader = DataLoader(dataset, batch_size=size, shuffle=False)
            if isinstance(dataset, TensorDataset):  # batches are slices: no per-sample fetch
                self._slices = (dataset.tensors, size)
        else:
            raise ValueError(
                "Expected `dataset` to be a torch Dataset or DataLoader but got "
                f"{type(dataset).__name__}"
            )
        self.trigger = Trigger(frequency)
        check_probe_args(forward_fn, probe_tag)
        self.loader = loader
        self.forward_fn = forward_fn
        self.frequency = frequency
        self.probe_tag = probe_tag
        self.device = check_device(device)
        labels = _first_labels(loader, self._slices)
        if labels is not None:
            check_targets(labels)
        if self._slices is not None:  # every label at hand: one read, here
            _check_some_counted(self._slices[0][1], ignore_index)
        self._labels_checked = False  # against the model's outputs, in the first evaluation
        self._model: nn.Module | None = None
        self._chance: torch.Tensor | None = None
        super().__init__(
            [Subscription(self, [self.trigger.kind], tag, subsample)],
            message_bus,
            plot_config("Test accuracy", "Accuracy", ylims),
            backend,
            publishes={keys.TEST_ACCURACY: "META", keys.TEST_ACCURACY_CHANCE: "META"},
        )

    def state_dict(self) -> dict[str, Any]:
        """The training batches counted towards ``frequency`` (so that a restored run
        evaluates at the batches the uninterrupted one would)."""
        return {**super().state_dict(), "batches": self.trigger.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a state without ``'batches'``, saved
        before they were kept, starts counting afresh)."""
        if not isinstance(state, dict):
            raise ValueError(f"Expected a dict state but got {type(state).__name__}")
        state = dict(state)
        batches = state.pop("batches", 0)
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise ValueError(f"Expected `batches` to be an integer >= 0 but got {batches!r}")
        super().load_state_dict(state)
        self.trigger.batches = batches

    @property
    def chance(self) -> torch.Tensor | None:
        """The accuracy of always answering the data set's most frequent class (a 0-d tensor),
        counted during the first :meth:`evaluate`; None before it."""
        return self._chance

    @property
    def dataset(self) -> Dataset[Any]:
        """The data set accuracy is computed over."""
        return self.loader.dataset

    def use_model(self, access: ModelAccess | None) -> None:
        """Run the model through ``access``; its first test batch is evaluated now (eval mode,
        no gradients, random state forked), so that test data the model cannot take (inputs
        of the wrong shape, outputs that are no scores for the labels) is refused when the
        subscriber is attached, not after the first epoch of training."""
        super().use_model(access)
        if access is not None:  # the model stays known after its Exporter closes
            self._model = access.model
            if self.message_bus is not None and not self._labels_checked:
                self._check_first_batch()

    def _check_first_batch(self) -> None:
        bus = self.message_bus
        try:
            # a check, no measurement: its pass publishes nothing (drawn at step 0 before a
            # restore set the step counters, its values stood beside the restored run's)
            with bus.muted() if bus is not None else nullcontext():
                self._evaluate(check_only=True)
        except Exception as error:
            raise ValueError(
                "TestAccuracySubscriber cannot evaluate the model on its test data (its first "
                f"batch, or its labels, failed: {type(error).__name__}: {error})"
            ) from error

    def _check_every_label(self, outputs: torch.Tensor, batch: int, ignored: int | None) -> None:
        """Refuse, when attached, a class index beyond the outputs' classes anywhere in a
        TensorDataset's labels (read from its tensor at once, as the first batch's outputs
        read them), not only in its first batch: the first evaluation would fail after the
        first epoch, and its report with it."""
        if self._slices is None or outputs.dim() == 0 or outputs.shape[0] != batch:
            return
        tensors, _ = self._slices
        if len(tensors) != 2:
            return
        labels = tensors[1]
        like = outputs[:1].expand(len(labels), *outputs.shape[1:])  # shaped as one batch of all
        labels = labels.to(like.device)
        if ignored is not None:
            labels = without_ignored(labels, like, ignored)
        top = class_range(labels, like)
        if top is not None:
            check_top_label(*top)

    def detached(self, message_bus: MessageBus) -> None:
        super().detached(message_bus)
        self._model = None
        reason = self.trigger.never_reached()
        if reason is not None:
            logger.warning("TestAccuracySubscriber never evaluated: %s", reason)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if self.trigger.due(message_or_bundle):
            self.publish(keys.TEST_ACCURACY, self.evaluate(), message_or_bundle)
            if self._chance is not None:
                self.publish(keys.TEST_ACCURACY_CHANCE, self._chance, message_or_bundle)

    def _batches(self) -> Iterable[Any]:
        """The loader's batches; those of a TensorDataset given with a batch size are cut as
        slices of its tensors (the same batches, without fetching and collating each sample)."""
        if self._slices is None:
            return self.loader
        tensors, size = self._slices
        n = len(tensors[0])
        return (tuple(t[start : start + size] for t in tensors) for start in range(0, n, size))

    def evaluate(self) -> torch.Tensor:
        """The accuracy over the whole data set now, as a 0-d tensor (nothing is published)."""
        return self._evaluate()

    def _evaluate(self, check_only: bool = False) -> torch.Tensor:
        """:meth:`evaluate`; with ``check_only``, of the first batch alone, checking its labels
        against the outputs and changing nothing (no chance level, labels still unchecked)."""
        exporter = self.model_access
        model: nn.Module | None
        if self.forward_fn is not None:
            forward: Callable[[torch.Tensor], torch.Tensor] | None = self.forward_fn
            # a forward_fn that is no module or method of one (a lambda around the model):
            # the model it runs is taken to be the one watched, so that it is evaluated in
            # eval mode after its Exporter has closed too
            model = _module_of(self.forward_fn)
            named = [] if model is not None else _modules_named_by(self.forward_fn)
            if model is None:
                model = exporter.model if exporter is not None else self._model
        else:
            named = []
            model = exporter.model if exporter is not None else self._model
            forward = model
        if forward is None:
            raise RuntimeError(
                "TestAccuracySubscriber has no model to evaluate: pass `forward_fn` or attach it "
                "to a bus with an Exporter"
            )
        device = self.device if self.device is not None else device_of(model)
        probe = exporter.probe(self.probe_tag) if exporter is not None else nullcontext()
        # the probe puts the Exporter's model in eval mode; any other model is handled here
        other = None if exporter is not None and model is exporter.model else model
        ranging = False
        threshold = _binary_threshold(self.threshold, exporter)
        ignored = self.ignore_index
        if ignored is None:
            ignored = getattr(exporter, "ignore_index", None)
        top: tuple[torch.Tensor, int] | None = None  # the largest label, the classes
        tally: Counts | None = None
        counts: torch.Tensor | None = None  # per class, counted in the first evaluation only
        # a DataLoader draws its base seed (and a shuffling sampler its order) from the global
        # random state: forked, so that evaluating leaves the training run's random draws alone
        with own_random_state(device), probe as probed, _evaluating(other, *named):
            if probed is not None and self.forward_fn is None:
                forward = probed  # under data parallelism: the module, not its collective forward
            for batch in self._batches():
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    size = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
                    raise ValueError(
                        "Expected the test data to yield (inputs, labels) batches but got a "
                        f"{type(batch).__name__}{size}"
                    )
                inputs, labels = batch[0], batch[1]
                if device is not None:
                    inputs = inputs.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                outputs = forward(inputs)
                if exporter is not None and not (
                    self.forward_fn is not None and isinstance(outputs, torch.Tensor)
                ):  # the model's own tuple or dict output: the Exporter's choice of tensor
                    outputs = exporter.output_tensor(outputs)
                elif not isinstance(outputs, torch.Tensor):
                    raise ValueError(
                        f"Expected the model to return a tensor of scores but got "
                        f"{type(outputs).__name__}; pass a `forward_fn` that returns one"
                    )
                if ignored is not None:
                    labels = without_ignored(labels, outputs, ignored)  # counts nowhere
                if check_only:
                    check_targets(batch[1], outputs)
                    tally = F.count_predictions(outputs, labels, threshold[0])
                    self._check_every_label(outputs, len(batch[1]), ignored)
                    break
                if not self._labels_checked:  # once, as they came (usually on the CPU)
                    check_targets(batch[1], outputs)
                    _warn_if_probabilities(outputs, threshold, type(self).__name__)
                    self._labels_checked = True
                    ranging = True  # the labels' range is checked over this whole evaluation
                if ranging:
                    top = class_range(labels, outputs, top)
                this = F.count_predictions(outputs, labels, threshold[0])
                tally = this if tally is None else _added(tally, this)
                if self._chance is None:
                    counts = _summed(counts, F.class_counts(outputs, labels))
        if tally is None:
            raise ValueError("The test data set is empty")
        if check_only:
            return rate(tally)
        if top is not None:
            check_top_label(*top)  # one read back, in the first evaluation only
        counted = tally.total.clamp(min=1)  # every label ignored: accuracy and chance 0
        if counts is not None:
            self._chance = counts.max().float().to(counted.device) / counted
        return rate(tally)

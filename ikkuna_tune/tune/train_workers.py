"""A Tune trial that trains as a Ray Train job (``TorchTrainer`` with N workers inside the trial).

The instrumented trainable hands its config on as a :class:`TrialConfig`: the same dict, carrying
a :class:`TrialLink` to the trial (experiment, trial id, subscribers). Passed to the trainer as
``train_loop_config=config`` (Ray's documented pattern), it reaches every worker, where
``ik.watch`` finds it (:func:`train_worker`) and starts the worker's session:

- every rank runs the subscribers that read what training publishes; the ones that run the
  model themselves (SVCCA, test accuracy: ``uses_model``) run on rank 0 only
  (:func:`subscribers_for_rank`);
- at a report, rank 0 gathers every rank's outputs and reports each output measured on several
  ranks as its mean over them, weighted by the samples each rank counted where the output says
  (train accuracy: :func:`combine_reports`); Tune receives rank 0's report, one per iteration;
- rank 0 reads the scheduler's directives, applies them with all its checks and broadcasts what
  it did, which every other rank carries out as it is, so every rank freezes (and unfreezes) the
  same layers before the same step; a report whose ranks trained with different layers frozen
  (:func:`frozen_sets_differ`) fails on every rank, naming them.

Examples:
    >>> link = TrialLink("my_sweep", "abcde_00000", None)
    >>> config = TrialConfig({"lr": 0.1}, link)
    >>> config == {"lr": 0.1}, config.ikkuna_link.trial_id
    (True, 'abcde_00000')
    >>> train_worker() is None  # not inside a Ray Train worker
    True
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ikkuna_tune import keys, unattached
from ikkuna_tune.subscribers.base import Subscriber

__all__ = [
    "TrainWorker",
    "TrialConfig",
    "TrialLink",
    "broadcast_from_first",
    "check_data_parallel",
    "combine_reports",
    "frozen_sets_differ",
    "gather_to_first",
    "subscribers_for_rank",
    "train_worker",
]

logger = logging.getLogger(__name__)

_TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"


@dataclass(frozen=True)
class TrialLink:
    """What a Ray Train worker needs to know of the Tune trial that started its job.

    Examples:
        >>> TrialLink("my_sweep", "abcde_00000", None).trial_id
        'abcde_00000'
    """

    experiment: str
    trial_id: str
    #: the subscriber templates (or factory) given to ``instrument``
    subscribers: Any
    #: the trial's local directory, where rank 0 writes its TensorBoard files by default
    trial_dir: str | None = None


class TrialConfig(dict[str, Any]):
    """The config an instrumented trainable receives in Tune: the trial's config dict, unchanged
    (same keys and values), carrying :attr:`ikkuna_link` for the workers of a Ray Train job.

    The link (which holds the subscriber templates, test sets included) travels only where Ray
    serialises the config, to the job's controller and workers. Pickled otherwise (a checkpoint
    that saves the config with ``torch.save``) it is left out: the file holds the config's keys
    and values alone. A copy keeps it.

    Examples:
        >>> import copy, pickle
        >>> config = TrialConfig({"lr": 0.1}, TrialLink("e", "t", ["a large template"]))
        >>> again = pickle.loads(pickle.dumps(config))
        >>> dict(again), again.ikkuna_link
        ({'lr': 0.1}, None)
        >>> copy.copy(config).ikkuna_link.experiment, copy.deepcopy(config).ikkuna_link.trial_id
        ('e', 't')
    """

    def __init__(self, config: Mapping[str, Any], link: TrialLink | None) -> None:
        super().__init__(config)
        self.ikkuna_link = link
        if link is not None:
            _carry_links_through_ray()

    def __reduce__(self) -> tuple[Any, ...]:
        return (TrialConfig, (dict(self), None))

    def __copy__(self) -> TrialConfig:
        return TrialConfig(self, self.ikkuna_link)

    def __deepcopy__(self, memo: dict[int, Any]) -> TrialConfig:
        import copy

        return TrialConfig(copy.deepcopy(dict(self), memo), self.ikkuna_link)


def _serialised_for_ray(config: TrialConfig) -> tuple[dict[str, Any], TrialLink | None]:
    return dict(config), config.ikkuna_link


def _from_ray(state: tuple[dict[str, Any], TrialLink | None]) -> TrialConfig:
    """A :class:`TrialConfig` that Ray serialised (:func:`_serialised_for_ray`), with its link;
    this process passes it on with the link too (a Train job's controller to its workers)."""
    return TrialConfig(*state)


_CARRIED = False


def _carry_links_through_ray() -> None:
    """Have Ray's serialiser carry a :class:`TrialConfig`'s link in this process (plain pickle
    leaves it out). Once per process; nothing without a Ray worker to register with."""
    global _CARRIED
    if _CARRIED:
        return
    try:
        from ray.util import register_serializer

        register_serializer(TrialConfig, serializer=_serialised_for_ray, deserializer=_from_ray)
    except Exception as error:  # no Ray worker in this process: nothing for Ray to carry
        logger.debug("TrialConfig's link is not registered with Ray's serialiser: %s", error)
        return
    _CARRIED = True


@dataclass(frozen=True)
class TrainWorker:
    """This process's place in a Ray Train job.

    Examples:
        >>> worker = TrainWorker(rank=1, world_size=2, link=None)
        >>> worker.first, worker.distributed
        (False, True)
    """

    rank: int
    world_size: int
    #: the Tune trial's link, None when the job's ``train_loop_config`` does not carry one
    link: TrialLink | None
    #: the job's ``train_loop_config``
    config: Mapping[str, Any] | None = None

    @property
    def first(self) -> bool:
        """Whether this is rank 0, the rank that reports to Tune and reads directives."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks to combine with."""
        return self.world_size > 1


def train_worker() -> TrainWorker | None:
    """This process's :class:`TrainWorker` when it runs a Ray Train job's training function,
    else None.

    Examples:
        >>> train_worker() is None
        True
    """
    module = sys.modules.get(_TRAIN_CONTEXT_MODULE)
    if module is None:  # Ray Train was never started in this process
        return None
    try:
        context = module.get_train_context()
    except Exception:  # not a Train worker
        return None
    distributed = context.distributed_context
    config = context.train_run_context.train_loop_config
    link = getattr(config, "ikkuna_link", None)
    config = config if isinstance(config, Mapping) else None
    return TrainWorker(int(distributed.world_rank), int(distributed.world_size), link, config)


def subscribers_for_rank(subscribers: Sequence[Subscriber], rank: int) -> list[Subscriber]:
    """The subscribers rank ``rank`` runs: all on rank 0; on the other ranks, none of those that
    run the model themselves (``uses_model``: SVCCA, test accuracy run once, on rank 0), nor
    those that need what these publish.

    Examples:
        >>> from ikkuna_tune.subscribers import NormSubscriber, TestAccuracySubscriber
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
        >>> chosen = [NormSubscriber("weights", backend=None), TestAccuracySubscriber(data)]
        >>> [type(s).__name__ for s in subscribers_for_rank(chosen, 1)]
        ['NormSubscriber']
        >>> len(subscribers_for_rank(chosen, 0))
        2
    """
    if rank == 0:
        return list(subscribers)
    kept: list[Subscriber] = []
    missing: set[str] = set()  # kinds published only on rank 0
    for subscriber in subscribers:
        if subscriber.uses_model is not None or missing & set(subscriber.kinds):
            missing.update(subscriber.publications)
            unattached.forget(subscriber)  # left out on purpose: no warning that it is idle
            continue
        kept.append(subscriber)
    return kept


def check_data_parallel(subscribers: Sequence[Subscriber], world_size: int) -> None:
    """Refuse, on every rank of a job of ``world_size`` > 1 ranks, subscribers that would freeze
    layers on one rank only: SVCCA runs on rank 0 alone, so its own ``freeze_at`` would freeze
    there and not on the others, and DDP's next backward pass would fail across the ranks.

    Examples:
        >>> import torch
        >>> from ikkuna_tune.subscribers import SVCCASubscriber
        >>> probe = torch.zeros(8, 2)
        >>> check_data_parallel([SVCCASubscriber(probe, 8, freeze_at=0.99)], world_size=1)
        >>> check_data_parallel([SVCCASubscriber(probe, 8, freeze_at=0.99)], world_size=2)
        Traceback (most recent call last):
        ...
        ValueError: Expected subscribers that freeze no layer themselves in a data-parallel job \
(2 ranks) but subscriber 1 (SVCCASubscriber) has freeze_at=0.99: it runs on rank 0 only and \
would freeze there alone, and the ranks' DDP would fail; leave freeze_at None and let \
SVCCAScheduler freeze (it freezes every rank before the same step)
    """
    if world_size <= 1:
        return
    for index, subscriber in enumerate(subscribers, 1):
        freeze_at = getattr(subscriber, "freeze_at", None)
        if freeze_at is not None:
            raise ValueError(
                f"Expected subscribers that freeze no layer themselves in a data-parallel job "
                f"({world_size} ranks) but subscriber {index} ({type(subscriber).__name__}) has "
                f"freeze_at={freeze_at}: it runs on rank 0 only and would freeze there alone, "
                "and the ranks' DDP would fail; leave freeze_at None and let SVCCAScheduler "
                "freeze (it freezes every rank before the same step)"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values: list[Any]) -> Any:
    numbers = [float(v) for v in values if _is_number(v)]
    if not numbers:
        return values[0] if values else None
    total = math.fsum(numbers)  # a NaN or inf on any rank stays visible
    return total / len(numbers)


def _weighted_mean(pairs: list[tuple[Any, float]]) -> Any:
    """The mean of the values of ``(value, samples)`` pairs, each weighted by its samples: the
    fraction over all of them, when each value is a fraction of its samples (a rank that
    counted none adds nothing; with none counted anywhere, the plain mean)."""
    counted = [(float(v), float(n)) for v, n in pairs if _is_number(v) and n > 0]
    if not counted:
        return _mean([v for v, _ in pairs])
    total = math.fsum(n for _, n in counted)
    return math.fsum(v * n for v, n in counted) / total  # a NaN on any rank stays visible


def combine_reports(
    reports: Sequence[Mapping[str, Any]],
    averaged: set[str],
    samples: Sequence[Mapping[str, float]] | None = None,
    positions: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Rank 0's report (``reports[0]``) with each key in ``averaged`` replaced by its mean over
    the ranks that measured it (``None`` and missing values left out; per-layer dicts averaged
    layer by layer). Keys not in ``averaged`` are rank 0's.

    ``samples[i]`` gives, for some network-wide outputs of rank i's report, how many samples
    its value is a fraction of (:meth:`~ikkuna_tune.subscribers.base.Subscriber.sample_counts`:
    train accuracy): where every rank that measured such an output gives its count, the
    output is the mean weighted by them, the fraction over all the ranks' samples also when
    their shards differ in size (a plain mean would weigh each sample of a smaller shard more).

    ``positions[i]`` gives, nested as the report, where in training rank i measured each value
    (``(epoch, step within it)``: :attr:`MetricCollector.positions
    <ikkuna_tune.tune.collector.MetricCollector.positions>`). Only the values measured where
    rank 0 measured its own (where rank 0 measured none, at the latest position of the others)
    are averaged: a rank with a batch fewer in an epoch (uneven inputs under DDP's ``join``)
    last measured a step earlier, and a mean over two steps is no step's value (rank 0's step
    trained on rank 0's batch alone: its train accuracy is rank 0's). A value without a
    position (a step time) is averaged over every rank that has it.

    Examples:
        >>> first = {"loss": 0.5, "weights_norm2": {"fc": 2.0}, "train_accuracy": 0.5}
        >>> second = {"loss": 0.7, "weights_norm2": {"fc": 2.0}, "train_accuracy": 1.0}
        >>> combine_reports([first, second], {"weights_norm2", "train_accuracy"})
        {'loss': 0.5, 'weights_norm2': {'fc': 2.0}, 'train_accuracy': 0.75}

        Shards of 16 and 17 samples, 2 and 1 of them right: 3 of 33

        >>> shards = [{"train_accuracy": 2 / 16}, {"train_accuracy": 1 / 17}]
        >>> counts = [{"train_accuracy": 16}, {"train_accuracy": 17}]
        >>> combined = combine_reports(shards, {"train_accuracy"}, counts)["train_accuracy"]
        >>> abs(combined - 3 / 33) < 1e-15
        True

        Rank 1 had a batch fewer in epoch 0: its last value is of step 4, rank 0's of step 5

        >>> at = [{"train_accuracy": (0, 5)}, {"train_accuracy": (0, 4)}]
        >>> combine_reports(shards, {"train_accuracy"}, counts, at)["train_accuracy"]
        0.125
    """
    if not reports:
        raise ValueError("Expected the reports of at least one rank but got none")
    for name, given in (("sample counts", samples), ("positions", positions)):
        if given is not None and len(given) != len(reports):
            raise ValueError(
                f"Expected the {name} of each of the {len(reports)} ranks but got {len(given)}"
            )
    combined = dict(reports[0])
    for key in averaged & set(combined):
        first = combined[key]
        if isinstance(first, Mapping):
            layers = dict(first)
            for layer in layers:
                ranks = [
                    i
                    for i, r in enumerate(reports)
                    if isinstance(r.get(key), Mapping) and r[key].get(layer) is not None
                ]
                ranks = _in_step(ranks, [_position(positions, i, key, layer) for i in ranks])
                layers[layer] = _mean([reports[i][key][layer] for i in ranks])
            combined[key] = layers
        elif first is None or _is_number(first):
            ranks = [i for i, r in enumerate(reports) if r.get(key) is not None]
            ranks = _in_step(ranks, [_position(positions, i, key) for i in ranks])
            present = [reports[i][key] for i in ranks]
            counts = [samples[i].get(key) for i in ranks] if samples is not None else []
            if present and samples is not None and all(_is_number(n) for n in counts):
                combined[key] = _weighted_mean(list(zip(present, counts)))
            else:
                combined[key] = _mean(present) if present else None
    return combined


def _position(
    positions: Sequence[Mapping[str, Any]] | None, rank: int, key: str, layer: str | None = None
) -> Any:
    """Where ``rank`` measured its value of ``key`` (of ``layer``), or None if not known."""
    if positions is None:
        return None
    at = positions[rank].get(key)
    if layer is not None:
        at = at.get(layer) if isinstance(at, Mapping) else None
    return tuple(at) if isinstance(at, (tuple, list)) else None


def _in_step(ranks: list[int], at: list[Any]) -> list[int]:
    """Of ``ranks`` (ascending), which measured their value at ``at[j]``: those where rank 0
    measured its own, else where the latest of them did; all of them where a position is not
    known."""
    if not ranks or any(p is None for p in at):
        return ranks
    reference = at[0] if ranks[0] == 0 else max(at)
    return [rank for rank, p in zip(ranks, at) if p == reference]


def frozen_sets_differ(reports: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the ranks' reports (rank i's ``reports[i]``) show different layers frozen (their
    ``frozen`` flags), or None when every rank's are rank 0's. The ranks of a DDP job must train
    with the same layers frozen: otherwise their gradient all-reduces differ, and the job fails
    in one (or, with a communication hook of the user's own, the ranks' models silently drift
    apart). The reports are gathered anyway, so the check costs no collective.

    Examples:
        >>> same = {"frozen": {"conv": 1, "fc": 0}}
        >>> frozen_sets_differ([same, same]) is None
        True
        >>> print(frozen_sets_differ([same, {"frozen": {"conv": 1, "fc": 1}}]))
        Expected every rank of the job to train with the same layers frozen but rank 0 has \
['conv'] frozen and rank 1 has ['conv', 'fc'] (frozen or unfrozen by the training code on \
some ranks only?): DDP's gradient all-reduce differs across the ranks; freeze through the \
scheduler, or the same layers on every rank before the same step
    """
    sets = [
        sorted(name for name, flag in (report.get(keys.FROZEN) or {}).items() if flag)
        for report in reports
    ]
    for rank, frozen in enumerate(sets[1:], 1):
        if frozen != sets[0]:
            return (
                f"Expected every rank of the job to train with the same layers frozen but rank 0 "
                f"has {sets[0]} frozen and rank {rank} has {frozen} (frozen or unfrozen by the "
                "training code on some ranks only?): DDP's gradient all-reduce differs across "
                "the ranks; freeze through the scheduler, or the same layers on every rank "
                "before the same step"
            )
    return None


def gather_to_first(value: Any) -> list[Any] | None:
    """Every rank's ``value`` on rank 0 (in rank order), None on the other ranks; a collective
    every rank must join. Without a process group: ``[value]``.

    Examples:
        >>> gather_to_first({"loss": 0.5})  # no process group: this process is the only rank
        [{'loss': 0.5}]
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_first(value: Any) -> Any:
    """Rank 0's ``value`` on every rank; a collective every rank must join. Without a process
    group: ``value``.

    Examples:
        >>> broadcast_from_first([{"freeze": ["conv1"]}])
        [{'freeze': ['conv1']}]
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

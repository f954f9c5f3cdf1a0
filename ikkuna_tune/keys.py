"""The names ikkuna_tune reports under, and the files it writes, in one place.

Subscribers publish under these kinds, :func:`ikkuna_tune.report` adds the reserved keys,
SVCCAScheduler reads them from Tune's flattened results (``<key>/<layer>``), and
:mod:`ikkuna_tune.compare` reads them back from disk.
"""

from __future__ import annotations

__all__ = [
    "DECISIONS_FILE",
    "FREEZE_REASON",
    "FROZEN",
    "FROZEN_BY_TRIAL",
    "FROZEN_FRACTION",
    "INIT_SIMILARITY",
    "LIVE_FRACTION",
    "LR_BASE_SCALE",
    "LR_SCALE",
    "RESERVED_KEYS",
    "SELF_SIMILARITY",
    "STEP_SECONDS",
    "STEP_SECONDS_UNFROZEN",
    "TEST_ACCURACY",
    "TEST_ACCURACY_CHANCE",
    "TRAINABLE",
    "TRAIN_ACCURACY",
    "TRAIN_REPORT",
    "TRAIN_STEPS",
    "UNFREEZE_REASON",
    "call_key",
    "chance_of",
    "layer_of_call",
    "per_layer",
]

#: SVCCA self-similarity of a layer between consecutive checkpoints (per layer).
SELF_SIMILARITY = "self_similarity"
#: Linear CKA of a layer's probe activations now and at initialisation (per layer).
INIT_SIMILARITY = "init_similarity"
#: The share of a layer's features that vary over the probe set (per layer).
LIVE_FRACTION = "live_fraction"
#: Accuracy on the test set (network-wide).
TEST_ACCURACY = "test_accuracy"
#: The test accuracy of always answering the test set's most frequent class (network-wide).
TEST_ACCURACY_CHANCE = "test_accuracy_chance"
#: Accuracy of the training batch (network-wide).
TRAIN_ACCURACY = "train_accuracy"

#: 1 for a frozen layer, 0 for a trainable one (per layer).
FROZEN = "frozen"
#: 0 for a layer the training code holds fixed (it has parameters and none requires
#: gradients, and it was not frozen by ikkuna_tune: a fine-tuned backbone's), 1 otherwise (per
#: layer). SVCCAScheduler freezes past such a layer as past a frozen one.
TRAINABLE = "trainable"
#: The fraction of the model's parameters that are frozen.
FROZEN_FRACTION = "frozen_fraction"
#: Why the scheduler froze a layer (per layer, text).
FREEZE_REASON = "freeze_reason"
#: The ``freeze_reason`` of a layer frozen in the trial itself, not on the scheduler's order.
FROZEN_BY_TRIAL = (
    "frozen in the trial (Exporter.freeze, or a subscriber's freeze_at), not by the scheduler"
)
#: Why a layer the scheduler froze trains again (per layer, text; ``""`` for a layer frozen or
#: never unfrozen): its learning rate changed since the freeze (see
#: :mod:`ikkuna_tune.tune.lr_release`).
UNFREEZE_REASON = "unfreeze_reason"
#: The trial's learning rate at the report over the largest it has had (network-wide; of the
#: parameter group that has decayed least; NaN without an optimizer): below 1 once a
#: schedule has decayed it, so that the scheduler compares trials in the same phase.
LR_SCALE = "lr_scale"
#: How far the trial's learning rates are into a warm-up at the report: the largest, over
#: the parameter groups, of a group's rate over the rate its learning-rate scheduler starts
#: from (``initial_lr``, which every ``torch.optim.lr_scheduler`` scheduler sets;
#: OneCycleLR's ``max_lr`` where larger) where its rate was never higher, else 1 (a group
#: without a scheduler, or whose rate fell from its largest); NaN without any scheduler.
#: Below 1: every group warms up, which the scheduler does not judge a trial behind in.
LR_BASE_SCALE = "lr_base_scale"
#: Mean seconds per training step since the last report.
STEP_SECONDS = "step_seconds"
#: Mean seconds per step over the reports made while nothing was frozen.
STEP_SECONDS_UNFROZEN = "step_seconds_unfrozen"
#: Training steps since the last report (0 for a report with none since: an evaluation between
#: epochs): what a report's ``frozen_fraction`` weighs in the work a trial skipped.
TRAIN_STEPS = "train_steps"
#: Which report of a Ray Train job this is (text, from rank 0; unique to the attempt), in the
#: reports of a trial an SVCCAScheduler steers: the scheduler acknowledges it once it has
#: handled the report, and rank 0 waits for that before it reads the scheduler's directives
#: (see :mod:`ikkuna_tune.tune.mailbox`).
TRAIN_REPORT = "ikkuna_report_name"
#: The keys :func:`ikkuna_tune.report` adds to every report (a user's metric may not use them).
RESERVED_KEYS = (
    FROZEN,
    TRAINABLE,
    FROZEN_FRACTION,
    FREEZE_REASON,
    UNFREEZE_REASON,
    LR_SCALE,
    LR_BASE_SCALE,
    STEP_SECONDS,
    STEP_SECONDS_UNFROZEN,
    TRAIN_STEPS,
)

#: Where SVCCAScheduler writes its decisions, one JSON object a line, in each trial directory.
DECISIONS_FILE = "ikkuna_decisions.jsonl"


def per_layer(key: str, layer: str) -> str:
    """The flattened name Tune gives ``key`` of ``layer``.

    >>> per_layer(FROZEN, "conv1")
    'frozen/conv1'
    """
    return f"{key}/{layer}"


def chance_of(metric: str) -> str:
    """The key under which a metric's chance level is reported beside it (SVCCAScheduler
    stops a trial stuck at it).

    >>> chance_of(TEST_ACCURACY) == TEST_ACCURACY_CHANCE
    True
    """
    return f"{metric}_chance"


def call_key(layer: str, call: int) -> str:
    """The key of a layer's ``call``-th call in one forward pass, from the second on (a layer
    the model calls twice publishes under ``'fc'`` and ``'fc#2'``).

    >>> call_key("fc", 2)
    'fc#2'
    """
    return f"{layer}#{call}"


def layer_of_call(key: str) -> str:
    """The layer a key names, whichever call of it (:func:`call_key`): only what
    :func:`call_key` writes (``#2`` on, no leading zero) names a call; any other name is a
    layer's own (a ModuleDict key ``'x#1'``).

    >>> layer_of_call("fc#2"), layer_of_call("fc#12"), layer_of_call("fc")
    ('fc', 'fc', 'fc')
    >>> layer_of_call("odd#name"), layer_of_call("x#1"), layer_of_call("x#02"), layer_of_call("#2")
    ('odd#name', 'x#1', 'x#02', '#2')
    """
    layer, mark, number = key.rpartition("#")
    called = mark and layer and number.isdigit() and number[0] != "0" and number != "1"
    return layer if called else key

"""One trial's bus, Exporter and subscribers, and what it reports."""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
import secrets
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ikkuna_tune import keys, unattached
from ikkuna_tune.backends import EVENT_DIR, to_numbers
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_factor_or_none
from ikkuna_tune.exporter import Exporter
from ikkuna_tune.freezing import tie_closed
from ikkuna_tune.layers import wrappers
from ikkuna_tune.subscribers.base import CallbackSubscriber, Subscriber
from ikkuna_tune.tune.collector import MetricCollector, StepTimer, reported_kind
from ikkuna_tune.tune.lr_release import LearningRateRelease, base_rates, snapshot
from ikkuna_tune.tune.mailbox import TrialInbox
from ikkuna_tune.tune.persist import TrialUploader
from ikkuna_tune.tune.subscriber_templates import (
    USED,
    SubscriberSpec,
    check_attachable,
    fresh_subscribers,
)
from ikkuna_tune.tune.train_workers import (
    TrainWorker,
    broadcast_from_first,
    combine_reports,
    frozen_sets_differ,
    gather_to_first,
)
from ikkuna_tune.tune.watch_call import describe_watch_call, renamed

__all__ = [
    "RESERVED_KEYS",
    "STATE_FILE",
    "SubscriberSpec",
    "TrialSession",
    "check_attachable",
    "current_session",
    "fresh_subscribers",
    "reporting_session",
]

logger = logging.getLogger(__name__)

#: File holding ikkuna_tune's state inside a trial checkpoint, beside the user's files.
STATE_FILE = "ikkuna_tune_state.pt"
#: Metric names ikkuna_tune adds to every report.
RESERVED_KEYS = keys.RESERVED_KEYS

_current: ContextVar[TrialSession | None] = ContextVar("ikkuna_tune_session", default=None)
#: the sessions of this process between their activation and their close, in any thread;
#: held weakly (a session of a thread that ended without closing it goes with the thread)
_active: weakref.WeakValueDictionary[int, TrialSession] = weakref.WeakValueDictionary()


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _type_name(subscriber: object) -> str:
    """The class that stands for a subscriber in a checkpoint (module and qualified name)."""
    cls = type(subscriber)
    return f"{cls.__module__}.{cls.__qualname__}"


def _run_name(path: str) -> str:
    """A folder name for the checkpoint at ``path``: its own folder's name (Tune's
    ``checkpoint_000003``), with anything but letters, digits, ``-`` and ``_`` replaced.

    >>> _run_name("/storage/exp/trial_1/checkpoint_000003/"), _run_name("s3://b/x y")
    ('checkpoint_000003', 'x_y')
    """
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "checkpoint"


def _check_picklable(value: object, name: str) -> None:
    """Raise a ValueError naming metric ``name`` if Ray cannot send ``value`` to the driver
    (it would fail later, inside Ray, naming neither the metric nor the call)."""
    from ray import cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception as error:
        raise ValueError(
            f"Expected metric {name!r} to be a number (or a value Ray can pickle) but got a "
            f"{type(value).__name__}, which cannot be pickled: {error}"
        ) from error


def plain_metrics(
    metrics: Mapping[str, Any],
    read: Callable[[list[torch.Tensor]], list[float]] | None = None,
) -> dict[str, Any]:
    """The user's ``metrics`` with numbers as Python numbers, as Tune needs them and as the
    scheduler reads them: a NumPy scalar becomes its Python value, a one-element tensor a float
    (all such tensors of a device in one host transfer; an integer tensor an exact ``int``,
    read on its own), in nested dicts, lists and tuples (named ones too) alike; other values
    stay. ``read`` turns the floating and boolean tensors into numbers (by default
    :func:`~ikkuna_tune.backends.to_numbers`): a report reads them with its subscribers' values,
    in the same transfer.

    Raises:
        ValueError: for a tensor or array of more than one element (no metric), a complex
            one, a nested one, one on the meta device, or a value Ray cannot pickle (a lock, a
            generator), naming the metric.

    Examples:
        >>> import numpy as np
        >>> metrics = {"loss": torch.tensor(0.5), "acc": np.float32(0.25), "n": {"k": np.int64(3)}}
        >>> plain_metrics(metrics)
        {'loss': 0.5, 'acc': 0.25, 'n': {'k': 3}}
    """
    import numpy as np

    tensors: list[tuple[Any, Any, torch.Tensor]] = []
    tuples: list[tuple[list[Any], Any, Any, type]] = []  # inner ones first

    def plain(value: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            convert(item, f"{path}{key}", out, key)
        return out

    def convert(item: Any, name: str, out: Any, key: Any) -> None:
        """Put ``item`` as a plain value at ``out[key]`` (a tensor's value is filled later)."""
        if isinstance(item, Mapping):
            out[key] = plain(item, f"{name}/")
        elif type(item) in (list, tuple) or _is_namedtuple(item):
            items: list[Any] = [None] * len(item)
            for index, element in enumerate(item):
                convert(element, f"{name}[{index}]", items, index)
            out[key] = items
            if isinstance(item, tuple):  # a list until its tensors are filled in (after its own)
                tuples.append((items, out, key, type(item)))
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            if isinstance(item, torch.Tensor) and item.is_meta:
                raise ValueError(
                    f"Expected metric {name!r} to be a number but got a tensor on the meta "
                    "device, which holds no value"
                )
            if isinstance(item, torch.Tensor) and item.is_nested:
                raise ValueError(
                    f"Expected metric {name!r} to be a number but got a nested tensor of "
                    f"{item.size(0)} tensor(s); report one number"
                )
            size = item.numel() if isinstance(item, torch.Tensor) else item.size
            if size == 1 and isinstance(item, torch.Tensor) and item.layout != torch.strided:
                item = item.to_dense()  # (a sparse tensor's one value)
            if size != 1:
                raise ValueError(
                    f"Expected metric {name!r} to be a number but got a "
                    f"{type(item).__name__} of shape {tuple(item.shape)}"
                )
            if item.dtype.is_complex if isinstance(item, torch.Tensor) else np.iscomplexobj(item):
                raise ValueError(f"Expected metric {name!r} to be a real number but got {item}")
            if isinstance(item, np.ndarray):
                out[key] = _python(item.reshape(()).item())
            elif not item.dtype.is_floating_point and item.dtype != torch.bool:
                out[key] = int(item.reshape(()).item())  # exact (a float64 is not, past 2**53)
            else:
                out[key] = None  # filled below, one transfer per device
                tensors.append((out, key, item))
        elif isinstance(item, (complex, np.complexfloating)):
            raise ValueError(f"Expected metric {name!r} to be a real number but got {item}")
        elif isinstance(item, np.generic):
            out[key] = _python(item.item())
        else:
            if not isinstance(item, (int, float, str, bytes, type(None))):
                _check_picklable(item, name)
            out[key] = item

    merged = plain(metrics, "")
    if read is None:
        numbers = to_numbers([(str(key), tensor, 0) for _, key, tensor in tensors])
    else:
        numbers = read([tensor for _, _, tensor in tensors])
    for (out, key, tensor), number in zip(tensors, numbers):
        out[key] = bool(number) if tensor.dtype == torch.bool else number
    for items, out, key, kind in tuples:
        out[key] = tuple(items) if kind is tuple else kind._make(items)  # type: ignore[attr-defined]
    return merged


def _python(value: Any) -> Any:
    """A NumPy scalar's ``item()`` as a Python number: a ``np.longdouble`` (or an ``np.bytes_``
    of odd width) has no Python type of its own, and stays NumPy's.

    >>> import numpy as np
    >>> type(_python(np.longdouble(1.5).item())), _python(3)
    (<class 'float'>, 3)
    """
    import numpy as np

    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _is_namedtuple(value: Any) -> bool:
    """Whether ``value`` is a named tuple (``collections.namedtuple``, ``typing.NamedTuple``)."""
    return isinstance(value, tuple) and callable(getattr(type(value), "_make", None))


def current_session() -> TrialSession | None:
    """The session of the trial running in this thread, if any.

    Examples:
        >>> from ikkuna_tune.tune import instrument
        >>> seen = []
        >>> instrument(lambda config: seen.append(current_session().config))({"lr": 0.1})
        >>> seen, current_session()  # the session lives while its trial runs
        ([{'lr': 0.1}], None)
    """
    return _current.get()


def _unset(value: Any) -> bool:
    """Whether a report's output holds no value (None, or per layer only None)."""
    if isinstance(value, Mapping):
        return all(_unset(v) for v in value.values())
    return value is None


def reporting_session() -> TrialSession | None:
    """The session a report made in this thread belongs to: the thread's own (see
    :func:`current_session`), else the only session active in this process (a trial whose
    training loop runs in a thread it started: a new thread does not inherit the trial's
    context). None when no session, or several, are active.

    Examples:
        >>> import threading
        >>> from ikkuna_tune.tune import instrument
        >>> seen = []
        >>> def trainable(config):
        ...     helper = threading.Thread(target=lambda: seen.append(reporting_session()))
        ...     helper.start(); helper.join()
        ...     seen.append(current_session())
        >>> instrument(trainable)({})
        >>> seen[0] is seen[1] is not None, reporting_session(), active_sessions()
        (True, None, 0)
    """
    own = _current.get()
    if own is not None:
        return own
    active = _open_sessions()
    return active[0] if len(active) == 1 else None


def active_sessions() -> int:
    """How many trial sessions are active (started and not closed) in this process, in any
    thread.

    Examples:
        >>> from ikkuna_tune.tune import instrument
        >>> seen = []
        >>> instrument(lambda config: seen.append(active_sessions()))({})
        >>> seen, active_sessions()  # the trial's session, while it runs
        ([1], 0)
    """
    return len(_open_sessions())


def _open_sessions() -> list[TrialSession]:
    """The active sessions whose Exporter has not been closed."""
    return [session for session in _active.values() if not session.closed]


def _tune_context() -> Any | None:
    """Tune's context when running inside a Tune trial, else None."""
    try:
        from ray import tune

        with warnings.catch_warnings():  # outside Tune, Ray warns and returns None
            warnings.simplefilter("ignore")
            context = tune.get_context()
            return context if context.get_trial_id() is not None else None
    except Exception:  # not inside Tune, or Ray not initialised
        return None


def _storage_subdir(log_dir: str | Path, context: Any, chosen: bool) -> str:
    """Where under the trial's storage its event files go: ikkuna_tune's own folder; a folder
    the user chose inside the trial's working directory or its directory (a relative
    ``log_dir="tb"``) at the same place; any other at the top."""
    if chosen:
        return EVENT_DIR
    folder = Path(log_dir).resolve()
    for base in (Path.cwd(), Path(context.get_trial_dir())):
        try:
            inside = folder.relative_to(base.resolve())
        except (ValueError, OSError):
            continue
        return "" if inside == Path() else inside.as_posix()
    return ""


class TrialSession:
    """Everything ikkuna_tune keeps for one trial.

    Created by the trainable that :func:`~ikkuna_tune.instrument` returns (or implicitly by
    :func:`~ikkuna_tune.watch` outside one); :meth:`watch` binds it to a model.

    Examples:
        >>> from torch import nn
        >>> session = TrialSession([], {"lr": 0.1})
        >>> exporter = session.watch(nn.Linear(2, 1))
        >>> list(exporter.modules), session.trial_id  # outside Tune: no trial id
        ([''], None)
        >>> session.close(); exporter.closed
        True
    """

    def __init__(
        self,
        subscribers: list[Subscriber],
        config: dict[str, Any],
        worker: TrainWorker | None = None,
        positions: Sequence[int] | None = None,
    ) -> None:
        self.subscribers = subscribers
        #: where each subscriber stands in the trial's full list (a rank of a Ray Train job
        #: other than 0 runs some of them; a checkpoint holds the state of all of them)
        self.positions = list(range(len(subscribers)) if positions is None else positions)
        self.config = config
        #: this process's place in a Ray Train job run by the trial (None in a plain trial)
        self.worker = worker
        self.context = _tune_context() if worker is None else None
        self.trial_id: str | None = self.context.get_trial_id() if self.context else None
        self.bus: MessageBus | None = None
        self.exporter: Exporter | None = None
        self.collector: MetricCollector | None = None
        self.timer: StepTimer | None = None
        self.results: list[dict[str, Any]] = []
        #: the share of the parameters frozen at each training step since the last report
        #: (summed, steps): a report's frozen_fraction is their mean over its iteration
        self._frozen_shares = (0.0, 0)
        #: the layers the training code held fixed at the last report (Exporter.held_fixed)
        self._held: set[str] = set()
        #: on rank 0 of a Ray Train job of several workers: the layers to unfreeze past one the
        #: training code trains again, found at this report and unfrozen on every rank after it
        #: (:meth:`_as_rank_0_decides`)
        self._retrained_releases: list[tuple[str, str]] = []
        #: the share per set of frozen layers, counted afresh where the parameters that train
        #: changed (the training code may freeze or unfreeze some by hand: gradual unfreezing)
        self._share_of: dict[tuple[str, ...], float] = {}
        #: each parameter's requires_grad, read at the period's and each epoch's first step
        self._trainable: tuple[bool, ...] = ()
        self.inbox: TrialInbox | None = None
        if self.context is not None and self.trial_id is not None:
            self.inbox = TrialInbox(self.context.get_experiment_name(), self.trial_id)
        link = worker.link if worker is not None else None
        if link is not None:
            self.trial_id = link.trial_id
            if worker is not None and worker.first:  # rank 0 reads, then tells the others
                self.inbox = TrialInbox(link.experiment, link.trial_id)
        #: called with the session after every report (the scheduler's mailbox hooks in here)
        self.after_report: list[Callable[[TrialSession], None]] = []
        #: why the scheduler froze each layer it froze (reported under ``freeze_reason``)
        self.freeze_reasons: dict[str, str] = {}
        #: the learning rates the layers the scheduler froze were frozen at: a layer is
        #: unfrozen once they change (:mod:`ikkuna_tune.tune.lr_release`)
        self.release = LearningRateRelease()
        #: why each layer the scheduler froze was unfrozen since the last report (reported
        #: once, under ``unfreeze_reason``, in the next report)
        self.unfreeze_reasons: dict[str, str] = {}
        #: the learning rates at the first step since the last report (those the layers the
        #: next directive freezes were judged at); None before that step
        self._period_rates: dict[tuple[int, int], float] | None = None
        #: the period's rates saved with the checkpoint restored from (for freezes ordered again)
        self._restored_rates: dict[tuple[int, int], float] | None = None
        #: the largest learning rate each parameter group has had at a step's start or a
        #: report (``lr_scale``)
        self._peak_rates: dict[tuple[int, int], float] = {}
        #: the optimizers the rates' positions refer to (their ids; see _note_hand_over)
        self._optimizer_ids: tuple[int, ...] | None = None
        #: the layers a directive asked to freeze that this trial refused (warned once each)
        self._refused: set[str] = set()
        self._warned_closed = False
        #: the top-level names of the user's metrics so far, and those of them another tag's
        #: output was named like later (warned once each)
        self._user_names: set[str] = set()
        self._warned_names: set[str] = set()
        #: ikkuna_tune's outputs of one value (test_accuracy) named in a warning for a report
        #: that did not measure them
        self._warned_unmeasured: set[str] = set()
        self._merged_once = False
        self._uploader: TrialUploader | None = None
        self._token: Any = None
        self._epochs_checked = False
        #: names a Ray Train job's reports (keys.TRAIN_REPORT): this attempt, then a count,
        #: then the name of the report whose checkpoint the attempt resumed from, if any
        self._attempt = secrets.token_hex(4)
        self._train_reports = 0
        self._report_name: str | None = None
        self._resumed_from: str | None = None
        #: the trial went on from a checkpoint without ikkuna_tune's state (none, or
        #: unreadable): the step counters and what subscribers measure against the start of
        #: training are unknown
        self.state_lost = False
        #: the subfolder of the event folder this trial's TensorBoard run went on in after a
        #: restore without ikkuna_tune's state (kept in the state: later restores go on there)
        self._event_run: str | None = None
        self._restored_name = ""  # the checkpoint restored from, as a folder name

    @property
    def in_tune(self) -> bool:
        """Whether reports go to Ray (a Tune trial, or a worker of a Ray Train job)."""
        return self.context is not None or self.worker is not None

    # ------------------------------------------------------------ lifecycle
    #: made by a ``watch`` outside any instrumented trainable (see :func:`ikkuna_tune.watch`)
    implicit: bool = False

    @property
    def closed(self) -> bool:
        """Whether the trial's Exporter was made and has been closed."""
        return self.exporter is not None and self.exporter.closed

    def activate(self) -> None:
        self._token = _current.set(self)
        _active[id(self)] = self

    def close(self) -> None:
        """End the trial's session: close the Exporter, detach the subscribers (marked as used:
        a later trial must not take them up), upload the files; the session stops being the
        thread's current one whatever fails on the way."""
        try:
            if self.exporter is not None:
                self.exporter.close()
        finally:
            try:
                for subscriber in self.subscribers:
                    setattr(subscriber, USED, True)
                    # made for this trial without a bus: never to be named by a later trial in
                    # this process (one on a reused actor) if this one ended before watch()
                    unattached.forget(subscriber)
                if self.bus is not None:
                    for subscriber in list(self.bus.subscribers):
                        subscriber.detach()
                    self.bus.close()
                if self._uploader is None and self.context is not None and self.exporter is None:
                    # a trial that trained in a Ray Train job: rank 0 wrote its files here
                    # (when it ran on this node)
                    trial_dir = Path(self.context.get_trial_dir())
                    self._uploader = TrialUploader(trial_dir / EVENT_DIR, EVENT_DIR)
                if self._uploader is not None:
                    self._uploader.upload()
            finally:
                _active.pop(id(self), None)
                if self._token is not None:
                    _current.reset(self._token)
                    self._token = None

    def watch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        depth: int | None = None,
        module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
        log_dir: str | Path | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Exporter:
        if self.exporter is not None:
            raise RuntimeError(
                "watch() was already called in this trial; call it once, after building the model "
                "(a trial watches one model to its end, also after exporter.close(): to train a "
                "new model, start a new trial)"
            )
        # an error names the user's call, not the Exporter or the bus it came from
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise ValueError(
                f"Expected `log_dir` to be a path (a str or a Path) or None but got "
                f"{type(log_dir).__name__}"
            )
        call = describe_watch_call(model, optimizer, depth, module_filter, log_dir, output_fn)
        ddp = nn.parallel.DistributedDataParallel
        if self.worker is not None and self.worker.distributed:
            if not any(isinstance(m, ddp) for m in wrappers(model)):
                warnings.warn(
                    f"{call}: the model is not wrapped in DistributedDataParallel in a job of "
                    f"{self.worker.world_size} ranks: unless your ranks keep their models equal "
                    "otherwise, each trains its own, and the per-layer values averaged over the "
                    "ranks (norms, ratios) are of no one model while SVCCA and test accuracy "
                    "are rank 0's; watch the model `ray.train.torch.prepare_model` returns",
                    UserWarning,
                    stacklevel=3,
                )
        chosen = log_dir is None  # then the event files go to the trial's own folder for them
        if log_dir is None and self.context is not None:
            log_dir = Path(self.context.get_trial_dir()) / EVENT_DIR
        link = self.worker.link if self.worker is not None else None
        if log_dir is None and link is not None and self.worker is not None and self.worker.first:
            log_dir = Path(link.trial_dir) / EVENT_DIR  # the trial's directory (rank 0's node)
        chosen = chosen and log_dir is not None
        try:
            # the other ranks of a data-parallel job draw nothing: rank 0 reports for them
            draw = self.worker is None or self.worker.first
            bus = MessageBus(name=self.trial_id or "local", log_dir=log_dir, draw=draw)
            exporter = Exporter(
                model,
                optimizer,
                bus,
                depth=depth,
                module_filter=module_filter,
                output_fn=output_fn,
                scaler=scaler,
            )
        except Exception as error:
            raise renamed(error, f"{call}: {error}") from error
        try:
            # before the subscribers: it stops the clock at a step's end before they act on
            # it (a test evaluation every k steps is no part of a training step)
            self.timer = StepTimer(bus, frozen=lambda: bool(exporter.frozen))
            CallbackSubscriber(["batch_started"], self._step_started, bus)
            for index, subscriber in enumerate(self.subscribers, 1):
                taken = [kind for kind in subscriber.publications if kind in RESERVED_KEYS]
                if taken:  # it would be overwritten in every report
                    raise ValueError(
                        f"{call}: subscriber {index} ({subscriber!r}) publishes {taken[0]!r}, a "
                        f"key ikkuna_tune adds to every report itself (taken: "
                        f"{list(RESERVED_KEYS)}); name its output otherwise"
                    )
                try:
                    subscriber.attach(bus)
                except Exception as error:
                    text = f"{call}: cannot attach subscriber {index} ({subscriber!r}): {error}"
                    raise renamed(error, text) from error
            published = {k: bus.kind_type(k) for s in self.subscribers for k in s.publications}
            self.collector = None
            if published:
                self.collector = MetricCollector(published, list(exporter.modules))
                self.collector.attach(bus)
        except Exception:
            exporter.close()
            for subscriber in list(bus.subscribers):
                subscriber.detach()
            raise
        if self.context is not None and log_dir is not None:
            # in a folder the user chose, other trials may write too: only this one's files
            only = None if chosen else bus.event_files
            self._uploader = TrialUploader(
                log_dir, _storage_subdir(log_dir, self.context, chosen), only
            )
        self.bus, self.exporter = bus, exporter
        try:
            self._restore()
        except Exception as error:
            text = f"{call}: restoring ikkuna_tune's state from the trial's checkpoint: {error}"
            raise renamed(error, text) from error
        if self.state_lost:
            # the model goes on from a checkpoint but the step counters start again at 0: in
            # the same run its steps would overwrite the earlier attempts' (or be drawn among
            # them); a run of their own keeps both, each at the steps it counted, named after
            # the checkpoint (an attempt restored from it again goes on in the same run)
            self._event_run = f"resumed_without_state_{self._restored_name}"
        if self._event_run is not None and bus.log_dir is not None:
            # (restored from a checkpoint of such an attempt: its run goes on)
            bus.move_log_dir(bus.log_dir / self._event_run)
            if self.state_lost:
                logger.warning(
                    "ikkuna_tune's step counters start again at 0 after a checkpoint without "
                    "its state: this attempt's TensorBoard values go to the run %s (steps "
                    "counted from this restore)",
                    bus.log_dir,
                )
        if chosen:
            # the steps from here on supersede those an earlier attempt of this trial wrote
            # after its checkpoint (or all of them, starting afresh, or in the run of an
            # attempt restored from the same checkpoint without its state): TensorBoard shows
            # each step once, with this attempt's values
            bus.restart_at(exporter.global_step + 1 if exporter.steps_started else 0)
        return exporter

    # ------------------------------------------------------------ reporting
    def output_names(self) -> set[str]:
        names = {t for s in self.subscribers for t in s.publications} | set(RESERVED_KEYS)
        if self.worker is not None:  # rank 0 of a Ray Train job may name its reports
            names.add(keys.TRAIN_REPORT)
        return names

    def merge(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The user's metrics plus every subscriber output, as Python numbers."""
        if not isinstance(metrics, Mapping):
            raise ValueError(f"Expected `metrics` to be a dict but got {type(metrics).__name__}")
        _check_names(metrics)
        taken = self.output_names()
        # outputs of other tags (``<kind>_<tag>``), named once such a pass was measured: one
        # the user has reported a metric of that name since before is theirs (below)
        tagged = self.collector.reported_kinds() - taken if self.collector is not None else set()
        user_tops = {str(k).split("/")[0] for k in metrics}
        if self._resumed_from is not None and not self._merged_once:
            # the first report after a restore: the user's names of the run before are not
            # known where the checkpoint holds no ikkuna_tune state (or one saved without them)
            self._user_names |= user_tops & tagged
        self._merged_once = True
        # "frozen/x" is what Tune makes of the layer x of the output "frozen": taken too
        clashes = sorted(
            k
            for k in metrics
            if (top := str(k).split("/")[0]) in taken
            or (top in tagged and top not in self._user_names)
        )
        if clashes:
            raise ValueError(
                f"Metric name(s) {clashes} collide with ikkuna_tune outputs; rename them "
                f"(taken: {sorted(taken | tagged)}, and '<name>/...' for each)"
            )
        self._user_names |= user_tops
        assert self.exporter is not None and self.bus is not None
        if self.exporter.closed and not self._warned_closed:
            self._warned_closed = True
            warnings.warn(
                "ik.report: the trial's Exporter was closed (exporter.close()), so nothing is "
                "measured any more: ikkuna_tune's outputs are None from here on",
                UserWarning,
                stacklevel=4,  # the user's ik.report(...)
            )
        self.bus.flush()
        if self._local_release:  # a learning rate changed before this report: now
            self._apply_releases(self._due_releases(on_device=True))
        outputs: dict[str, Any] | None = None
        if self.collector is not None:
            # the user's tensors read with the subscribers' values: one transfer per device
            collector = self.collector

            def read(tensors: list[torch.Tensor]) -> list[float]:
                nonlocal outputs
                outputs, numbers = collector.collect_with(tensors)
                return numbers

            merged = plain_metrics(metrics, read)
        else:
            merged = plain_metrics(metrics)
        if outputs is not None:
            for top in sorted(self._user_names.intersection(outputs)):
                # another tag's output named like a metric the trial has reported before it
                # was measured: the user's metric keeps its name and values
                del outputs[top]
                if top not in self._warned_names:
                    self._warned_names.add(top)
                    warnings.warn(
                        f"ik.report: ikkuna_tune's output {top!r} (of passes under another "
                        f"tag) is not reported: the trial has reported a metric of that name "
                        "since before; rename the metric to have both",
                        UserWarning,
                        stacklevel=4,  # the user's ik.report(...)
                    )
            self._warn_unmeasured(outputs)
            merged.update(outputs)
        exporter = self.exporter
        order = exporter.layer_order  # input side first, as data flows (SVCCAScheduler's order)
        held = set(exporter.held_fixed())  # (a pass over the parameters, once a report)
        released = self._past_retrained(order, held)
        if self._local_release:
            self._apply_releases(released)
        else:  # rank 0's, on the data flow its probes recorded, unfrozen on every rank after
            # the report (the other ranks' order is the registration order)
            first = self.worker is not None and self.worker.first
            self._retrained_releases = released if first else []
        merged[keys.FROZEN] = {name: int(name in exporter.frozen) for name in order}
        merged[keys.TRAINABLE] = {name: int(name not in held) for name in order}
        # the parameters frozen while this iteration trained, step by step (a layer frozen at
        # the epoch's end, before this report, trained in all of it); without a step since the
        # last report, those frozen now
        total, steps = self._frozen_shares
        self._frozen_shares = (0.0, 0)
        merged[keys.FROZEN_FRACTION] = (
            total / steps if steps else exporter.frozen_parameter_fraction()
        )
        merged[keys.TRAIN_STEPS] = steps
        # every report has the same keys, from the first one on (Tune fixes progress.csv's
        # columns at the first report): "" for a layer not frozen, NaN for a step time not
        # measured yet
        frozen = exporter.frozen
        reasons = {
            name: self.freeze_reasons.get(name, keys.FROZEN_BY_TRIAL) if name in frozen else ""
            for name in order
        }
        # a reason for a layer not tracked is kept; that of a layer the training code has
        # unfrozen since is not (its frozen flag is 0 now)
        reasons.update({n: r for n, r in self.freeze_reasons.items() if n not in reasons})
        merged[keys.FREEZE_REASON] = reasons
        # why a layer the scheduler froze trains again, in the first report after it does (a
        # reason repeated later would read as another unfreeze)
        merged[keys.UNFREEZE_REASON] = {
            name: "" if name in frozen else self.unfreeze_reasons.get(name, "") for name in order
        }
        self.unfreeze_reasons = {}
        merged[keys.LR_SCALE] = self._lr_scale()
        merged[keys.LR_BASE_SCALE] = self._lr_base_scale()
        step_seconds = self.timer.pop_mean() if self.timer is not None else None
        merged[keys.STEP_SECONDS] = math.nan if step_seconds is None else step_seconds
        # the mean of the steps that started with no layer frozen, before the first that did
        total, count = self.timer.unfrozen if self.timer is not None else (0.0, 0)
        merged[keys.STEP_SECONDS_UNFROZEN] = total / count if count else math.nan
        return merged

    def _lr_scale(self) -> float:
        """The learning rate now over the largest it has been, for the parameter group that
        has decayed least (1.0 before any decay or during a warm-up; NaN without an optimizer
        or with learning rates held on an accelerator). The largest is taken at each step's
        start (learning rates held as tensors: at each report and the first step after it)."""
        exporter = self.exporter
        assert exporter is not None
        self._note_hand_over(exporter.optimizers)
        now = snapshot(exporter.optimizers)
        peaks = self._peak_rates
        for key, lr in [*(self._period_rates or {}).items(), *now.items()]:
            peaks[key] = max(peaks.get(key, abs(lr)), abs(lr))
        scales = [abs(lr) / peaks[key] for key, lr in now.items() if peaks[key] > 0]
        return max(scales) if scales else math.nan

    def _lr_base_scale(self) -> float:
        """How far the parameter groups are into a warm-up: the largest, over the groups, of
        the group's rate over the rate its scheduler starts from
        (:func:`~ikkuna_tune.tune.lr_release.base_rates`) where the rate was never higher
        (read after :meth:`_lr_scale`, which keeps each group's largest), else 1 (a group
        without a scheduler, or one whose rate fell from its largest: no warm-up); NaN where
        no group has a scheduler's starting rate."""
        exporter = self.exporter
        assert exporter is not None
        now, bases = snapshot(exporter.optimizers), base_rates(exporter.optimizers)
        if not bases:
            return math.nan
        peaks = self._peak_rates
        scales = []
        for key, lr in now.items():
            base, peak = bases.get(key), peaks.get(key, abs(lr))
            fell = abs(lr) < peak * (1.0 - 1e-9)
            scales.append(abs(lr) / abs(base) if base and not fell else 1.0)
        return max(scales) if scales else math.nan

    def _note_hand_over(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Start the largest learning rates afresh when the optimizers watched are others
        than before (``exporter.set_optimizers``): the rates are kept by (optimizer, group)
        position, and a new optimizer's first group is not the old one's (Adam at 1e-3 after
        SGD at 0.1 has not decayed a hundredfold). The optimizers are told apart by identity,
        without keeping a reference to them."""
        ids = tuple([id(o) for o in optimizers])
        if ids == self._optimizer_ids:
            return
        if self._optimizer_ids is not None:
            self._peak_rates = {}
            self._period_rates = snapshot(optimizers) if self._period_rates is not None else None
        self._optimizer_ids = ids

    def _note_peaks(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Raise the largest learning rate of each group to its current one, if larger (at
        each step's start; Python numbers only, a tensor is read at the report)."""
        peaks = self._peak_rates
        for i, optimizer in enumerate(optimizers):
            for j, group in enumerate(optimizer.param_groups):
                lr = group.get("lr")
                if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
                    lr = abs(lr)
                    if lr > peaks.get((i, j), -1.0):
                        peaks[(i, j)] = lr

    @property
    def _local_release(self) -> bool:
        """Whether this process decides its own releases: not a rank of a Ray Train job of
        several workers, whose ranks must unfreeze the same layers before the same step: rank
        0 decides for them at each report, which every rank makes (:meth:`_as_rank_0_decides`).
        (The ranks of a data-parallel job run outside Ray Train decide each for itself, on the
        same learning rates: their reports need not be collective.)"""
        return self.worker is None or not self.worker.distributed

    def _as_rank_0_decides(
        self, directives: list[dict[str, Any]], release: bool, error: str | None = None
    ) -> None:
        """Apply ``directives`` (rank 0's; the other ranks pass none) so that every rank of a
        Ray Train job ends with the same frozen layers; a collective every rank joins, one
        broadcast. Rank 0 applies them with all its checks (:meth:`apply`) and, with
        ``release``, unfreezes what it finds due (with the layers past one the training code
        trains again, found at the report on rank 0's data flow: :meth:`merge`); then every
        other rank carries out exactly what rank 0 did (:meth:`_carry_out`), not the
        directives: the checks read the data flow, which only rank 0's probes record, so the
        ranks would judge differently. The broadcast also carries rank 0's frozen layers after
        all this: a rank that ends with others (a freeze its own training code made, a
        checkpoint it could not read) raises, naming both, rather than failing in DDP's next
        all-reduce.

        ``error`` (rank 0's, the ranks' frozen layers differed at the report) is raised on every
        rank instead (each would otherwise wait for the others in a collective).

        Raises:
            RuntimeError: ``error``, or this rank's frozen layers differ from rank 0's.
        """
        worker = self.worker
        # (at a restore too: those found at the report whose checkpoint it restores, saved
        # with it before they were carried out)
        retrained, self._retrained_releases = self._retrained_releases, []
        if worker is None or not worker.distributed:
            if error is not None:
                raise RuntimeError(error)
            self._apply_releases(retrained)  # (a job's checkpoint restored in one process)
            self.apply(directives, release=release)
            return
        exporter = self.exporter
        assert exporter is not None
        outcome: dict[str, Any] | None = None
        if worker.first:
            if error is None:
                done = self.apply(directives)
                # (and those past a layer the training code trains again, found at the report)
                due = self._due_releases(on_device=True) if release else []
                released = [*due, *retrained]
                self._apply_releases(released)
                outcome = {"done": done, "released": released, "frozen": sorted(exporter.frozen)}
            else:
                outcome = {"error": error}
        outcome = broadcast_from_first(outcome)
        assert outcome is not None
        if "error" in outcome:
            raise RuntimeError(outcome["error"])
        if worker.first:
            return
        self._carry_out(outcome["done"])
        self._apply_releases(outcome["released"])
        own = sorted(exporter.frozen)
        if own != outcome["frozen"]:
            raise RuntimeError(
                f"Expected rank {worker.rank} to have the layers rank 0 has frozen, "
                f"{outcome['frozen']}, but it has {own} frozen (frozen or unfrozen by the "
                "training code on some ranks only?): DDP's gradient all-reduce would differ "
                "across the ranks"
            )

    def _due_releases(self, on_device: bool) -> list[tuple[str, str]]:
        """The layers to unfreeze now, each with its reason: each layer the scheduler froze
        one of whose learning rates has moved by the directive's factor since
        (:mod:`ikkuna_tune.tune.lr_release`), and each layer the scheduler froze after it in
        the network (judged on inputs that change again, and what is frozen stays a prefix).
        ``on_device`` False (at a step's start) leaves learning rates held on an accelerator to
        the report."""
        exporter = self.exporter
        if exporter is None or not self.release.watching or exporter.closed:
            return []
        self.release.keep_only(exporter.frozen)  # those unfrozen by the training code go
        modules = exporter.modules
        due = self.release.due(
            exporter.optimizers, on_device, lambda name: modules[name].module.parameters()
        )
        if not due:
            return []
        position = {name: i for i, name in enumerate(exporter.layer_order)}
        upstream, change = min(due, key=lambda d: position.get(d[0], len(position)))
        first = position.get(upstream, len(position))
        changed = dict(due)
        released = [(name, change.reason()) for name, change in due]
        for name in self.release.tracked:
            if name not in changed and position.get(name, -1) > first:
                released.append((name, change.reason(upstream=upstream)))
        return released

    def _past_retrained(self, order: list[str], held: set[str]) -> list[tuple[str, str]]:
        """The frozen layers to unfreeze, each with its reason, after a layer the training code
        held fixed at the last report and trains now (gradual unfreezing): they were frozen
        past it as past a frozen layer, and a layer that trains before a frozen one changes
        what it sees (freezing never goes past one). ``order`` is the data flow (rank 0's in a
        data-parallel job: only its probes record it); ``held`` the layers held fixed now."""
        exporter = self.exporter
        assert exporter is not None
        retrained, self._held = self._held - held, held
        positions = [order.index(name) for name in retrained if name in order]
        if not positions or not exporter.frozen:
            return []
        first = min(positions)
        again = order[first]
        return [
            (name, f"layer {again!r} before it trains again (held fixed by the training code)")
            for name in order[first + 1 :]
            if name in exporter.frozen
        ]

    def _apply_releases(self, released: list[tuple[str, str]]) -> None:
        """Unfreeze the layers ``released`` (from :meth:`_due_releases`), with their reasons."""
        exporter = self.exporter
        assert exporter is not None
        for name, reason in released:
            self.release.forget(name)
            if name not in exporter.frozen:  # the training code unfroze it already
                continue
            exporter.unfreeze(name)
            self.freeze_reasons.pop(name, None)
            self.unfreeze_reasons[name] = reason
            logger.info("Unfroze layer %r at step %d: %s", name, exporter.global_step, reason)

    def _step_started(self, message: Any) -> None:
        exporter = self.exporter
        if exporter is None:
            return
        optimizers = exporter.optimizers
        self._note_hand_over(optimizers)
        if self._period_rates is None:  # the first step since the last report
            self._period_rates = snapshot(optimizers)
            self._share_of.clear()
            self._trainable = _trainable(exporter.model)
        elif exporter.train_step == 0:
            # an epoch's first step, where training code unfreezes by hand: looked at once an
            # epoch (once a step, it cost a Python call per parameter at every step)
            trainable = _trainable(exporter.model)
            if trainable != self._trainable:
                self._trainable = trainable
                self._share_of.clear()
        self._note_peaks(optimizers)
        if self.release.watching and self._local_release:
            self._apply_releases(self._due_releases(on_device=False))
        frozen = exporter.frozen
        share = self._share_of.get(frozen)
        if share is None:  # counted once per set of frozen layers and report, not per step
            share = self._share_of[frozen] = exporter.frozen_parameter_fraction()
        total, steps = self._frozen_shares
        self._frozen_shares = (total + share, steps + 1)

    def _warn_unmeasured(self, outputs: Mapping[str, Any]) -> None:
        """Warn (once a key) that an output of one value was not measured for this report: its
        ``None`` makes Tune's stoppers and schedulers that compare it (``stop={...}``, ASHA,
        the median rule) raise, ending the sweep. Outputs per layer are left alone (the first
        report's ``self_similarity`` is always ``None``; Tune compares none of them as a rule)."""
        unmeasured = [
            key
            for key, value in outputs.items()
            if value is None and key not in self._warned_unmeasured
        ]
        if not unmeasured:
            return
        self._warned_unmeasured.update(unmeasured)
        reasons = [
            f"{type(subscriber).__name__}: {why}"
            for subscriber in self.subscribers
            for key, why in subscriber.unmeasurable().items()
            if key in unmeasured
        ]
        named = ", ".join(map(repr, unmeasured))
        # what the subscribers know of why, else the usual cause
        why = "; ".join(reasons) or (
            "a subscriber measuring every `frequency` batches, with fewer batches between "
            "reports, say"
        )
        warnings.warn(
            f"ik.report: {named} not measured since the previous report, so None in this one "
            f"({why}). A Tune stopper or scheduler that compares such a key "
            "(stop={...}, ASHAScheduler, MedianStoppingRule) fails on None and ends the sweep: "
            "measure it at every report (frequency='epoch' with one report per epoch), or pass "
            "the scheduler as ik.SVCCAScheduler(base=...), which leaves reports without the "
            "metric unjudged",
            UserWarning,
            stacklevel=4,  # the user's ik.report(...)
        )

    def report(self, metrics: Mapping[str, Any], checkpoint: Any = None) -> dict[str, Any]:
        if self.exporter is None:
            raise RuntimeError(
                "report() was called before watch(model, ...): call ikkuna_tune.watch first"
            )
        if checkpoint is not None:
            # before the outputs are taken: a refused checkpoint loses no measured value
            self._check_checkpoint(checkpoint)
        merged = self.merge(metrics)
        self._check_epochs(merged)
        # a look at every report, kept in the checkpoint: an order to freeze after a
        # BatchNorm is judged against the report before (the first order is no first look)
        self.exporter.look_at_running_stats()
        if self.worker is not None:
            return self._report_from_worker(merged, checkpoint)
        if self.in_tune:
            from ray import tune

            if checkpoint is not None:
                self._save(checkpoint)
                if self._uploader is not None:
                    self._uploader.upload()  # the TensorBoard files up to this checkpoint
            tune.report(merged, checkpoint=checkpoint)
        else:
            if checkpoint is not None:
                self._save(checkpoint)
            self.results.append(merged)
            logger.info("report %d: %s", len(self.results), merged)
        for hook in list(self.after_report):
            hook(self)
        if self.inbox is not None:
            self.apply(self.inbox.take())
        self._period_rates = None  # the next step starts the next report's period
        return merged

    def _report_from_worker(self, merged: dict[str, Any], checkpoint: Any) -> dict[str, Any]:
        """Report from a rank of a Ray Train job: every rank joins, Tune gets rank 0's report
        with the outputs measured on every rank averaged over them, and every rank carries out
        what rank 0 did with the directives it read (:meth:`_as_rank_0_decides`).

        Raises:
            RuntimeError: on every rank, after the report, if the ranks trained with different
                layers frozen (frozen by the training code on some ranks only), naming them.
        """
        import ray.train

        assert self.worker is not None
        # a step time a rank has not measured (NaN) is left out of the mean over the ranks
        times = (keys.STEP_SECONDS, keys.STEP_SECONDS_UNFROZEN)
        own = {k: None if _is_nan(v) and k in times else v for k, v in merged.items()}
        counts = self._sample_counts() if self.worker.distributed else {}
        # where each value was measured: only values of the same step are averaged (a rank
        # with a batch fewer in the epoch last measured a step earlier)
        at = self.collector.positions if self.collector is not None else {}
        gathered = gather_to_first((own, counts, at))
        differ = None  # (rank 0's finding, raised on every rank once the report is made)
        if gathered is not None and len(gathered) > 1:
            reports = [report for report, _, _ in gathered]
            differ = frozen_sets_differ(reports)
            merged = combine_reports(
                reports,
                self.averaged_outputs(),
                [samples for _, samples, _ in gathered],
                [where for _, _, where in gathered],
            )
            for key in times:
                if key in merged and merged[key] is None:
                    merged[key] = math.nan  # measured on no rank
        # rank 0 of a trial a scheduler steers
        named = self.inbox is not None and self.inbox.steered()
        if named:  # (merge refused a user metric of that name)
            self._train_reports += 1
            self._report_name = f"{self._attempt}-{self._train_reports}"  # saved in checkpoint
            resumed = f"@{self._resumed_from}" if self._resumed_from else ""
            merged[keys.TRAIN_REPORT] = self._report_name + resumed
        if checkpoint is not None:
            self._save(checkpoint)
        ray.train.report(merged, checkpoint=checkpoint)
        for hook in list(self.after_report):
            hook(self)
        directives: list[dict[str, Any]] = []
        if differ is None and self.inbox is not None:
            if named:
                # Train forwards the report to Tune later: read once the scheduler has handled it
                self.inbox.wait_handled(merged[keys.TRAIN_REPORT])
            directives = self.inbox.take()
        self._as_rank_0_decides(directives, release=True, error=differ)
        self._period_rates = None  # the next step starts the next report's period
        return merged

    def _sample_counts(self) -> dict[str, float]:
        """By report key, the samples the latest value of each output that is a fraction of
        samples counted on this rank (:meth:`Subscriber.sample_counts
        <ikkuna_tune.subscribers.base.Subscriber.sample_counts>`), read in one host transfer."""
        found = {
            reported_kind(kind, tag): count
            for subscriber in self.subscribers
            for (kind, tag), count in subscriber.sample_counts().items()
        }
        numbers = to_numbers([(key, count, 0) for key, count in found.items()])
        return dict(zip(found, numbers))

    def averaged_outputs(self) -> set[str]:
        """Outputs a Ray Train job reports as their mean over the ranks (weighted by the
        samples each rank counted, for those that give counts: :meth:`_sample_counts`): those
        of the subscribers every rank runs, and the step time."""
        every_rank = {t for s in self.subscribers if s.uses_model is None for t in s.publications}
        if self.collector is not None:  # their values of passes under other tags too
            tagged = self.collector.tagged.items()
            # (but a name the user's metric keeps, which is rank 0's like any user metric)
            every_rank |= {
                name for name, kind in tagged if kind in every_rank and name not in self._user_names
            }
        return every_rank | {keys.STEP_SECONDS, keys.STEP_SECONDS_UNFROZEN}

    def _check_epochs(self, merged: Mapping[str, Any]) -> None:
        """Warn once if the first report after training steps finds that no epoch has ended
        while some subscriber that runs at the end of one (``frequency='epoch'``) has no value
        in report ``merged`` (one that also publishes per step, a ``MessageMeanSubscriber``
        over per-step norms, has)."""
        exporter = self.exporter
        if self._epochs_checked or exporter is None or exporter.steps_started == 0:
            return
        self._epochs_checked = True
        if exporter.epoch > 0:
            return
        waiting = [
            s
            for s in self.subscribers
            if "epoch_finished" in s.kinds and all(_unset(merged.get(t)) for t in s.publications)
        ]
        if not waiting:
            return
        names = ", ".join(type(s).__name__ for s in waiting)
        outputs = sorted({t for s in waiting for t in s.publications})
        warnings.warn(
            f"ik.report: {exporter.steps_started} training steps and no epoch has ended, so "
            f"the subscribers that run at the end of an epoch ({names}) have not run and "
            f"{outputs} are None. Call exporter.epoch_finished() (exporter = ik.watch(...)) at "
            "the end of every epoch, before ik.report; report does not end epochs. (If this "
            "report is in the middle of the first epoch and you end it later, all is well.)",
            UserWarning,
            stacklevel=4,  # the user's ik.report(...)
        )

    def apply(self, directives: list[dict[str, Any]], release: bool = True) -> list[dict[str, Any]]:
        """Carry out the scheduler's directives (``{"freeze": [layer, ...], "reasons": {...}}``).

        A directive's layers are taken in order up to the first this trial will not freeze:
        something outside the tracked layers trains before it (its input keeps changing), it is
        the last trainable layer, or it shares a parameter with a layer that stays trainable
        (a tied weight is frozen only with every layer holding it). That layer and the ones
        ordered after it (which wait for it) are refused, each with one warning.

        Returns what was done, one record per directive, shaped like one: the layers frozen
        (``freeze``, with their ``reasons``), its ``unfreeze_lr_factor`` and ``restore``, and
        the layers ``refused``. In a data-parallel job the other ranks carry out exactly these
        records (:meth:`_carry_out`): only rank 0 runs the probes that record the data flow the
        checks above read, so the other ranks could not judge alike.

        With ``release`` (and where this process decides its own releases), a layer frozen now
        whose learning rates moved since the rates it was judged at is released at once; without
        it (at a restore, inside ``ik.watch``, where the training code may not have loaded its
        optimizer's and learning-rate scheduler's state yet) at the first step's start.
        """
        exporter = self.exporter
        assert exporter is not None
        done: list[dict[str, Any]] = []
        if directives and exporter.closed:  # nothing trains through it any more
            logger.info("Not applying %s: the trial's Exporter is closed", directives)
            return done
        for directive in directives:
            reasons = directive.get("reasons", {})
            try:
                factor = check_factor_or_none(
                    "unfreeze_lr_factor", directive.get("unfreeze_lr_factor")
                )
            except ValueError as error:  # (a scheduler of another version)
                logger.warning("Ignoring the directive's learning-rate factor: %s", error)
                factor = None
            names = [n for n in directive.get("freeze", ()) if n not in exporter.frozen]
            accepted: list[str] = []
            cut: tuple[str, str] | None = None
            for name in [n for n in names if n in exporter.modules]:
                if exporter.flow_stale:
                    cut = (name, "the data flow of an older version's checkpoint is recorded "
                           "again at the next probe; until then nothing is frozen "
                           "automatically")  # fmt: skip
                    break
                upstream = exporter.trains_upstream(name)
                if upstream:
                    cut = (name, f"{upstream} still train(s) upstream of it, or where the "
                           "probe cannot tell (modules outside the tracked layers, layers the "
                           "probe never called; track them, or freeze them yourself)")  # fmt: skip
                    break
                if not exporter.leaves_trainable(name, accepted):
                    cut = (name, "it is the last trainable layer")
                    break
                accepted.append(name)
            # (a tie cut comes before any other: all of accepted comes before that)
            _, tied = tie_closed(accepted, exporter.frozen, exporter.shares_with)
            if tied is not None:
                cut = (
                    tied[0],
                    f"it shares a parameter with {tied[1]} (or with a layer tied to it), "
                    "which would stay trainable",
                )
            refused = names[names.index(cut[0]) :] if cut is not None else []
            if cut is not None:
                self._refuse(refused, cut)
            restore = bool(directive.get("restore"))
            frozen: list[str] = []
            for name in names[: names.index(cut[0])] if cut is not None else names:
                try:
                    exporter.freeze(name)
                except ValueError as error:
                    logger.warning("Not freezing %r as the scheduler asked: %s", name, error)
                    continue
                frozen.append(name)
                self._note_freeze(name, reasons.get(name), factor, restore)
            done.append(
                {
                    "freeze": frozen,
                    "reasons": {n: str(reasons[n]) for n in frozen if n in reasons},
                    "unfreeze_lr_factor": factor,
                    "restore": restore,
                    "refused": refused,
                }
            )
            if release and self._local_release:  # (a data-parallel job's rank 0 decides at
                # the report)
                self._apply_releases(self._due_releases(on_device=True))
        return done

    def _note_freeze(self, name: str, reason: Any, factor: float | None, restore: bool) -> None:
        """Keep what a freeze the scheduler ordered needs later: its reason (reported), and the
        learning rates it was judged at (it is released once they move, :attr:`release`)."""
        exporter = self.exporter
        assert exporter is not None
        if reason is not None:
            self.freeze_reasons[name] = str(reason)
        self.unfreeze_reasons.pop(name, None)
        self.release.track(
            name,
            factor,
            exporter.optimizers,
            exporter.modules[name].module.parameters(),
            exporter.global_step,
            # the rates the layer was judged at: one that changed after the epoch that report
            # measured, before the freeze, releases it again at once (a freeze ordered again
            # at a restore was judged at most at the report of the checkpoint: its period's
            # rates, saved with it)
            self._restored_rates if restore else self._period_rates,
        )

    def _carry_out(self, done: list[dict[str, Any]]) -> None:
        """On a rank of a data-parallel job other than 0: freeze exactly the layers rank 0
        froze (``done``, from its :meth:`apply`), without judging them again. This rank runs no
        probe (they run on rank 0), so it knows nothing of the data flow (what trains upstream
        of a layer) and would accept a freeze rank 0 refused; frozen on one rank only, a layer
        makes the ranks' gradient all-reduce differ, and the job fails at its next backward
        pass.

        Raises:
            RuntimeError: a layer rank 0 froze cannot be frozen here (the ranks would differ).
        """
        exporter = self.exporter
        assert exporter is not None
        if exporter.closed:
            if done:
                logger.info("Not carrying out %s: the trial's Exporter is closed", done)
            return
        rank = self.worker.rank if self.worker is not None else 0
        for record in done:
            if record.get("refused"):
                logger.debug("Rank 0 refused to freeze %s", record["refused"])
            reasons = record.get("reasons", {})
            for name in record.get("freeze", ()):
                try:
                    exporter.freeze(name)
                except ValueError as error:
                    raise RuntimeError(
                        f"Rank {rank} cannot freeze layer {name!r}, which rank 0 froze: {error}; "
                        "the ranks' frozen layers would differ and DDP fail across them"
                    ) from error
                self._note_freeze(
                    name, reasons.get(name), record.get("unfreeze_lr_factor"), record["restore"]
                )

    def _refuse(self, names: list[str], cut: tuple[str, str]) -> None:
        """Warn once for each of ``names`` that the trial will not freeze it (``cut``: the
        first of them and why)."""
        first, why = cut
        for name in names:
            if name not in self._refused:
                self._refused.add(name)
                logger.warning(
                    "Not freezing %r as the scheduler asked: %s",
                    name,
                    why if name == first else f"it comes after {first!r}",
                )

    # ---------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        assert self.exporter is not None
        return {
            "exporter": self.exporter.state_dict(),
            "subscribers": [s.state_dict() for s in self.subscribers],
            # which subscriber each state is: a list edited since is matched by type
            "subscriber_types": [_type_name(s) for s in self.subscribers],
            "unfrozen_time": list(self.timer.unfrozen if self.timer else (0.0, 0)),
            "frozen_once": bool(self.timer and self.timer.frozen_once),
            "freeze_reasons": dict(self.freeze_reasons),
            "unfreeze_reasons": dict(self.unfreeze_reasons),
            "release": self.release.state_dict(),
            "peak_rates": [[i, j, lr] for (i, j), lr in self._peak_rates.items()],
            # the learning rates of the period the checkpoint's report measured (see apply)
            "period_rates": [[i, j, lr] for (i, j), lr in (self._period_rates or {}).items()],
            "train_report": self._report_name,
            "event_run": self._event_run,
            # the user's metric names, which another tag's outputs never take over
            "user_names": sorted(self._user_names),
            # rank 0 of a Ray Train job: the layers to unfreeze past one the training code
            # trains again, found at this report and carried out after its checkpoint
            "retrained_releases": [list(release) for release in self._retrained_releases],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.exporter is not None
        saved = state.get("subscribers", [])
        types = state.get("subscriber_types")
        if not isinstance(types, list) or len(types) != len(saved):
            types = None  # (a state saved before types were: matched by position)
        partial = self.worker is not None and len(self.positions) < len(saved)
        if partial and len(saved) > max(self.positions, default=-1):
            saved = [saved[i] for i in self.positions]  # the ones this rank runs
            types = None if types is None else [types[i] for i in self.positions]
        self.exporter.load_state_dict(state["exporter"])
        total, count = state.get("unfrozen_time", (0.0, 0))
        if self.timer is not None:
            self.timer.unfrozen = (float(total), int(count))
            self.timer.frozen_once = bool(state.get("frozen_once", False))
        self.freeze_reasons = dict(state.get("freeze_reasons", {}))
        self.unfreeze_reasons = dict(state.get("unfreeze_reasons", {}))
        self._retrained_releases = [
            (str(name), str(reason)) for name, reason in state.get("retrained_releases", [])
        ]
        self.release.load_state_dict(state.get("release", {}))
        try:
            self._peak_rates = {
                (int(i), int(j)): float(lr) for i, j, lr in state.get("peak_rates", [])
            }
        except (TypeError, ValueError) as error:
            logger.warning("Skipping the saved peak learning rates: %s", error)
        try:
            rates = {(int(i), int(j)): float(lr) for i, j, lr in state.get("period_rates", [])}
            self._restored_rates = rates or None
        except (TypeError, ValueError) as error:
            logger.warning("Skipping the saved learning rates of the last report: %s", error)
        names = state.get("user_names", [])
        self._user_names = (
            {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
        )
        run = state.get("event_run")
        plain = isinstance(run, str) and run and Path(run).name == run and run[0] != "."
        self._event_run = run if plain else None
        resumed = state.get("train_report")
        # restored from a checkpoint: of the report named, or of one not named ('?')
        self._resumed_from = resumed if isinstance(resumed, str) else "?"
        self._load_subscribers(saved, types)

    def _load_subscribers(self, saved: list[Any], types: list[str] | None) -> None:
        """Give each subscriber its saved state: the k-th subscriber of a type gets the k-th
        state saved for that type (by position for a state without types, when the counts
        agree), or the next one of its type where it refuses that one. A subscriber with no
        state to match (the list was edited since the checkpoint) or that refuses every state
        of its type (other settings, a probe of another size) keeps its fresh state (put back
        where a refused one was half loaded) and starts afresh, with a warning naming it; the
        rest of the trial's state is restored all the same."""
        if types is None:
            types = (
                [_type_name(s) for s in self.subscribers]
                if len(saved) == len(self.subscribers)
                else [""] * len(saved)
            )
        pending: dict[str, list[Any]] = {}
        for name, sub_state in zip(types, saved, strict=True):
            pending.setdefault(name, []).append(sub_state)
        for subscriber in self.subscribers:
            states = pending.get(_type_name(subscriber), [])
            why = "the checkpoint holds no state for it (the subscribers changed since)"
            fresh = copy.deepcopy(subscriber.state_dict()) if states else None
            for index, sub_state in enumerate(states):
                try:
                    subscriber.load_state_dict(sub_state)
                except Exception as error:  # another probe size, other settings, bad shapes
                    why = f"its saved state does not fit it ({type(error).__name__}: {error})"
                    subscriber.load_state_dict(fresh)  # (a refused state may be half loaded)
                    continue
                del states[index]  # taken: the next subscriber of the type tries the rest
                break
            else:
                logger.warning("%s starts afresh: %s", _type_name(subscriber), why)
                subscriber.restored_without_state()

    def _check_checkpoint(self, checkpoint: Any) -> Path:
        """The local directory of ``checkpoint``, or a ValueError saying what was expected."""
        import ray.train
        from ray import tune

        if not isinstance(checkpoint, (tune.Checkpoint, ray.train.Checkpoint)):
            expected = "ray.train.Checkpoint" if self.worker is not None else "ray.tune.Checkpoint"
            raise ValueError(
                f"Expected `checkpoint` to be a {expected} but got {type(checkpoint).__name__}"
            )
        directory = Path(checkpoint.path)
        if not directory.is_dir():
            raise ValueError(
                f"Expected a checkpoint in a local directory (Checkpoint.from_directory) but "
                f"{checkpoint.path!r} is not one"
            )
        return directory

    def _save(self, checkpoint: Any) -> None:
        torch.save(self.state_dict(), self._check_checkpoint(checkpoint) / STATE_FILE)

    def _restore(self) -> None:
        """Restore from the trial's checkpoint; then apply the freezes ordered before a crash.

        A state file that cannot be read is named in a warning and skipped (the user's model
        is restored by their own code; ikkuna_tune's subscribers start afresh). Freezes the
        scheduler ordered before the trial failed are applied only when a checkpoint was
        restored: a trial that starts over has not converged where it starts.
        """
        if not self.in_tune:
            return
        if self.worker is not None:
            import ray.train

            checkpoint = ray.train.get_checkpoint()
        else:
            from ray import tune

            checkpoint = tune.get_checkpoint()
        # in full: the flag of a directive posted before a crash may be down already
        directives = self.inbox.take(check_flag=False) if self.inbox is not None else []
        if checkpoint is None:
            if directives:
                logger.info("Starting afresh: not applying %s", directives)
            if self.worker is not None:  # every rank joins; (with nothing frozen) all agree
                self._as_rank_0_decides([], release=False)
            return
        self._resumed_from = "?"  # from a checkpoint; its state file names its report
        self._restored_name = _run_name(checkpoint.path)
        with checkpoint.as_directory() as directory:
            path = Path(directory) / STATE_FILE
            if path.exists():
                restored = self._load_state_file(path)
            else:
                logger.warning(
                    "The trial's checkpoint %s has no ikkuna_tune state file (%s: pass the "
                    "checkpoint to ik.report(..., checkpoint=...), which writes it); frozen "
                    "layers and subscriber state start afresh",
                    checkpoint.path,
                    STATE_FILE,
                )
                restored = False
        if not restored:
            self.state_lost = True
            for subscriber in self.subscribers:
                subscriber.restored_without_state()
        # rank 0 applies them, the other ranks carry out what it did (a Ray Train job)
        self._as_rank_0_decides(directives, release=False)

    def _load_state_file(self, path: Path) -> bool:
        """Load ikkuna_tune's state from ``path``; False (with a warning) if it cannot be read."""
        try:
            state = torch.load(path, weights_only=True)
        except Exception as error:  # truncated, corrupt, or not ours
            logger.warning(
                "Could not read ikkuna_tune's state file %s (%s: %s); frozen layers and "
                "subscriber state start afresh",
                path,
                type(error).__name__,
                error,
            )
            return False
        self.load_state_dict(state)
        logger.info("Restored ikkuna_tune state from %s", path)
        return True


def _check_names(metrics: Mapping[Any, Any], within: str = "") -> None:
    """Refuse a metric name that is not a string (in nested dicts too): Tune's own loggers
    fail on one on the driver, ending the whole experiment.

    Examples:
        >>> _check_names({"loss": 0.5, "acc": {"top1": 0.9}})
        >>> _check_names({"acc": {1: 0.9}})
        Traceback (most recent call last):
        ...
        ValueError: Expected metric names to be strings but got 1 (int) in 'acc'
    """
    for name, value in metrics.items():
        if not isinstance(name, str):
            where = f" in {within!r}" if within else ""
            raise ValueError(
                f"Expected metric names to be strings but got {name!r} "
                f"({type(name).__name__}){where}"
            )
        if isinstance(value, Mapping):
            _check_names(value, f"{within}/{name}" if within else name)
    if not within:
        _check_flat_names(metrics)


def _trainable(model: nn.Module) -> tuple[bool, ...]:
    return tuple(param.requires_grad for param in model.parameters())


def _check_flat_names(metrics: Mapping[str, Any]) -> None:
    """Refuse two metric names that become one in Tune's results, which joins nested names with
    '/': one of the two values would be lost.

    Examples:
        >>> _check_flat_names({"val/loss": 1.0, "val": {"acc": 2.0}})
        >>> _check_flat_names({"val/loss": 1.0, "val": {"loss": 2.0}})
        Traceback (most recent call last):
        ...
        ValueError: Metric names 'val/loss' and 'val' -> 'loss' both become 'val/loss' in ...
    """
    seen: dict[str, str] = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for name, value in tree.items():
            here = (*path, name)
            if isinstance(value, Mapping) and value:
                walk(value, here)
                continue
            flat = "/".join(here)
            said = " -> ".join(repr(part) for part in here)
            if flat in seen:
                raise ValueError(
                    f"Metric names {seen[flat]} and {said} both become {flat!r} in Tune's "
                    "results (nested names are joined with '/'); rename one"
                )
            seen[flat] = said

    walk(metrics, ())

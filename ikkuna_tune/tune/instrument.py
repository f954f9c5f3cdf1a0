"""``instrument`` a Tune trainable; ``watch`` a model and ``report`` from inside it."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ikkuna_tune.exporter import Exporter
from ikkuna_tune.tune.session import (
    SubscriberSpec,
    TrialSession,
    active_sessions,
    check_attachable,
    current_session,
    fresh_subscribers,
    reporting_session,
)
from ikkuna_tune.tune.train_workers import (
    TrialConfig,
    TrialLink,
    check_data_parallel,
    subscribers_for_rank,
    train_worker,
)

__all__ = ["instrument", "local_results", "report", "watch"]

logger = logging.getLogger(__name__)

_last_local: list[list[dict[str, Any]]] = [[]]


def _check_picklable(spec: object) -> None:
    from ray import cloudpickle

    try:
        cloudpickle.dumps(spec)
    except Exception as error:
        raise ValueError(
            f"Expected `subscribers` that can be pickled (Ray ships them to every trial) but "
            f"pickling failed: {type(error).__name__}: {error}"
        ) from error


def instrument(
    trainable: Callable[..., Any], subscribers: SubscriberSpec | None = None
) -> Callable[..., Any]:
    """Wrap a Tune function trainable so each trial runs its own bus and subscribers.

    Inside the trainable call :func:`watch` once the model exists, and :func:`report` in place of
    ``tune.report``. Every subscriber output is then reported as a Tune metric, nested per layer
    (``{"self_similarity": {"conv1": 0.99}}``, which Tune shows as ``self_similarity/conv1``).

    Args:
        trainable: a function ``f(config)`` (extra keyword arguments pass through, as
            ``tune.with_parameters`` needs).
        subscribers: subscriber objects used as templates (deep-copied for every trial, never
            shared, also with ``reuse_actors=True``), or a function ``config -> subscribers``.
            Templates are checked here, in the driver: each must subscribe to built-in kinds
            or kinds the subscribers before it publish, and no two may publish the same kind. A
            function is called in each trial (the driver does not know the configs), so what
            it returns is checked by :func:`watch` there.

    Raises:
        ValueError: for a class trainable, subscribers that are neither, cannot be pickled,
            are already attached to a bus, or cannot be attached in this order (the message
            names the subscriber, and suggests the kind meant).

    Returns:
        A function trainable with the same ``__name__``, accepted by ``tune.run``,
        ``tune.Tuner``, ``tune.with_resources`` and ``tune.with_parameters``. Called directly
        with a config (no Ray), it runs the trial locally and :func:`local_results` gives its
        reports.

    Examples:
        >>> from ikkuna_tune.subscribers import NormSubscriber
        >>> def trainable(config):
        ...     model = nn.Sequential(nn.Linear(1, 1, bias=False))
        ...     nn.init.constant_(model[0].weight, config["w"])
        ...     watch(model)
        ...     model(torch.ones(1, 1))
        ...     report({"w": config["w"]})
        >>> instrument(trainable, [NormSubscriber("weights", backend=None)])({"w": -2.0})
        >>> local_results()  # doctest: +NORMALIZE_WHITESPACE
        [{'w': -2.0, 'weights_norm2': {'0': 2.0}, 'frozen': {'0': 0}, 'trainable': {'0': 1},
          'frozen_fraction': 0.0, 'train_steps': 1, 'freeze_reason': {'0': ''},
          'unfreeze_reason': {'0': ''}, 'lr_scale': nan, 'lr_base_scale': nan,
          'step_seconds': nan, 'step_seconds_unfrozen': nan}]

        Called directly, the trial ran here, without Ray (no step was timed: NaN).
    """
    if inspect.isclass(trainable) or not callable(trainable):
        raise ValueError(
            f"Expected a function trainable `f(config)` but got {trainable!r}; class "
            "trainables are not supported"
        )
    if inspect.isgeneratorfunction(trainable) or inspect.isasyncgenfunction(trainable):
        raise ValueError(
            f"Expected a function trainable `f(config)` that reports with ik.report but got the "
            f"generator function {trainable!r}: its body would run after the trial's session "
            "ended; report with ik.report instead of yielding"
        )
    if inspect.iscoroutinefunction(trainable):
        raise ValueError(
            f"Expected a function trainable `f(config)` but got the coroutine function "
            f"{trainable!r}: calling it runs nothing (Tune does not await it); train in a plain "
            "function"
        )
    if hasattr(trainable, "_ikkuna_trainable"):
        raise ValueError(
            f"Expected a trainable that is not instrumented yet but got {trainable!r}, which "
            "ik.instrument returned: instrument it once (each trial would start its session "
            "twice, and fail)"
        )
    if _takes_config(trainable) is False:
        raise ValueError(
            f"Expected a function trainable `f(config)` but got {trainable!r}, whose signature "
            f"{inspect.signature(trainable)} takes no config"
        )
    if inspect.isclass(subscribers):
        raise ValueError(
            "Expected `subscribers` to be a list of subscribers or a function config -> list "
            f"but got the class {subscribers.__name__}: pass instances "
            f"([{subscribers.__name__}(...)]), or a function that makes them from the config"
        )
    if callable(subscribers) and _takes_config(subscribers) is False:
        raise ValueError(
            f"Expected `subscribers` to be a list of subscribers or a function config -> list "
            f"but got {subscribers!r}, whose signature {inspect.signature(subscribers)} takes "
            "no config"
        )
    if subscribers is not None and not callable(subscribers):
        if isinstance(subscribers, (str, bytes, Mapping)) or not hasattr(subscribers, "__iter__"):
            raise ValueError(
                f"Expected `subscribers` to be a list of subscribers or a function "
                f"config -> list but got {subscribers!r}"
            )
        subscribers = list(subscribers)
    _check_picklable(subscribers)
    if subscribers is not None and not callable(subscribers):
        # check the templates here, in the driver, rather than in every trial
        check_attachable(fresh_subscribers(subscribers, {}))

    def instrumented(config: dict[str, Any], **kwargs: Any) -> Any:
        running = current_session()
        if running is not None and running.implicit:
            if not running.closed:
                warnings.warn(
                    "ik.instrument: the model watched outside any trial in this thread (an "
                    "earlier ik.watch) is no longer watched: its Exporter was closed as this "
                    "trainable started, since a thread watches one model at a time; watch it "
                    "again afterwards to go on",
                    UserWarning,
                    stacklevel=2,
                )
            running.close()  # a watch() made outside any trial earlier in this thread
        elif running is not None:
            raise RuntimeError("An instrumented trainable is already running in this thread")
        session = TrialSession(fresh_subscribers(subscribers, config), config)
        session.activate()
        if session.context is not None and session.trial_id is not None:
            # the same dict, carrying the trial to the workers of a Ray Train job it may start
            context = session.context
            experiment, trial_dir = context.get_experiment_name(), context.get_trial_dir()
            link = TrialLink(experiment, session.trial_id, subscribers, trial_dir)
            config = TrialConfig(config, link)
        raised = True
        try:
            result = trainable(config, **kwargs)
            raised = False
            return result
        finally:
            if not session.in_tune:
                _last_local[0] = session.results
            try:
                session.close()
            except Exception:
                if not raised:
                    raise
                # the trial's own error is the one to see
                logger.exception("Closing the trial's session failed after the trial raised")

    instrumented.__name__ = getattr(trainable, "__name__", "trainable")
    instrumented.__qualname__ = getattr(trainable, "__qualname__", instrumented.__name__)
    instrumented.__doc__ = trainable.__doc__
    instrumented.__module__ = getattr(trainable, "__module__", __name__)
    instrumented._ikkuna_trainable = trainable  # type: ignore[attr-defined]
    # what Tune reads off a function trainable: the resources of tune.with_resources, and
    # the mixins (distributed setups) some integrations add
    for attribute in ("_resources", "__mixins__"):
        if hasattr(trainable, attribute):
            setattr(instrumented, attribute, getattr(trainable, attribute))
    return instrumented


def _takes_config(fn: Callable[..., Any]) -> bool | None:
    """Whether ``fn`` takes a positional argument (the config), whatever else it takes
    (``tune.with_parameters`` passes more by keyword); None where its signature cannot be read
    (a builtin, a C extension).

    Examples:
        >>> _takes_config(lambda config, scale: None), _takes_config(lambda: None)
        (True, False)
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind_partial({})
    except TypeError:
        return False
    return True


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    depth: int | None = None,
    module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
    log_dir: str | Path | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Exporter:
    """Create this trial's Exporter on ``model`` and bind the trial's subscribers to it.

    Restores frozen layers and subscriber state from the trial's checkpoint when Tune restores
    the trial (and applies freezes the scheduler ordered before the trial failed). Outside an
    instrumented trainable it starts a local session without subscribers. TensorBoard files go
    to the trial directory's folder ``ikkuna_tune`` (or ``log_dir``) and are copied to the
    trial's storage (from a ``log_dir`` that other trials write to as well, only the files this
    trial wrote); in that folder a restored trial marks the step it goes on from, so that
    TensorBoard drops the steps the failed attempt wrote after its checkpoint. Returns the
    Exporter.

    ``optimizer`` may be one optimizer or several; ``depth``, ``module_filter``, ``output_fn``
    (which tensor of a tuple or dict output is the model's output) and ``scaler`` (the
    ``GradScaler`` of mixed precision: a step it skips is known) are passed to
    :class:`~ikkuna_tune.Exporter`. ``model`` may be compiled (``torch.compile``).

    **Epochs are yours to end.** Call ``exporter.epoch_finished()`` on the returned Exporter at
    the end of every epoch: subscribers that run at the end of an epoch
    (``frequency='epoch'``, such as :class:`~ikkuna_tune.TestAccuracySubscriber` and
    :class:`~ikkuna_tune.SVCCASubscriber` by default) run only then. :func:`report` does not
    end epochs (a trial may report several times per epoch); see there for the warning.

    Raises:
        ValueError: (or the original error's type) with a message that starts
            ``ik.watch(model=..., ...)`` when the Exporter cannot be made from these arguments,
            when a subscriber cannot be attached (it is named), or when ikkuna_tune's state in
            the trial's checkpoint cannot be applied; the original error is the ``__cause__``.
        RuntimeError: when ``watch`` was already called in this trial, or, outside any
            trial, while the Exporter of an earlier ``watch`` in this thread is open.

    Examples:
        >>> def trainable(config):
        ...     exporter = watch(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
        ...     print(list(exporter.modules))
        >>> instrument(trainable)({})
        ['0', '2']
    """
    session = current_session()
    if session is not None and session.implicit and session.closed:
        session.close()  # the last watch() outside a trial in this thread was closed: a new one
        session = None
    if session is not None and session.implicit and session.worker is None:
        raise RuntimeError(
            "watch() already watches a model in this thread, outside any trial (an earlier "
            "ik.watch): close its Exporter first (exporter.close()) to watch another model"
        )
    created = session is None
    if session is None:
        session = _new_session()
        session.implicit = True
        session.activate()
    try:
        return session.watch(model, optimizer, depth, module_filter, log_dir, output_fn, scaler)
    except BaseException:
        if created:
            session.close()  # the session this call made leaves with it
        raise


def _new_session() -> TrialSession:
    """The session of a ``watch`` called outside an instrumented trainable: a worker of a Ray
    Train job started by an instrumented trial, or a local session without subscribers."""
    worker = train_worker()
    if worker is None:
        session = TrialSession([], {})
        if session.context is not None:  # a Tune trial whose trainable was not wrapped
            warnings.warn(
                "ik.watch in a Tune trial whose trainable is not wrapped by ik.instrument: "
                "running without subscribers, so the reports carry no subscriber output "
                "(test accuracy, self-similarity, ...) and SVCCAScheduler has nothing to "
                "decide on. Pass the wrapped trainable to Tune: "
                "`tune.run(ik.instrument(train, subscribers), ...)`.",
                UserWarning,
                stacklevel=3,
            )
        else:
            logger.info("watch() outside an instrumented trainable: running without subscribers")
        return session
    link = worker.link
    if link is None:
        warnings.warn(
            "ik.watch in a Ray Train worker whose train_loop_config does not come from an "
            "instrumented trial: running without subscribers, and the scheduler cannot reach "
            "this job. Pass the config your instrumented trainable received on as "
            "`TorchTrainer(..., train_loop_config=config)`.",
            UserWarning,
            stacklevel=3,
        )
        return TrialSession([], {}, worker)
    config = dict(worker.config or {})
    every = fresh_subscribers(link.subscribers, config)
    check_data_parallel(every, worker.world_size)  # on every rank alike: none waits for another
    subscribers = subscribers_for_rank(every, worker.rank)
    positions = [i for i, s in enumerate(every) if any(s is kept for kept in subscribers)]
    return TrialSession(subscribers, config, worker, positions)


def report(metrics: Mapping[str, Any], checkpoint: Any = None) -> dict[str, Any]:
    """Report ``metrics`` plus every subscriber output, in place of ``tune.report``.

    Takes the same arguments as ``tune.report``. Subscriber outputs are turned into numbers
    with one host synchronisation. ikkuna_tune's own state goes into ``checkpoint`` beside the
    user's files. Outside Tune the merged metrics are logged and kept (see
    :func:`local_results`). Returns the merged metrics.

    A report carries every output key; one not measured since the previous report is ``None``.
    ``report`` does not end the epoch: call ``exporter.epoch_finished()`` first (see
    :func:`watch`). If the first report that follows training steps finds that no epoch has
    ended while some subscriber runs only at the end of one, it warns once (``UserWarning``),
    naming those subscribers and their outputs, which are ``None`` until an epoch ends.

    A trial may report from a thread it started (its training loop in a thread of its own):
    the report goes to the trial's session when it is the only one running in the process, as
    in every Tune trial; with several trials in one process (threads of a local run) a thread
    that runs none of them cannot tell which, and gets a ``RuntimeError`` saying so.

    Examples:
        >>> def trainable(config):
        ...     watch(nn.Sequential(nn.Linear(2, 1)))
        ...     print(report({"loss": 0.5}))
        >>> instrument(trainable)({})  # doctest: +NORMALIZE_WHITESPACE
        {'loss': 0.5, 'frozen': {'0': 0}, 'trainable': {'0': 1}, 'frozen_fraction': 0.0,
         'train_steps': 0, 'freeze_reason': {'0': ''}, 'unfreeze_reason': {'0': ''},
         'lr_scale': nan, 'lr_base_scale': nan, 'step_seconds': nan,
         'step_seconds_unfrozen': nan}
        >>> report({"loss": 0.5})  # outside a watched trial
        Traceback (most recent call last):
        ...
        RuntimeError: report() was called before watch(model, ...): call watch first
    """
    session = reporting_session()
    if session is None and current_session() is None and active_sessions() > 1:
        raise RuntimeError(
            f"report() was called from a thread that runs no trial while {active_sessions()} "
            "trials run in this process: call it from the thread that runs the trial"
        )
    if session is None or session.exporter is None:
        raise RuntimeError("report() was called before watch(model, ...): call watch first")
    return session.report(metrics, checkpoint)


def local_results() -> list[dict[str, Any]]:
    """The reports of the latest trial run outside Tune (or of the running local session).

    Examples:
        >>> def trainable(config):
        ...     watch(nn.Sequential(nn.Linear(2, 1)))
        ...     for epoch in range(2):
        ...         report({"epoch": epoch})
        >>> instrument(trainable)({})
        >>> [result["epoch"] for result in local_results()]
        [0, 1]
    """
    session = current_session()
    if session is not None and not session.in_tune:
        return list(session.results)
    return list(_last_local[0])

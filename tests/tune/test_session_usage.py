"""How the trial session takes what users do besides the one documented loop: NumPy and tensor
metrics, an epoch ended twice, a generator trainable, watch() outside a trial, subscribers
reused from one trial in the next, an error while the trial's own error propagates. Local mode
(the instrumented trainable called directly), no Ray."""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.tune.session import current_session

X = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 2) -> None:
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()


def test_numpy_and_tensor_metrics_are_reported_as_python_numbers() -> None:
    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        _steps(model, opt)
        loss = F.cross_entropy(model(X), Y)
        ik.report({"loss": loss, "acc": np.float32(0.25), "n": {"seen": np.int64(32)}})

    ik.instrument(trainable)({})
    (report,) = ik.local_results()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _steps(model, opt)
    expected = float(F.cross_entropy(model(X), Y).detach())
    assert type(report["loss"]) is float and report["loss"] == pytest.approx(expected)
    assert type(report["acc"]) is float and report["acc"] == 0.25
    assert report["n"] == {"seen": 32} and type(report["n"]["seen"]) is int


def test_a_tensor_of_several_numbers_is_no_metric() -> None:
    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"losses": torch.ones(3)})

    with pytest.raises(ValueError, match="'losses' to be a number but got a Tensor of shape"):
        ik.instrument(trainable)({})


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({1: 2.0}, r"strings but got 1 \(int\)$"),
        ({"acc": {("top", 1): 0.9}}, r"strings but got \('top', 1\) \(tuple\) in 'acc'"),
    ],
)
def test_a_metric_name_that_is_no_string_is_refused_where_it_is_reported(
    metrics: dict, message: str
) -> None:
    """Tune's loggers on the driver fail on a name that is not a string, and end the whole
    experiment: refused at ``ik.report``, in the trial that reported it."""

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report(metrics)

    with pytest.raises(ValueError, match=message):
        ik.instrument(trainable)({})


def test_integer_tensors_are_exact_and_complex_ones_refused() -> None:
    """A count past 2**53 stays exact (through a float64 it changed); a complex tensor would
    lose its imaginary part, so it is refused."""

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"seen": torch.tensor(2**53 + 1), "flag": torch.tensor(True), **config})

    ik.instrument(trainable)({})
    (report,) = ik.local_results()
    assert report["seen"] == 2**53 + 1 and type(report["seen"]) is int
    assert report["flag"] is True
    with pytest.raises(ValueError, match="'z' to be a real number"):
        ik.instrument(trainable)({"z": torch.tensor(1 + 2j)})


def test_an_epoch_ended_twice_is_measured_once(caplog) -> None:
    probe = TensorDataset(X, Y)

    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        exporter = ik.watch(model, opt)
        for _ in range(2):
            _steps(model, opt)
            exporter.epoch_finished()
            exporter.epoch_finished()  # by mistake: no step in between
            ik.report({"epoch": exporter.epoch})

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        ik.instrument(trainable, [ik.SVCCASubscriber(probe, n=32, backend=None)])({})
    first, second = ik.local_results()
    assert (first["epoch"], second["epoch"]) == (1, 2)
    # measured against the first epoch's checkpoint, not against the same weights again
    assert all(v is not None and v < 1.0 for v in second["self_similarity"].values())
    assert all(v is None for v in first["self_similarity"].values())
    assert sum("called again with no training step" in r.getMessage() for r in caplog.records) == 1


def test_a_generator_trainable_is_refused_where_it_is_given() -> None:
    def trainable(config):  # type: ignore[no-untyped-def]
        yield {"loss": 1.0}

    with pytest.raises(ValueError, match="generator function"):
        ik.instrument(trainable)


def test_a_trainable_or_subscribers_function_without_a_config_is_refused_where_given() -> None:
    """Each failed only inside every trial, with Python's bare "takes 0 positional arguments";
    an instrumented trainable instrumented again failed at run time ("already running")."""

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())

    with pytest.raises(ValueError, match=r"`subscribers` .* whose signature \(\) takes no config"):
        ik.instrument(trainable, lambda: [])
    with pytest.raises(ValueError, match=r"trainable `f\(config\)` .* takes no config"):
        ik.instrument(lambda: None)
    with pytest.raises(ValueError, match=r"ik.instrument returned: instrument it once"):
        ik.instrument(ik.instrument(trainable))
    ik.instrument(trainable, lambda config, *rest: [])({})  # what takes a config runs


def test_watch_outside_a_trial_does_not_block_what_follows() -> None:
    exporter = ik.watch(_model())
    exporter.close()
    again = ik.watch(_model())  # a second model, after the first was closed
    assert not again.closed
    again.close()

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"ok": 1})

    ik.instrument(trainable)({})
    assert ik.local_results()[0]["ok"] == 1
    assert current_session() is None


def test_subscribers_returned_again_by_the_function_are_refused() -> None:
    shared = [ik.NormSubscriber("weights", backend=None)]

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({})

    wrapped = ik.instrument(trainable, lambda config: shared)
    wrapped({})
    with pytest.raises(ValueError, match="ran in an earlier trial"):
        wrapped({})
    assert current_session() is None


def test_the_trials_own_error_is_raised_when_closing_fails_too() -> None:
    class Failing(ik.Subscriber):
        def __init__(self) -> None:
            super().__init__([ik.Subscription(self, ["batch_finished"])])

        def compute(self, message):  # type: ignore[no-untyped-def]
            raise RuntimeError("subscriber fails")

    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        ik.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
        F.cross_entropy(model(X), Y).backward()  # a step left open: closing finishes it
        raise KeyError("the trial's error")

    with pytest.raises(KeyError, match="the trial's error"):
        ik.instrument(trainable, [Failing()])({})
    assert current_session() is None  # the next trial can run in this thread


def test_a_watch_retried_after_a_failure_measures_the_new_model() -> None:
    probe = TensorDataset(X, Y)

    def trainable(config):  # type: ignore[no-untyped-def]
        with pytest.raises(ValueError, match="cannot attach subscriber 2"):
            ik.watch(_model(), None)  # weight updates need an optimizer: the second fails
        torch.manual_seed(5)  # another model than the one of the failed call
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        exporter = ik.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
        exporter.epoch_finished()  # no training yet: each layer as at initialisation
        ik.report({})

    subscribers = [
        ik.SVCCASubscriber(probe, n=32, backend=None),
        ik.NormSubscriber("weight_updates", backend=None),
    ]
    ik.instrument(trainable, subscribers)({})
    (report,) = ik.local_results()
    assert report["init_similarity"] == pytest.approx({"0": 1.0, "2": 1.0})


@pytest.mark.parametrize("returned", [None, {"norm": 1}, "weights"])
def test_a_subscribers_function_that_returns_no_list_is_a_clear_error(returned) -> None:
    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())

    with pytest.raises(ValueError, match="to return a list of subscribers but got"):
        ik.instrument(trainable, lambda config: returned)({})
    assert current_session() is None


def test_a_watch_in_a_thread_that_ends_without_closing_leaves_no_active_session() -> None:
    """The process-wide registry of active sessions holds them weakly: a thread that watched
    a model and ended without closing takes its session with it (it kept the model alive and
    made a later report in another thread ambiguous)."""
    import gc
    import threading
    import weakref

    from ikkuna_tune.tune.session import active_sessions

    models = []

    def watch_and_end() -> None:
        model = _model()
        models.append(weakref.ref(model))
        ik.watch(model)

    for _ in range(3):
        thread = threading.Thread(target=watch_and_end)
        thread.start()
        thread.join()
    gc.collect()
    assert active_sessions() == 0
    assert all(ref() is None for ref in models)


def test_a_data_parallel_rank_watching_a_model_outside_ddp_is_warned(tmp_path) -> None:
    # each rank would train its own model, and the values averaged over the ranks would be
    # of none; the model inside DistributedDataParallel is watched without a warning
    import torch.distributed as dist

    from ikkuna_tune.tune.session import TrialSession
    from ikkuna_tune.tune.train_workers import TrainWorker

    def watch(model: nn.Module) -> list[str]:
        session = TrialSession([], {}, TrainWorker(rank=0, world_size=2, link=None))
        session._restore = lambda: None  # no Ray Train job here to restore from
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.watch(model)
        session.close()
        return [str(w.message) for w in caught if "DistributedDataParallel" in str(w.message)]

    (seen,) = watch(nn.Sequential(nn.Linear(2, 2)))
    assert "not wrapped in DistributedDataParallel in a job of 2 ranks" in seen
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(2, 2)))
        assert watch(wrapped) == []
        assert watch(torch.compile(wrapped)) == []
    finally:
        dist.destroy_process_group()


def test_a_subscriber_freezing_on_its_own_is_refused_in_a_data_parallel_job() -> None:
    # SVCCA runs on rank 0 only: its freeze_at would freeze that rank alone (DDP then fails)
    from ikkuna_tune.tune.train_workers import check_data_parallel

    probe = TensorDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
    svcca = ik.SVCCASubscriber(probe, n=8, freeze_at=0.99)
    check_data_parallel([svcca], world_size=1)
    check_data_parallel([ik.SVCCASubscriber(probe, n=8)], world_size=2)
    with pytest.raises(ValueError, match=r"subscriber 1 \(SVCCASubscriber\) has freeze_at=0.99"):
        check_data_parallel([svcca], world_size=2)


def test_a_refused_checkpoint_loses_no_measured_value() -> None:
    # the checkpoint is checked before the outputs are taken: the report made again without
    # it holds the weight norms of the steps before (they were taken, and read None)
    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        _steps(model, opt, 3)
        with pytest.raises(ValueError, match="Expected `checkpoint` to be a ray.tune.Checkpoint"):
            ik.report({}, checkpoint="/tmp/not_a_checkpoint")
        ik.report({})

    ik.instrument(trainable, [ik.NormSubscriber("weights", backend=None)])({})
    (report,) = ik.local_results()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _steps(model, opt, 2)  # the weights the third step started from
    expected = {"0": model[0].weight, "2": model[2].weight}
    for layer, weight in expected.items():
        norm = float(torch.linalg.vector_norm(weight.detach()))
        assert report["weights_norm2"][layer] == pytest.approx(norm)
    assert np.isfinite(report["step_seconds"])


def test_an_open_watch_outside_a_trial_is_named_when_watched_again_or_closed_by_a_trial() -> None:
    """A model watched outside any trial (a notebook's ``ik.watch``): a second ``ik.watch``
    names that one (not a trial, of which there is none); an instrumented trainable run in the
    thread closes it, and says so, rather than leave the user's next ``ik.report`` to fail as
    if ``watch`` was never called."""
    first = ik.watch(_model())
    with pytest.raises(RuntimeError, match=r"already watches a model in this thread, outside"):
        ik.watch(_model())
    assert not first.closed

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"ok": 1})

    with pytest.warns(UserWarning, match="no longer watched: its Exporter was closed"):
        ik.instrument(trainable)({})
    assert first.closed and current_session() is None
    assert ik.local_results()[0]["ok"] == 1


def test_a_failed_watch_outside_a_trial_leaves_no_session() -> None:
    from ikkuna_tune.tune.session import active_sessions

    before = active_sessions()
    with pytest.raises(ValueError, match="module_filter=Conv2d"):
        ik.watch(nn.Linear(2, 1), module_filter=nn.Conv2d)
    assert current_session() is None and active_sessions() == before


@pytest.mark.parametrize("value", [np.complex128(1 + 2j), 1 + 2j])
def test_a_complex_number_is_no_metric(value) -> None:
    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"z": value})

    with pytest.raises(ValueError, match="Expected metric 'z' to be a real number"):
        ik.instrument(trainable)({})


def test_a_metric_ray_cannot_pickle_is_named_where_it_is_reported() -> None:
    """A lock or a generator failed later inside Ray, naming neither the metric nor the call;
    a value Ray can pickle (a list, a set) goes on to Tune as it is."""
    import threading

    for value in (threading.Lock(), (i for i in range(2))):

        def trainable(config, value=value):  # type: ignore[no-untyped-def]
            ik.watch(_model())
            ik.report({"extra": {"nested": value}, "ok": 1.0})

        with pytest.raises(ValueError, match="metric 'extra/nested' .* cannot be pickled"):
            ik.instrument(trainable)({})
    from ikkuna_tune.tune.session import plain_metrics

    assert plain_metrics({"l": [1, 2], "s": {3}, "t": "x"}) == {"l": [1, 2], "s": {3}, "t": "x"}


def test_numbers_inside_lists_and_tuples_are_reported_as_python_numbers() -> None:
    """A tensor or NumPy scalar inside a list (per-class accuracies, a loss per head) became
    its ``str`` in ``result.json`` (Tune's encoder falls back to ``str``); it is a number like
    a top-level one, tuples stay tuples, and a tensor of several values inside a list is
    refused with its place named."""

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        per_class = [torch.tensor(0.25), np.float32(0.5), torch.tensor(3)]
        ik.report({"per_class": per_class, "heads": (torch.tensor(1.5), [torch.tensor(True)])})

    ik.instrument(trainable)({})
    (result,) = ik.local_results()
    assert result["per_class"] == [0.25, 0.5, 3]
    assert [type(v) for v in result["per_class"]] == [float, float, int]
    assert result["heads"] == (1.5, [True]) and type(result["heads"][1][0]) is bool
    json.dumps(result)  # plain JSON: no value left for a fallback encoder to turn into a str

    def several(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"per_class": [torch.tensor(0.5), torch.ones(2)]})

    with pytest.raises(ValueError, match=r"metric 'per_class\[1\]' to be a number .* \(2,\)"):
        ik.instrument(several)({})


class _Losses(NamedTuple):
    main: Any
    aux: Any


def test_numbers_inside_a_named_tuple_are_reported_as_python_numbers() -> None:
    """A named tuple of tensors (losses per head) went to Tune with its tensors, which
    ``result.json`` holds as their ``str``; its values are numbers and it stays a named tuple."""
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")

    def trainable(config):  # type: ignore[no-untyped-def]
        ik.watch(_model())
        ik.report({"losses": _Losses(torch.tensor(0.5), Pair(np.float32(0.25), torch.tensor(2)))})

    ik.instrument(trainable)({})
    losses = ik.local_results()[-1]["losses"]
    assert type(losses) is _Losses and type(losses.aux) is Pair
    assert losses == (0.5, (0.25, 2)) and type(losses.main) is float
    assert json.loads(json.dumps(losses)) == [0.5, [0.25, 2]]


def test_a_directive_for_a_closed_exporter_is_not_applied() -> None:
    """A scheduler's directive that arrives after the trial closed its Exporter (a last report
    after the training loop) is left: the trial goes on, nothing is frozen."""
    flags = []

    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _steps(model, opt)
        exporter.close()
        session = current_session()
        assert session is not None
        session.apply([{"freeze": ["0"], "reasons": {"0": "converged"}}])
        flags.extend(p.requires_grad for p in model.parameters())
        ik.report({"done": 1})

    ik.instrument(trainable)({})
    assert flags == [True] * 4
    assert ik.local_results()[-1]["done"] == 1


def test_frozen_fraction_follows_parameters_the_user_freezes_and_unfreezes_by_hand() -> None:
    """Gradual unfreezing: the share of the trainable parameters the frozen layers hold follows
    the parameters the user freezes or unfreezes between reports (it was counted once per set
    of frozen layers, so a report after the user's change kept the share from before it).
    Reference: the frozen layer's parameters over the trainable ones, counted by hand."""
    shares: list[float] = []
    expected: list[float] = []

    def trainable(config):  # type: ignore[no-untyped-def]
        model = _model()
        model[0].weight.requires_grad_(False)  # a backbone weight the user froze
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, optimizer=opt)
        for report in range(4):
            if report == 1:
                exporter.freeze("2")
            if report == 2:
                model[0].weight.requires_grad_(True)  # the user unfreezes it
            if report == 3:
                model[0].weight.requires_grad_(False)  # and freezes it again
            _steps(model, opt)
            held = sum(p.numel() for p in model[2].parameters()) if report else 0
            free = sum(p.numel() for p in model.parameters() if p.requires_grad)
            expected.append(held / (held + free))
            shares.append(ik.report({})["frozen_fraction"])

    ik.instrument(trainable)({})
    assert shares == pytest.approx(expected)
    assert expected[1] != expected[2] != expected[3]


def test_a_log_dir_that_is_no_path_is_refused_where_it_is_given() -> None:
    with pytest.raises(ValueError, match=r"`log_dir` to be a path .* but got int"):
        ik.watch(_model(), log_dir=5)  # type: ignore[arg-type]
    ik.watch(_model()).close()  # the failed call left nothing behind


def test_odd_tensors_and_numpy_scalars_are_numbers_or_refused_by_name() -> None:
    """A one-element sparse tensor is its value; a tensor on the meta device holds none and is
    refused naming the metric (both failed inside the transfer, naming nothing); a
    ``np.longdouble`` becomes a Python float, as other NumPy scalars do."""
    from ikkuna_tune.tune.session import plain_metrics

    metrics = {
        "sparse": torch.tensor([1.5]).to_sparse(),
        "long": np.longdouble(2.5),
        "array": np.array([np.longdouble(0.25)]),
    }
    plain = plain_metrics(metrics)
    assert plain == {"sparse": 1.5, "long": 2.5, "array": 0.25}
    assert [type(v) for v in plain.values()] == [float, float, float]
    with pytest.raises(ValueError, match=r"metric 'meta' to be a number .* meta device"):
        plain_metrics({"meta": torch.tensor(1.0, device="meta")})
    # a large sparse tensor is refused as it is (made dense, it asked for 8 TB)
    indices = torch.tensor([[0], [0]])
    huge = torch.sparse_coo_tensor(indices, torch.tensor([1.0]), (10**6, 10**6))
    with pytest.raises(ValueError, match=r"metric 'adjacency' to be a number .* \(1000000, "):
        plain_metrics({"adjacency": huge})


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_nested_tensor_metric_is_refused_by_name() -> None:
    """A nested tensor is no number, even of one element (reshaping one failed inside the
    transfer, naming nothing)."""
    from ikkuna_tune.tune.session import plain_metrics

    for layout in (torch.strided, torch.jagged):
        nested = torch.nested.nested_tensor([torch.ones(1)], layout=layout)
        with pytest.raises(ValueError, match=r"metric 'ragged/x' to be a number .* nested"):
            plain_metrics({"ragged": {"x": nested}})

"""What a report carries: every output key from the first report on, and only fresh values."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from tests.conftest import TinyNet
from tests.tune.trainables import WeightCosine, data, train_tiny


def _test_set() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(
        torch.randn(20, 1, 6, 6, generator=g), torch.randint(0, 5, (20,), generator=g)
    )


def _accuracy(model: torch.nn.Module, dataset: TensorDataset) -> float:
    with torch.no_grad():
        x, y = dataset.tensors
        return (model(x).argmax(1) == y).float().mean().item()


def _train_two_steps_per_report(config: dict[str, Any]) -> None:
    """Reports after every 2 steps; freezes conv after the 2nd report.

    Puts the references into the user's metrics: fc's gradient norm at the last step and the
    test accuracy after steps 3 and 6 (what a frequency-3 accuracy subscriber measures).
    """
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    x, y = data()
    step = 0
    for report in range(4):
        metrics: dict[str, Any] = {}
        for _ in range(2):
            step += 1
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if step % 3 == 0:
                metrics["ref_accuracy"] = _accuracy(model, config["test_set"])
        metrics["ref_fc_grad_norm"] = model.fc.weight.grad.norm().item()
        ik.report(metrics)
        if report == 1:
            exporter.freeze("conv")


def test_a_value_is_reported_once_and_a_frozen_layer_has_no_gradient_norm() -> None:
    test_set = _test_set()
    subscribers = [
        ik.NormSubscriber("weight_gradients", backend=None),
        ik.TestAccuracySubscriber(test_set, frequency=3, backend=None),
    ]
    ik.instrument(_train_two_steps_per_report, subscribers)({"test_set": test_set})
    results = ik.local_results()
    assert len(results) == 4
    # accuracy measured after steps 3 and 6: in reports 2 and 3 only (reports end at 2, 4, 6, 8)
    accuracy = [r["test_accuracy"] for r in results]
    assert accuracy[0] is None and accuracy[3] is None
    assert accuracy[1] == pytest.approx(results[1]["ref_accuracy"])
    assert accuracy[2] == pytest.approx(results[2]["ref_accuracy"])
    # the chance level (share of the most frequent label) is reported with each accuracy
    labels = test_set.tensors[1].tolist()
    share = max(labels.count(c) for c in set(labels)) / len(labels)
    chance = [r["test_accuracy_chance"] for r in results]
    assert chance[0] is None and chance[3] is None
    assert chance[1] == chance[2] == pytest.approx(share)
    for result in results:
        norms = result["weight_gradients_norm2"]
        assert norms["fc"] == pytest.approx(result["ref_fc_grad_norm"], rel=1e-5)
    # conv is frozen after report 2: no gradient, so no norm (not the last one, repeated)
    conv = [r["weight_gradients_norm2"]["conv"] for r in results]
    assert all(isinstance(v, float) for v in conv[:2]) and conv[2:] == [None, None]


def test_the_first_report_carries_every_key() -> None:
    # WeightCosine's self_similarity needs two epoch ends: it is first measured at report 2
    ik.instrument(train_tiny, [WeightCosine()])({"lr": 0.1, "iterations": 3})
    results = ik.local_results()
    assert results[0]["self_similarity"] == {"conv": None, "fc": None}
    assert set(results[0]) == set(results[1]) == set(results[2])
    assert all(isinstance(v, float) for v in results[1]["self_similarity"].values())


class _SharedTwice(torch.nn.Module):
    """inp -> shared -> shared (its second call: 'shared#2') -> out."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 8)
        self.shared = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shared(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.shared(h)))


def _train_shared_twice(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _SharedTwice()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.watch(model, opt)
    for _ in range(3):
        for _ in range(3):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        exporter.epoch_finished()
        ik.report({})


def test_the_first_report_carries_the_keys_of_a_layers_second_call() -> None:
    probe = TensorDataset(torch.randn(60, 6), torch.zeros(60, dtype=torch.long))
    subscriber = ik.SVCCASubscriber(probe, 60, backend=None)
    ik.instrument(_train_shared_twice, [subscriber])({})
    results = ik.local_results()
    layers = ["inp", "shared", "out", "shared#2"]
    # self-similarity needs two checkpoints: None at the first report, under every key
    assert results[0]["self_similarity"] == dict.fromkeys(layers)
    for report in results:
        assert set(report) == set(results[0])
        for kind in ("self_similarity", "init_similarity", "live_fraction"):
            assert sorted(report[kind]) == sorted(layers), kind
    assert isinstance(results[1]["self_similarity"]["shared#2"], float)


def test_numpy_bool_and_missing_values_keep_their_key_in_every_report(caplog) -> None:
    import logging

    import numpy as np

    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.tune.collector import MetricCollector

    bus = MessageBus()
    for kind in ("ratio", "flag", "hist"):  # a user subscriber's outputs
        bus.register_kind(kind, "META")
    collector = MetricCollector(["ratio", "flag", "hist"])
    collector.attach(bus)
    reports = []
    # one value per report; None is "not measured", a vector after numbers is no number
    published = [
        (np.float32(0.5), True, torch.ones(3)),
        (None, np.bool_(False), 0.25),
        (np.array([1.5]), None, torch.ones(2)),
        (np.int64(2), 1, None),
    ]
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        for step, values in enumerate(published):
            for kind, value in zip(["ratio", "flag", "hist"], values):
                bus.publish_network_message(kind, value, global_step=step, train_step=step, epoch=0)
            reports.append(collector.collect())
    assert reports == [
        {"ratio": 0.5, "flag": 1},  # hist published only a vector so far: not a metric
        {"ratio": None, "flag": 0, "hist": 0.25},
        {"ratio": 1.5, "flag": None, "hist": None},
        {"ratio": 2, "flag": 1, "hist": None},
    ]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("'hist' published a Tensor where it published numbers before")


class _Clock:
    """A clock that moves only when told: step times without wall-clock noise."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_seconds_leave_out_what_subscribers_do_at_a_steps_end(monkeypatch) -> None:
    import ikkuna_tune.tune.collector as collector

    clock = _Clock()
    monkeypatch.setattr(collector.time, "perf_counter", clock)

    def evaluate(message: Any) -> None:  # a test evaluation at every step's end: 1 s
        clock.now += 1.0

    def train(config: dict[str, Any]) -> None:
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        x, y = data()
        for _ in range(2):
            for _ in range(4):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)  # the step starts with the forward pass
                clock.now += 0.25  # the training step's work
                loss.backward()
                opt.step()
            ik.report({})

    evaluator = ik.CallbackSubscriber(["batch_finished"], evaluate)
    ik.instrument(train, [evaluator])({})
    results = ik.local_results()
    # the first step is warm-up, not counted
    assert [r["step_seconds"] for r in results] == [pytest.approx(0.25)] * 2


def test_a_freeze_within_an_iteration_counts_for_its_steps_after_it(monkeypatch) -> None:
    """conv (30 of TinyNet's 275 parameters) is frozen after 2 of the second iteration's 4
    steps: that iteration's frozen_fraction is half of conv's share, and the steps before any
    freeze (0.25 s each, against 0.1 s frozen) make step_seconds_unfrozen."""
    import ikkuna_tune.tune.collector as collector

    clock = _Clock()
    monkeypatch.setattr(collector.time, "perf_counter", clock)

    def train(config: dict[str, Any]) -> None:
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        x, y = data()
        for iteration in range(2):
            for step in range(4):
                if iteration == 1 and step == 2:
                    exporter.freeze("conv")
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                clock.now += 0.1 if exporter.frozen else 0.25
                loss.backward()
                opt.step()
            ik.report({})

    ik.instrument(train, [])({})
    first, second = ik.local_results()
    assert (first["frozen_fraction"], second["frozen_fraction"]) == (0.0, pytest.approx(15 / 275))
    assert first["frozen"] == {"conv": 0, "fc": 0} and second["frozen"] == {"conv": 1, "fc": 0}
    assert first["step_seconds"] == pytest.approx(0.25)  # the first step is warm-up
    assert second["step_seconds"] == pytest.approx((2 * 0.25 + 2 * 0.1) / 4)
    assert second["step_seconds_unfrozen"] == pytest.approx(0.25)


def test_parameters_unfrozen_by_hand_at_an_epochs_start_count_from_that_epoch() -> None:
    """Layers of 25, 30 and 18 parameters, one report every two epochs of 2 steps: the training
    code unfreezes the first by hand at the second epoch's start (gradual unfreezing), while
    the Exporter holds the second frozen. frozen_fraction is the mean of each step's share,
    30 / 48 in the first epoch and 30 / 73 in the second (a share counted once for the
    iteration read 30 / 48)."""

    def train(config: dict[str, Any]) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)
        )
        model[0].requires_grad_(False)  # a backbone the user unfreezes gradually
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        exporter.freeze("2")
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        for epoch in range(2):
            if epoch == 1:
                model[0].requires_grad_(True)
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            exporter.epoch_finished()
        ik.report({})

    ik.instrument(train, [])({})
    (result,) = ik.local_results()
    assert result["frozen_fraction"] == pytest.approx((2 * 30 / 48 + 2 * 30 / 73) / 4)


def test_a_subscriber_on_every_tag_reports_other_passes_beside_trainings() -> None:
    """``NormSubscriber("activations", tag=None)`` also gets a validation pass's activations
    (tag ``eval``) and the test-accuracy probe's (tag ``test``): the report's
    ``activations_norm2/<layer>`` was the last pass's, an evaluation under training's name.
    Training's value stays under its kind, the others go under ``<kind>_<tag>``; each equals
    the norm of that pass's output of the layer, from a forward hook of its own."""
    test_set = _test_set()
    outputs: dict[str, torch.Tensor] = {}

    def trainable(config: dict[str, Any]) -> None:
        torch.manual_seed(0)
        model = TinyNet()
        model.fc.register_forward_hook(
            lambda m, i, o: outputs.__setitem__("train" if m.training else "eval", o.detach())
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        x, y = data()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        trained = outputs["train"]
        model.eval()
        with torch.no_grad():
            model(x[:5])  # a validation pass
        validated = outputs["eval"]
        model.train()
        exporter.epoch_finished()  # the test-accuracy probe's pass, on the whole test set
        probed = outputs["eval"]
        norms = {"train": trained.norm(), "eval": validated.norm(), "test": probed.norm()}
        ik.report({name: norm.item() for name, norm in norms.items()})

    subscribers = [
        ik.NormSubscriber("activations", tag=None),
        ik.TestAccuracySubscriber(test_set, batch_size=20, frequency="epoch"),
    ]
    ik.instrument(trainable, subscribers=subscribers)({})
    (result,) = ik.local_results()
    assert result["activations_norm2"]["fc"] == pytest.approx(result["train"], rel=1e-6)
    assert result["activations_norm2_eval"]["fc"] == pytest.approx(result["eval"], rel=1e-6)
    assert result["activations_norm2_test"]["fc"] == pytest.approx(result["test"], rel=1e-6)
    assert result["eval"] != pytest.approx(result["train"])  # three different values
    assert result["test"] != pytest.approx(result["train"])


def test_a_user_metric_named_like_another_tags_output_is_refused_where_it_enters() -> None:
    """``activations_norm2_eval`` is the name of an output once an eval pass was measured. A
    user metric of that name reported from before is the user's, in every report (the output
    is not reported, with a warning; the trial is not stopped mid-training, and it survives a
    checkpoint); one first reported after the output was measured is refused at that report."""
    from ikkuna_tune.tune.session import TrialSession

    def trainable(config: dict[str, Any]) -> None:
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        x, _ = data()
        ik.report({"activations_norm2_eval": 123.0})  # nothing measured under it yet
        model.eval()
        with torch.no_grad():
            model(x)
        ik.report({"activations_norm2_eval": 124.0})
        with torch.no_grad():
            model(x)
        ik.report({"accuracy": 0.5})  # the name stays the user's in a report without it
        with torch.no_grad():
            model(x)
        ik.report({"activations_norm2_eval/fc": 125.0})

    with pytest.warns(UserWarning, match="'activations_norm2_eval' .* is not reported"):
        ik.instrument(trainable, subscribers=[ik.NormSubscriber("activations", tag=None)])({})
    results = ik.local_results()
    assert [r.get("activations_norm2_eval") for r in results] == [123.0, 124.0, None, None]
    assert results[3]["activations_norm2_eval/fc"] == 125.0
    assert "activations_norm2" in results[1]  # training's own output is reported as ever

    def late(config: dict[str, Any]) -> None:
        model = TinyNet()
        ik.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
        x, _ = data()
        ik.report({"accuracy": 0.5})
        model.eval()
        with torch.no_grad():
            model(x)
        ik.report({"activations_norm2_eval": 123.0})

    with pytest.raises(ValueError, match=r"\['activations_norm2_eval'\] collide"):
        ik.instrument(late, subscribers=[ik.NormSubscriber("activations", tag=None)])({})

    # a checkpoint carries the names: restored, the user's metric is still theirs, also in a
    # later report than the first after the restore
    def session_of(model: torch.nn.Module) -> Any:
        session = TrialSession([ik.NormSubscriber("activations", tag=None)], {})
        session.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
        return session

    def eval_pass(model: torch.nn.Module) -> None:
        model.eval()
        with torch.no_grad():
            model(data()[0])
        model.train()

    session = session_of(TinyNet())
    session.merge({"activations_norm2_eval": 1.0})
    saved = session.state_dict()
    restored_model = TinyNet()
    restored = session_of(restored_model)
    restored.load_state_dict(saved)
    restored.merge({"accuracy": 0.5})  # the first report after the restore has not the name
    eval_pass(restored_model)
    with pytest.warns(UserWarning, match="is not reported"):
        merged = restored.merge({"activations_norm2_eval": 2.0})
    assert merged["activations_norm2_eval"] == 2.0
    # in a data-parallel job, the name is the user's (rank 0's), not an output averaged over
    # the ranks
    assert "activations_norm2_eval" not in restored.averaged_outputs()
    assert "activations_norm2" in restored.averaged_outputs()

    # restored from a checkpoint that holds no names (no ikkuna_tune state, or one saved
    # before names were): an eval pass before the first report does not fail the trial there
    without = {k: v for k, v in saved.items() if k != "user_names"}
    restored_model = TinyNet()
    restored = session_of(restored_model)
    restored.load_state_dict(without)
    eval_pass(restored_model)
    with pytest.warns(UserWarning, match="is not reported"):
        merged = restored.merge({"activations_norm2_eval": 3.0})
    assert merged["activations_norm2_eval"] == 3.0


def test_a_data_parallel_job_averages_another_tags_outputs_as_trainings() -> None:
    """In a Ray Train job the outputs of the subscribers every rank runs are averaged over
    the ranks; the same outputs of an eval pass (``activations_norm2_eval``) were rank 0's
    alone, as no subscriber declares that name."""
    from ikkuna_tune.tune.session import TrialSession

    torch.manual_seed(0)
    model = TinyNet()
    session = TrialSession([ik.NormSubscriber("activations", tag=None)], {})
    session.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, _ = data()
    model(x)
    assert "activations_norm2_eval" not in session.averaged_outputs()
    model.eval()
    with torch.no_grad():
        model(x)
    session.merge({})
    assert {"activations_norm2", "activations_norm2_eval"} <= session.averaged_outputs()
    session.close()


def test_the_collector_gives_where_each_value_was_measured() -> None:
    """``positions`` holds, nested as the values, the epoch and step within it of the value
    each key reports: the last step measured (per layer, batches of layers and single
    messages alike), the epoch-end step for an epoch-end value, and nothing for a key not
    measured since the last collect."""
    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.tune.collector import MetricCollector

    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None, subsample=2)
    ik.TrainAccuracySubscriber(bus, backend=None)
    kinds = {"weight_gradients_norm2": "DATA", "train_accuracy": "META"}
    collector = MetricCollector(kinds, [name for name, _ in model.named_children()])
    collector.attach(bus)
    x, y = data()
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for epoch_steps in (4, 3):
            for _ in range(epoch_steps):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            exporter.epoch_finished()
            bus.flush()
            values = collector.collect()
            norms = values["weight_gradients_norm2"]
            layers = sorted(name for name, value in norms.items() if value is not None)
            assert layers == ["conv", "fc"]  # 'act' has no weights: no value, no position
            if epoch_steps == 4:  # steps 0-3 of epoch 0; gradient norms at steps 0 and 2
                assert collector.positions == {
                    "weight_gradients_norm2": dict.fromkeys(layers, (0, 2)),
                    "train_accuracy": (0, 3),
                }
            else:  # steps 0-2 of epoch 1 (global steps 4-6; norms at 4 and 6)
                assert collector.positions == {
                    "weight_gradients_norm2": dict.fromkeys(layers, (1, 2)),
                    "train_accuracy": (1, 2),
                }
        assert collector.collect()["train_accuracy"] is None and collector.positions == {}

"""Loss and accuracy subscribers against accuracy counted by hand."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.tune.collector import MetricCollector


def _by_hand(model, x, y) -> float:
    """Accuracy of ``model`` on (x, y), one sample at a time, in plain Python."""
    hits = 0
    for xi, yi in zip(x, y):
        row = model(xi[None])[0].tolist()
        hits += int(row.index(max(row)) == int(yi))
    return hits / len(y)


class DropNet(nn.Module):
    """TinyNet with dropout, so eval and train mode give different outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture
def test_set() -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    # 10 samples in batches of 4 (4, 4, 2): a mean of batch means would weigh them wrongly
    return TensorDataset(
        torch.randn(10, 1, 6, 6, generator=g), torch.randint(0, 5, (10,), generator=g)
    )


def test_train_accuracy_and_loss_match_the_batch(tmp_path, tiny, batch) -> None:
    bus = MessageBus(log_dir=tmp_path)
    train_acc = ik.TrainAccuracySubscriber(bus)
    ik.LossSubscriber(bus)
    assert train_acc.publications == {"train_accuracy": "META"}
    assert "train_accuracy" in bus.meta_kinds
    got = []
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: got.append((m.key, m.global_step, m.data)), bus
    )
    x, y = batch
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    expected_acc, expected_loss = [], []
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(3):
            opt.zero_grad()
            out = tiny(x)
            rows = out.detach().tolist()
            expected_acc.append(
                sum(r.index(max(r)) == t for r, t in zip(rows, y.tolist())) / len(y)
            )
            loss = loss_fn(out, y)
            expected_loss.append(loss.item())
            loss /= 4  # changed in place after it was published: TensorBoard keeps the value
            loss.backward()
            opt.step()
        exporter.epoch_finished()
    bus.close()
    assert [(k, s) for k, s, _ in got] == [(None, 0), (None, 1), (None, 2)]
    assert all(d.dim() == 0 for *_, d in got)
    assert [d.item() for *_, d in got] == pytest.approx(expected_acc)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train_accuracy", "loss"}
    assert [e.value for e in events.Scalars("train_accuracy")] == pytest.approx(expected_acc)
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(expected_loss, rel=1e-6)
    assert [e.step for e in events.Scalars("loss")] == [0, 1, 2]


def test_train_accuracy_of_a_step_with_gradient_accumulation_counts_every_pass(tiny, batch) -> None:
    """Three forward passes (one micro-batch each) before one optimizer step: the step's
    accuracy is over all of its samples, not that of its last micro-batch."""
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    collector = MetricCollector(["train_accuracy"])
    collector.attach(bus)
    x, y = batch
    y = y.clone()
    y[1] = -100  # padding: not counted
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    parts = [slice(0, 3), slice(3, 5), slice(5, len(y))]
    reported = []
    expected = []
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(2):
            opt.zero_grad()
            hits = counted = 0
            for part in parts:
                out = tiny(x[part])
                for row, label in zip(out.detach().tolist(), y[part].tolist()):
                    if label >= 0:
                        counted += 1
                        hits += int(row.index(max(row)) == label)
                (loss_fn(out, y[part]) / len(parts)).backward()
            opt.step()
            expected.append(hits / counted)
            reported.append(collector.collect()["train_accuracy"])
    assert reported == pytest.approx(expected)


def test_subsampled_train_accuracy_with_gradient_accumulation_takes_whole_steps(
    tiny, batch
) -> None:
    """``subsample=2`` with two forward passes per optimizer step: every second *step* is
    published, with the accuracy over both of its passes (not every second pass)."""
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None, subsample=2)
    got: dict[int, float] = {}
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: got.__setitem__(m.global_step, float(m.data)), bus
    )
    x, y = batch
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    half = len(y) // 2
    expected = {}
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for step in range(6):
            opt.zero_grad()
            hits = 0
            for part in (slice(0, half), slice(half, len(y))):
                shift = torch.roll(x, step, 0)[part]  # other samples at every step
                labels = torch.roll(y, step, 0)[part]
                out = tiny(shift)
                hits += int((out.argmax(1) == labels).sum())
                loss_fn(out, labels).backward()
            opt.step()
            expected[step] = hits / len(y)
    assert sorted(got) == [0, 2, 4]
    assert got == pytest.approx({s: expected[s] for s in (0, 2, 4)})


@pytest.mark.parametrize(
    "labels", ["none", "validation_only", "wrapped", "after_step", "restored", "eval_mode"]
)
def test_train_accuracy_without_labels_says_so_once(tiny, batch, caplog, labels) -> None:
    """A loop that never gives the training steps' labels (a plain loss, no wrap_loss; or a
    wrapped loss in validation passes only) gets one warning naming the fix; labels given by
    the wrapped loss (also after a restore, and when training in eval mode), or after the
    optimizer's step, none."""
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None, tag=None if labels == "eval_mode" else "default")
    got = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: got.append(m.global_step), bus, tag=None)
    x, y = batch
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    with caplog.at_level("WARNING"), ik.Exporter(tiny, opt, bus) as exporter:
        if labels == "restored":
            exporter.load_state_dict({**exporter.state_dict(), "steps_started": 3})
        if labels == "eval_mode":
            tiny.eval()
        wrapped = exporter.wrap_loss(F.cross_entropy)
        plain = labels in ("none", "after_step", "validation_only")
        loss_fn = F.cross_entropy if plain else wrapped
        for _ in range(3):
            opt.zero_grad()
            loss_fn(tiny(x), y).backward()
            opt.step()
            if labels == "after_step":
                exporter.publish_labels(y)
            if labels == "validation_only":
                with torch.no_grad():
                    wrapped(tiny(x), y)
    warned = [r for r in caplog.records if "without labels" in r.getMessage()]
    if labels in ("none", "validation_only"):
        assert len(warned) == 1
        assert "wrap_loss" in warned[0].getMessage()
        assert "TrainAccuracySubscriber" in warned[0].getMessage()
    else:
        assert len(got) == 3 and warned == []


@pytest.mark.parametrize("as_loader", [False, True])
def test_test_accuracy_every_k_batches_through_the_probe(test_set, batch, as_loader) -> None:
    torch.manual_seed(0)
    model = DropNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    updates, probe_outputs = [], []
    ik.CallbackSubscriber(["weight_updates"], lambda m: updates.append(m.data.abs().sum()), bus)
    ik.CallbackSubscriber(["network_output"], probe_outputs.append, bus, tag="test")
    got, expected, modes = [], [], []
    x, y = batch
    exporter = ik.Exporter(model, opt, bus)
    data = DataLoader(test_set, batch_size=4) if as_loader else test_set
    sub = ik.TestAccuracySubscriber(data, batch_size=None if as_loader else 4, message_bus=bus,
                                    frequency=2, backend=None)  # fmt: skip
    ik.CallbackSubscriber(["test_accuracy"], lambda m: got.append((m.global_step, m.data)), bus)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    for step in range(5):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        modes.append(model.training and model.drop.training)
        if step % 2 == 1:
            model.eval()
            with torch.no_grad():
                expected.append(_by_hand(model, *test_set.tensors))
            model.train()
    exporter.close()
    assert [s for s, _ in got] == [1, 3]  # after the 2nd and 4th batch, at their steps
    assert all(d.dim() == 0 for _, d in got)
    assert [d.item() for _, d in got] == pytest.approx(expected)
    assert all(modes)  # the model is back in training mode after each evaluation
    assert exporter.global_step == 4 and exporter.train_step == 4
    assert all(u.item() > 0 for u in updates)  # evaluation never zeroes the next update
    # 2 evaluations of 3 batches; the check of the first batch when attached publishes nothing
    assert len(probe_outputs) == 2 * 3 and {m.tag for m in probe_outputs} == {"test"}
    assert {m.global_step for m in probe_outputs} == {1, 3}
    assert sub.evaluate().item() == pytest.approx(_by_hand(model.eval(), *test_set.tensors))


def test_test_accuracy_weights_samples_not_batches(test_set) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    sub = ik.TestAccuracySubscriber(test_set, model, batch_size=4, backend=None)
    x, y = test_set.tensors
    with torch.no_grad():
        batch_means = [
            (model(x[i : i + 4]).argmax(1) == y[i : i + 4]).float().mean().item()
            for i in range(0, 10, 4)
        ]
        exact = _by_hand(model, x, y)
    assert sub.evaluate().item() == pytest.approx(exact)
    assert exact != pytest.approx(sum(batch_means) / len(batch_means))  # the test can tell


def test_chance_is_the_share_of_the_most_frequent_class_and_is_published(tiny, batch) -> None:
    """``test_accuracy_chance`` is the accuracy of always answering the test set's most frequent
    class (counted here in Python), published beside every ``test_accuracy``; batches that miss
    some classes (sizes 4, 4, 3) are summed right."""
    from collections import Counter

    labels = torch.tensor([3, 3, 1, 3, 0, 1, 3, 4, 1, 3, 0])
    data = TensorDataset(
        torch.randn(11, 1, 6, 6, generator=torch.Generator().manual_seed(2)), labels
    )
    expected = max(Counter(labels.tolist()).values()) / len(labels)  # 5 threes of 11
    bus = MessageBus()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    got: dict[str, list[float]] = {"test_accuracy": [], "test_accuracy_chance": []}
    with ik.Exporter(tiny, opt, bus) as exporter:
        sub = ik.TestAccuracySubscriber(
            data, message_bus=bus, frequency="epoch", batch_size=4, backend=None
        )
        assert sub.chance is None  # nothing counted before the first evaluation
        ik.CallbackSubscriber(list(got), lambda m: got[m.kind].append(float(m.data)), bus)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(2):
            opt.zero_grad()
            loss_fn(tiny(batch[0]), batch[1]).backward()
            opt.step()
            exporter.epoch_finished()
    assert got["test_accuracy_chance"] == [pytest.approx(expected)] * 2
    assert len(got["test_accuracy"]) == 2
    assert float(sub.chance) == pytest.approx(5 / 11)


def test_test_accuracy_per_epoch(tiny, batch, test_set) -> None:
    bus = MessageBus()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    got = []
    with ik.Exporter(tiny, opt, bus) as exporter:
        ik.TestAccuracySubscriber(test_set, message_bus=bus, frequency="epoch", backend=None)
        ik.CallbackSubscriber(
            ["test_accuracy"], lambda m: got.append((m.epoch, m.global_step)), bus
        )
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(2):
            for _ in range(3):
                opt.zero_grad()
                loss_fn(tiny(batch[0]), batch[1]).backward()
                opt.step()
            exporter.epoch_finished()
    assert got == [(0, 2), (1, 5)]


def test_test_accuracy_of_integer_one_hot_labels(test_set) -> None:
    # torch's one_hot makes int64 labels: the same accuracy and chance level as their classes
    torch.manual_seed(0)
    model = DropNet().eval()
    inputs, labels = test_set.tensors
    one_hot = TensorDataset(inputs, F.one_hot(labels, 5))
    sub = ik.TestAccuracySubscriber(one_hot, model.forward, batch_size=4, backend=None)
    sub.attach(MessageBus())
    assert sub.evaluate().item() == pytest.approx(_by_hand(model, inputs, labels))
    assert sub.chance is not None
    assert sub.chance.item() == pytest.approx(torch.bincount(labels).max().item() / 10)


@pytest.mark.parametrize("ignored", [0, 1])
def test_an_ignore_index_leaves_integer_one_hot_labels_alone(test_set, ignored) -> None:
    # torch applies an ignore_index to class indices only; mapped onto the 0/1 entries of
    # one-hot labels it moved their arg-max (ignore_index=1: accuracy 0.2 where it is 0.3)
    torch.manual_seed(0)
    model = DropNet().eval()
    inputs, labels = test_set.tensors
    one_hot = TensorDataset(inputs, F.one_hot(labels, 5))
    sub = ik.TestAccuracySubscriber(
        one_hot, model.forward, batch_size=4, ignore_index=ignored, backend=None
    )
    sub.attach(MessageBus())
    assert sub.evaluate().item() == pytest.approx(_by_hand(model, inputs, labels))


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_an_ignore_index_leaves_out_class_indices_given_as_integers_or_whole_floats(
    dtype,
) -> None:
    # float labels that are whole numbers are class indices (check_targets): the ignored class
    # is left out of the accuracy and its chance level for them too (it counted as a class)
    torch.manual_seed(0)
    inputs, labels = torch.randn(50, 5), torch.randint(0, 4, (50,))
    model = nn.Linear(5, 4)
    sub = ik.TestAccuracySubscriber(
        TensorDataset(inputs, labels.to(dtype)), model.forward, ignore_index=0, backend=None
    )
    sub.attach(MessageBus())
    kept = labels != 0
    with torch.no_grad():
        expected = (model(inputs).argmax(1)[kept] == labels[kept]).double().mean().item()
    assert sub.evaluate().item() == pytest.approx(expected)
    assert sub.chance is not None
    chance = torch.bincount(labels[kept]).max().item() / kept.sum().item()
    assert sub.chance.item() == pytest.approx(chance)


def test_forward_fn_without_exporter_restores_modes(test_set) -> None:
    torch.manual_seed(0)
    model = DropNet()
    model.train()
    sub = ik.TestAccuracySubscriber(test_set, model.forward, backend=None)
    sub.attach(MessageBus())  # no Exporter needed with a forward_fn
    value = sub.evaluate()
    assert model.training and model.drop.training
    assert value.item() == pytest.approx(_by_hand(model.eval(), *test_set.tensors))


def test_test_accuracy_needs_a_model_at_attach(test_set) -> None:
    sub = ik.TestAccuracySubscriber(test_set, backend=None)
    with pytest.raises(ValueError, match="no model to evaluate: pass `forward_fn`, or attach"):
        sub.attach(MessageBus())
    with pytest.raises(ValueError, match="no model to evaluate"):
        ik.TestAccuracySubscriber(test_set, message_bus=MessageBus())
    assert sub.message_bus is None
    with pytest.raises(RuntimeError, match="no model to evaluate"):
        sub.evaluate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frequency": 0}, "`frequency` to be an integer >= 1 or 'epoch' but got 0"),
        ({"frequency": "weekly"}, "`frequency` to be an integer >= 1 or 'epoch' but got 'weekly'"),
        ({"frequency": 2.5}, "`frequency` to be an integer >= 1"),
        ({"batch_size": 0}, "`batch_size` to be an integer >= 1 but got 0"),
        ({"forward_fn": 3}, "`forward_fn` to be callable or None"),
        ({"probe_tag": "default"}, "`probe_tag` to be a tag other than 'default'"),
        ({"ylims": (0, 0)}, "`ylims` to be None or a pair"),
        ({"subsample": -1}, "`subsample` to be an integer >= 1"),
        ({"ignore_index": -100}, "`ignore_index` to be an integer >= 0 but got -100"),
        ({"ignore_index": 0.5}, "`ignore_index` to be an integer >= 0"),
    ],
)
def test_test_accuracy_validation(test_set, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ik.TestAccuracySubscriber(test_set, **kwargs)


def test_test_accuracy_data_arguments(test_set) -> None:
    with pytest.raises(
        ValueError, match="`dataset` to be a torch Dataset or DataLoader but got list"
    ):
        ik.TestAccuracySubscriber([1, 2, 3])
    with pytest.raises(ValueError, match="`batch_size` to be None with a DataLoader"):
        ik.TestAccuracySubscriber(DataLoader(test_set), batch_size=4)
    with pytest.raises(ValueError, match="`subsample` to be an integer >= 1"):
        ik.TrainAccuracySubscriber(subsample=0)
    with pytest.raises(ValueError, match="`ylims`"):
        ik.LossSubscriber(ylims=[1])


def test_accuracy_subscribers_deepcopy_while_detached(tiny, batch, test_set) -> None:
    templates = [
        ik.LossSubscriber(),
        ik.TrainAccuracySubscriber(),
        ik.TestAccuracySubscriber(test_set, frequency=1),
    ]
    from_loader = ik.TestAccuracySubscriber(DataLoader(test_set, batch_size=3), frequency="epoch")
    copies = [copy.deepcopy(t) for t in templates]
    bus = MessageBus()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    got = []
    with ik.Exporter(tiny, opt, bus) as exporter:
        for c in copies:
            c.backend_name = None
            c.attach(bus)
        ik.CallbackSubscriber(["test_accuracy"], lambda m: got.append(m.data), bus)
        opt.zero_grad()
        exporter.wrap_loss(F.cross_entropy)(tiny(batch[0]), batch[1]).backward()
        opt.step()
    assert len(got) == 1 and all(t.message_bus is None for t in templates)
    loader_copy = copy.deepcopy(from_loader)
    loader_copy.forward_fn = tiny
    assert loader_copy.evaluate().item() == pytest.approx(got[0].item())


def _missing_devices() -> list[str]:
    """Device strings this machine does not have (at least 'cuda:<count>')."""
    missing = [f"cuda:{torch.cuda.device_count()}"]
    if not torch.cuda.is_available():
        missing.append("cuda")
    if not torch.backends.mps.is_available():
        missing.append("mps")
    return missing


@pytest.mark.parametrize("device", _missing_devices())
def test_test_accuracy_rejects_a_device_this_machine_lacks_at_construction(
    test_set, device
) -> None:
    with pytest.raises(
        ValueError, match=f"`device` to be a device this machine has but got '{device}'"
    ):
        ik.TestAccuracySubscriber(test_set, batch_size=4, device=device)
    with pytest.raises(ValueError, match=f"but got device\\(type='{device.split(':')[0]}"):
        ik.TestAccuracySubscriber(test_set, batch_size=4, device=torch.device(device))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", True, 1.5])
def test_test_accuracy_rejects_what_is_not_a_device(test_set, device) -> None:
    with pytest.raises(
        ValueError, match=r"`device` to be a torch.device, a device string .* but got"
    ):
        ik.TestAccuracySubscriber(test_set, batch_size=4, device=device)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_test_accuracy_on_an_explicit_cpu_device(tiny, test_set, device) -> None:
    sub = ik.TestAccuracySubscriber(test_set, batch_size=4, forward_fn=tiny, device=device)
    assert sub.device == torch.device("cpu")
    x, y = test_set.tensors
    with torch.no_grad():
        expected = _by_hand(tiny, x, y)
    assert sub.evaluate().item() == pytest.approx(expected)


class _TupleOut(nn.Module):
    """TinyNet's scores, returned as ``(scores, features)`` or ``{"aux": ..., "logits": ...}``."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(48, 5)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        features = torch.relu(self.conv(x)).flatten(1)
        scores = self.fc(features)
        return {"aux": features, "logits": scores} if self.as_dict else (scores, features)


@pytest.mark.parametrize("as_dict", [False, True])
def test_test_accuracy_of_a_model_returning_a_tuple_or_dict(test_set, as_dict) -> None:
    model = _TupleOut(as_dict)
    bus = MessageBus()
    with ik.Exporter(model, None, bus):
        sub = ik.TestAccuracySubscriber(test_set, message_bus=bus, frequency=1, backend=None)
        x, y = test_set.tensors
        with torch.no_grad():
            out = model(x)
            scores = out["logits"] if as_dict else out[0]
            expected = (scores.argmax(1) == y).float().mean().item()
        assert sub.evaluate().item() == pytest.approx(expected)


class _Pairs(torch.utils.data.Dataset):
    """A map-style data set that is no TensorDataset (its batches go through a DataLoader)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


@pytest.mark.parametrize("form", ["dataset", "shuffled loader"])
def test_evaluating_leaves_the_global_random_state_alone(test_set, form) -> None:
    """A DataLoader draws its seed (and a shuffling sampler its order) from torch's global
    random state; evaluating must not move it, or watching would change the training run
    (its dropout masks, its shuffling)."""
    data = _Pairs(test_set)
    source = data if form == "dataset" else DataLoader(data, batch_size=4, shuffle=True)
    model = DropNet()
    sub = ik.TestAccuracySubscriber(
        source, forward_fn=model, batch_size=4 if form == "dataset" else None, backend=None
    )
    torch.manual_seed(3)
    state = torch.get_rng_state()
    accuracy = float(sub.evaluate())
    assert torch.equal(torch.get_rng_state(), state)
    model.eval()
    assert accuracy == pytest.approx(_by_hand(model, *test_set.tensors))


def test_a_function_around_the_model_is_evaluated_in_eval_mode_without_an_exporter(test_set):
    """``forward_fn=lambda x: model(x)`` with no Exporter: the model it names is put in eval
    mode (dropout off, batch-norm statistics untouched) and back, as ``forward_fn=model``."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 5)
    )
    model.train()
    statistics = model[2].running_mean.clone()
    sub = ik.TestAccuracySubscriber(test_set, forward_fn=lambda x: model(x), backend=None)
    accuracies = [float(sub.evaluate()) for _ in range(3)]
    assert torch.equal(model[2].running_mean, statistics) and model.training and model[3].training
    model.eval()
    assert accuracies == pytest.approx([_by_hand(model, *test_set.tensors)] * 3)


def test_a_forward_fn_that_returns_the_scores_is_not_passed_to_output_fn(test_set) -> None:
    """The Exporter's ``output_fn`` picks the scores out of the model's own output; a
    ``forward_fn`` that already returns them is taken as it is (``output_fn`` took row 0)."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(36, 5)

        def forward(self, x):
            logits = self.fc(x.flatten(1))
            return logits, logits.detach() * 0

    torch.manual_seed(0)
    model = Pair()
    bus = MessageBus()
    sub = ik.TestAccuracySubscriber(
        test_set, forward_fn=lambda x: model(x)[0], batch_size=4, message_bus=bus, backend=None
    )
    with ik.Exporter(model, message_bus=bus, output_fn=lambda out: out[0]):
        accuracy = float(sub.evaluate())
    expected = _by_hand(lambda x: model(x)[0], *test_set.tensors)
    assert accuracy == pytest.approx(expected)


def test_a_loss_and_labels_published_as_python_numbers_are_taken_as_tensors(tiny, batch) -> None:
    """``publish_loss(loss.item())`` and ``publish_labels(y.tolist())``: the same values as
    tensors would give (they crashed deep in a subscriber); something that is no number is a
    clear error."""
    bus = MessageBus()
    ik.LossSubscriber(bus, backend=None)
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.VarianceSubscriber("weights", bus, backend=None)
    got = []
    ik.CallbackSubscriber(["loss", "train_accuracy"], lambda m: got.append(float(m.data)), bus)
    x, y = batch
    with ik.Exporter(tiny, message_bus=bus) as exporter:
        out = tiny(x)
        loss = F.cross_entropy(out, y)
        exporter.publish_labels(y.tolist())
        exporter.publish_loss(loss.item())
        with pytest.raises(ValueError, match="Expected `loss` to be a tensor .* but got object"):
            exporter.publish_loss(object())
    hits = sum(r.index(max(r)) == t for r, t in zip(out.tolist(), y.tolist()))
    assert got == pytest.approx([hits / len(y), loss.item()])


def test_test_data_the_model_cannot_take_is_refused_when_attached(test_set) -> None:
    """Inputs of the wrong width fail in the model's first layer: refused when the subscriber
    is attached, naming it, not at the first evaluation after training."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 5))  # the test set has 36 features
    exporter = ik.Exporter(model)
    with pytest.raises(ValueError, match="TestAccuracySubscriber cannot evaluate the model"):
        ik.TestAccuracySubscriber(test_set, batch_size=4, message_bus=exporter.message_bus)
    exporter.close()


def test_the_check_when_attached_changes_nothing(test_set) -> None:
    """Attaching evaluates the first batch in eval mode under the random state's fork: the
    model's modes, the random state, the step counters and the first evaluation's label
    checks are as before."""
    torch.manual_seed(0)
    model = DropNet()
    exporter = ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    state = torch.get_rng_state()
    sub = ik.TestAccuracySubscriber(test_set, batch_size=4, message_bus=exporter.message_bus)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and model.drop.training
    assert exporter.global_step == 0 and exporter.steps_started == 0
    assert sub.chance is None and not sub._labels_checked
    exporter.close()


class NanWhereFirstPixelIsPositive(nn.Module):
    """A classifier whose scores are NaN for the inputs whose first pixel is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.fc(x.flatten(1))
        return torch.where(x.flatten(1)[:, :1] > 0, torch.nan, scores)


def test_test_accuracy_counts_nan_scores_as_wrong_and_all_nan_as_no_accuracy(test_set) -> None:
    torch.manual_seed(0)
    model = NanWhereFirstPixelIsPositive()
    x, y = test_set.tensors
    with torch.no_grad():
        rows = model(x).tolist()
    nan_rows = [i for i, row in enumerate(rows) if any(v != v for v in row)]
    assert 0 < len(nan_rows) < len(rows)  # the test can tell
    hits = sum(
        int(row.index(max(row)) == t)
        for i, (row, t) in enumerate(zip(rows, y.tolist()))
        if i not in nan_rows
    )
    with ik.Exporter(model) as exporter:
        sub = ik.TestAccuracySubscriber(
            test_set, batch_size=4, message_bus=exporter.message_bus, backend=None
        )
        assert sub.evaluate().item() == pytest.approx(hits / len(rows))
        with torch.no_grad():
            model.fc.weight.fill_(torch.nan)  # diverged: every score NaN
        assert torch.isnan(sub.evaluate())


def test_train_accuracy_of_a_step_of_nan_scores_is_nan(tiny, batch) -> None:
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    collector = MetricCollector(["train_accuracy"])
    collector.attach(bus)
    x, y = batch
    with ik.Exporter(tiny, message_bus=bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        with torch.no_grad():
            for p in tiny.parameters():
                p.fill_(torch.nan)
        loss_fn(tiny(x), y).backward()
        value = collector.collect()["train_accuracy"]
    assert value != value  # NaN


# ------------------------------------------------- which output, and which threshold
def _binary_data(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(48, generator=g) > 0).float()  # mostly learnable
    return x, y


def _sigmoid_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid(), nn.Flatten(0))


@pytest.mark.parametrize("loss", [nn.BCELoss(), F.binary_cross_entropy])
def test_a_sigmoid_model_trained_with_bce_is_counted_at_one_half(loss, caplog) -> None:
    """nn.Sigmoid + nn.BCELoss (as in PyTorch's DCGAN tutorial): the outputs are probabilities,
    class 1 above 0.5; read as logits (above 0), every sample was class 1 and the accuracy
    was the share of positive labels."""
    x, y = _binary_data()
    model = _sigmoid_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    test = ik.TestAccuracySubscriber(TensorDataset(x, y), message_bus=bus, backend=None)
    published: list[float] = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: published.append(float(m.data)), bus)
    loss_fn = exporter.wrap_loss(loss)
    expected = []
    for i in range(0, 48, 16):
        with torch.no_grad():
            hits = (model(x[i : i + 16]) > 0.5).float() == y[i : i + 16]
            expected.append(float(hits.float().mean()))
        opt.zero_grad()
        loss_fn(model(x[i : i + 16]), y[i : i + 16]).backward()
        opt.step()
    with torch.no_grad():
        by_hand = float(((model(x) > 0.5).float() == y).float().mean())
    assert float(test.evaluate()) == pytest.approx(by_hand)
    exporter.close()
    assert published == pytest.approx(expected)
    assert max(expected) > float(y.float().mean()) + 0.1  # not the share of positive labels
    assert "all in [0, 1]" not in caplog.text


def test_one_output_in_zero_one_read_as_logits_is_warned_and_a_threshold_is_taken(caplog) -> None:
    x, y = _binary_data()
    model = _sigmoid_model()
    exporter = ik.Exporter(model, None, MessageBus())
    assumed = ik.TrainAccuracySubscriber(exporter.message_bus, backend=None)
    given_bus = MessageBus()
    given = ik.TrainAccuracySubscriber(given_bus, backend=None, threshold=0.5)
    ik.CallbackSubscriber(["input_labels"], given_bus.publish, exporter.message_bus)
    ik.CallbackSubscriber(["network_output"], given_bus.publish, exporter.message_bus)
    loss_fn = exporter.wrap_loss(lambda p, t: ((p - t) ** 2).mean())  # scores not known
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        loss_fn(model(x), y)
    exporter.close()
    with torch.no_grad():
        p = model(x)
    # (the counts of the step: its loss is of unknown kind)
    assert float(assumed._step["default"][2].correct) == float(((p > 0).float() == y).sum())
    assert float(given._step["default"][2].correct) == float(((p > 0.5).float() == y).sum())
    told = [r.getMessage() for r in caplog.records if "all in [0, 1]" in r.getMessage()]
    assert len(told) == 1 and "threshold=0.5" in told[0]  # the assumed one; the given, not
    with pytest.raises(ValueError, match="`threshold` to be a finite number"):
        ik.TrainAccuracySubscriber(threshold=float("nan"))
    with pytest.raises(ValueError, match="`threshold` to be a number or None"):
        ik.TestAccuracySubscriber(TensorDataset(x, y), threshold="0.5")


def test_train_accuracy_counts_the_output_the_loss_scored() -> None:
    """A batch run in two chunks and concatenated for one loss (it raised inside the loss
    call), a second pass run before the first pass's loss (FixMatch: the unlabelled pass's
    output was counted against the labelled batch's labels), and every pass of a step before
    every loss (the second loss's labels were dropped)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    published: list[float] = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: published.append(float(m.data)), bus)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    u = torch.randn(32, 6, generator=g)

    def hand(out: torch.Tensor, labels: torch.Tensor) -> float:
        return float((out.argmax(1) == labels).float().mean())

    opt.zero_grad()
    out = torch.cat([model(c) for c in x.chunk(2)])
    loss_fn(out, y).backward()
    expected = [hand(out.detach(), y)]
    opt.step()
    opt.zero_grad()
    ox, ou = model(x), model(u)
    pseudo = ou.detach().argmax(1)
    (loss_fn(ox, y) + 0.5 * loss_fn(ou, pseudo)).backward()
    expected.append(hand(ox.detach(), y))  # the first loss: the labelled pass
    # the second loss counts too, as every loss of a step with labels does (its pseudo-labels
    # agree with the pass always): the step's accuracy over both
    expected.append(hand(torch.cat([ox, ou]).detach(), torch.cat([y, pseudo])))
    opt.step()
    # every pass first, then every loss: both micro-batches count (the second's labels waited
    # for a forward pass that had already run, and were dropped)
    opt.zero_grad()
    xa, xb, ya, yb = x[:12], x[12:], y[:12], y[12:]
    outs = [model(xa), model(xb)]
    (loss_fn(outs[0], ya) + loss_fn(outs[1], yb)).backward()
    both = torch.cat([o.detach() for o in outs])
    opt.step()
    exporter.close()
    assert published[:3] == pytest.approx(expected)
    assert hand(ou.detach(), y) != pytest.approx(expected[1])  # what was counted before
    # each loss publishes the accuracy of the step's passes so far: the last, of both
    assert published[3:] == pytest.approx([hand(outs[0].detach(), ya), hand(both, y)])
    assert hand(both, y) != pytest.approx(hand(outs[0].detach(), ya))


def test_each_wrapped_loss_tells_its_own_threshold(caplog) -> None:
    """A sigmoid head trained with BCELoss beside a head trained with cross-entropy: train
    accuracy reads the sigmoid head's probabilities at 0.5; test accuracy, which runs the
    model without a loss, knows no single threshold, assumes logits and says so once."""
    x, y = _binary_data()
    model = _sigmoid_model()
    bus = MessageBus()
    exporter = ik.Exporter(model, None, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    test = ik.TestAccuracySubscriber(TensorDataset(x, y), message_bus=bus, backend=None)
    published: list[float] = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: published.append(float(m.data)), bus)
    bce = exporter.wrap_loss(nn.BCELoss())
    assert (exporter.binary_threshold, exporter.scores_known) == (0.5, True)
    exporter.wrap_loss(nn.CrossEntropyLoss())  # (the other head's)
    assert (exporter.binary_threshold, exporter.scores_known) == (0.0, False)
    bce(model(x), y)
    with torch.no_grad():
        p = model(x)
    assert published == pytest.approx([float(((p > 0.5).float() == y).float().mean())])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        assert float(test.evaluate()) == pytest.approx(float(((p > 0).float() == y).float().mean()))
    assert "TestAccuracySubscriber: the model gives one output per sample" in caplog.text
    exporter.close()


def test_an_evaluation_under_its_own_tag_counts_its_own_samples_only(tiny, batch) -> None:
    """A training step, then a validation pass in batches of uneven size (eval mode, no
    gradients, its own tag): ``train_accuracy_eval`` is the accuracy over the validation
    samples alone (the passes carry the training step's number, whose samples it must not
    count), ``train_accuracy`` that of the training batch; both counted by hand."""
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None, tag=None)
    collector = MetricCollector(["train_accuracy"])
    collector.attach(bus)
    x, y = batch
    g = torch.Generator().manual_seed(3)
    vx = torch.randn(11, *x.shape[1:], generator=g)
    vy = torch.randint(0, int(y.max()) + 1, (11,), generator=g)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(2):
            opt.zero_grad()
            out = tiny(x)
            train_expected = sum(
                int(row.index(max(row)) == int(label))
                for row, label in zip(out.detach().tolist(), y.tolist())
            ) / len(y)
            loss_fn(out, y).backward()
            opt.step()
            tiny.eval()
            with torch.no_grad():
                for part in (slice(0, 4), slice(4, 8), slice(8, 11)):
                    loss_fn(tiny(vx[part]), vy[part])
            tiny.train()
            reported = collector.collect()
            assert reported["train_accuracy"] == pytest.approx(train_expected)
            assert reported["train_accuracy_eval"] == pytest.approx(_by_hand(tiny.eval(), vx, vy))
            tiny.train()


class _Tagger(nn.Module):
    """Scores of 3 classes at each of 6 positions, (N, 3, 6), as a sequence tagger's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3 * 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).view(-1, 3, 6)


def _padded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels 1 or 2 at the first 2 positions, padding 0 at the other 4."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = 1 + (x[:, :1].expand(n, 6) + torch.randn(n, 6, generator=g) > 0).long()
    y[:, 2:] = 0
    return x, y


@pytest.mark.parametrize("given", ["loss", "call", "argument"])
def test_test_accuracy_leaves_out_the_ignore_index_of_the_training_loss(given) -> None:
    """A tagger trained with ``cross_entropy(ignore_index=0)`` (padding): test accuracy and its
    chance level leave the padding out, as the loss and train accuracy do (counted by hand)."""
    torch.manual_seed(0)
    model = _Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _padded(32, 0)
    test_x, test_y = _padded(50, 1)
    bus = MessageBus()
    got: dict[str, list[float]] = {"test_accuracy": [], "test_accuracy_chance": []}
    with ik.Exporter(model, opt, bus) as exporter:
        ik.TestAccuracySubscriber(
            TensorDataset(test_x, test_y),
            message_bus=bus,
            frequency="epoch",
            batch_size=16,
            backend=None,
            ignore_index=0 if given == "argument" else None,
        )
        ik.CallbackSubscriber(list(got), lambda m: got[m.kind].append(float(m.data)), bus)
        if given == "loss":
            loss_fn = exporter.wrap_loss(nn.CrossEntropyLoss(ignore_index=0))
        else:
            loss_fn = exporter.wrap_loss(F.cross_entropy)
        kwargs = {"ignore_index": 0} if given == "call" else {}
        for _ in range(2):
            for _ in range(10):
                opt.zero_grad()
                loss_fn(model(x), y, **kwargs).backward()
                opt.step()
            exporter.epoch_finished()
    assert exporter.ignore_index == (None if given == "argument" else 0)
    with torch.no_grad():
        predicted = model(test_x).argmax(1)
    real = test_y != 0
    expected = (predicted[real] == test_y[real]).float().mean().item()
    with_padding = (predicted == test_y).float().mean().item()
    assert abs(expected - with_padding) > 0.1  # the padding would change the figure
    assert got["test_accuracy"][-1] == pytest.approx(expected)
    counts = torch.bincount(test_y[real])
    assert got["test_accuracy_chance"][-1] == pytest.approx(counts.max().item() / real.sum().item())


def test_losses_that_disagree_on_the_ignore_index_leave_none_out() -> None:
    model = _Tagger()
    exporter = ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    exporter.wrap_loss(nn.CrossEntropyLoss(ignore_index=0))
    assert exporter.ignore_index == 0
    exporter.wrap_loss(nn.MSELoss())  # no class labels: says nothing of them
    assert exporter.ignore_index == 0
    exporter.wrap_loss(F.cross_entropy)  # counts every class
    assert exporter.ignore_index is None
    exporter.close()


def test_a_test_loader_that_drops_its_last_batch_says_how_many_samples_it_leaves_out(
    test_set, caplog
) -> None:
    n = len(test_set)
    assert n % 7  # the last batch is short
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        ik.TestAccuracySubscriber(DataLoader(test_set, batch_size=7, drop_last=True))
        ik.TestAccuracySubscriber(DataLoader(test_set, batch_size=7))  # keeps every sample
    said = [r.getMessage() for r in caplog.records if "drop_last" in r.getMessage()]
    assert len(said) == 1 and f"{n % 7} of its {n} samples are never evaluated" in said[0]


@pytest.mark.parametrize("ignore_index", [None, 7])
def test_a_label_beyond_the_classes_after_the_first_batch_is_refused_when_attached(
    ignore_index,
) -> None:
    """The last test sample's label is 7 for a model of 2 classes: refused where the subscriber
    is attached (it failed at the first epoch's end, losing that report), unless it is the
    ignore index."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    labels = torch.zeros(10, dtype=torch.long)
    labels[-1] = 7
    test = TensorDataset(torch.randn(10, 3), labels)

    def attach(exporter: ik.Exporter) -> None:
        ik.TestAccuracySubscriber(
            test,
            message_bus=exporter.message_bus,
            batch_size=4,
            backend=None,
            ignore_index=ignore_index,
        )

    with ik.Exporter(model) as exporter:
        if ignore_index is None:
            with pytest.raises(ValueError, match="got a label 7"):
                attach(exporter)
        else:
            attach(exporter)


def test_evaluations_under_their_own_tag_are_counted_apart_across_epochs_and_training_steps() -> (
    None
):
    """Evaluation passes carry the last training step's number: a test evaluation after the
    epoch's validation (an epoch's end between them), and a validation before training and one
    after the first step (a training step between them), were pooled into one accuracy."""
    from ikkuna_tune.bus import MessageBus

    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, tag=None, backend=None)
    got: list[tuple[str, float]] = []
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: got.append((m.tag, float(m.data))), bus, tag=None
    )

    def batch(tag: str, epoch: int, right: int, size: int = 4) -> None:
        output = torch.eye(3)[torch.zeros(size, dtype=torch.long)] * 5.0  # predicts class 0
        labels = torch.tensor([0] * right + [1] * (size - right))
        step = {"global_step": 0, "train_step": 0, "epoch": epoch, "tag": tag}
        bus.publish_network_message("network_output", output, **step)
        bus.publish_network_message("input_labels", labels, **step)

    batch("eval", 0, right=1)  # a validation before training: 1 of 4
    batch("default", 0, right=4)  # the first training step
    batch("eval", 0, right=3)  # a validation after it: 3 of 4, not (1 + 3) of 8
    batch("eval", 0, right=1)  # its second batch: (3 + 1) of 8
    batch("eval", 1, right=4)  # a test evaluation after the epoch's end: 4 of 4
    assert got == [
        ("eval", 0.25),
        ("default", 1.0),
        ("eval", 0.75),
        ("eval", 0.5),
        ("eval", 1.0),
    ]


@pytest.mark.parametrize(
    ("labels", "ignore_index", "refused"),
    [
        ([-100, -100, -100], None, True),  # all padding: accuracy would read 0
        ([2, 2, -100], 2, True),
        ([2, 1, -100], 2, False),  # one label to count
        ([2, 2, 2], None, False),
    ],
)
def test_a_test_set_with_no_label_to_count_is_refused_when_made(
    labels: list[int], ignore_index: int | None, refused: bool
) -> None:
    """Known when the subscriber is made (a TensorDataset's labels are at hand), not reported
    as an accuracy of 0 after the first epoch, as if the model were always wrong."""
    data = TensorDataset(torch.randn(3, 4), torch.tensor(labels))
    if refused:
        with pytest.raises(ValueError, match="every one of its 3 labels is left out"):
            ik.TestAccuracySubscriber(data, ignore_index=ignore_index, backend=None)
        # by hand: no label is counted
        assert not [label for label in labels if label >= 0 and label != ignore_index]
    else:
        ik.TestAccuracySubscriber(data, ignore_index=ignore_index, backend=None)


@pytest.mark.parametrize(
    "where",
    [
        "before_forward",
        "after_forward",
        "after_step",
        "after_forward_in_eval_mode",
        "before_forward_in_eval_mode",
    ],
)
def test_labels_published_before_their_forward_pass_are_warned_of(caplog, where: str) -> None:
    """A step opens at its forward pass: labels published before it (as the batch is loaded)
    carry the step before, and train accuracy paired each step's output with the next
    batch's labels, without a word. That is warned of once; labels after the forward pass,
    or after the optimizer's step (a documented order), are not, nor in a model trained in
    eval mode (whose step opens at the optimizer's step, and whose passes publish under
    "eval": its labels are paired with the pass that follows them). Reference: the accuracy of each
    step's output against its own labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    got: dict[int, float] = {}
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: got.__setitem__(m.global_step, float(m.data)), bus
    )
    expected = []
    if where.endswith("in_eval_mode"):
        model.eval()
    with caplog.at_level(logging.WARNING), ik.Exporter(model, opt, bus) as exporter:
        for _ in range(5):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            if where.startswith("before_forward"):
                exporter.publish_labels(y)
            out = model(x)
            if where.startswith("after_forward"):
                exporter.publish_labels(y)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if where == "after_step":
                exporter.publish_labels(y)
            expected.append(float((out.argmax(1) == y).float().mean()))
    early = [r for r in caplog.records if "before the first training forward" in r.getMessage()]
    if where == "before_forward":
        assert len(early) == 1 and "publish the labels after the forward pass" in early[0].message
    else:
        assert not early
    if where in ("after_forward", "after_step"):  # (eval-mode passes publish under "eval")
        assert [got[s] for s in sorted(got)] == pytest.approx(expected)

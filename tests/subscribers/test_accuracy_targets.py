"""Train and test accuracy with ignored (padding) labels, and labels that are no classes."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from tests.test_host_reads import counting_reads


class Tagger(nn.Module):
    """A per-token classifier: ``(N, T, 3)`` to ``(N, C, T)``, as cross_entropy takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).transpose(1, 2)


def _padded(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 8, 3, generator=g)
    y = torch.randint(0, 4, (7, 8), generator=g)
    for n, length in enumerate([8, 2, 5, 1, 6, 3, 4]):
        y[n, length:] = -100
    return x, y


def _by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy over the non-padding tokens, one token at a time, and the share of their most
    frequent class."""
    hits = counted = 0
    classes: Counter[int] = Counter()
    with torch.no_grad():
        for xn, yn in zip(x, y):
            out = model(xn[None])[0]
            for t, label in enumerate(yn.tolist()):
                if label == -100:
                    continue
                scores = out[:, t].tolist()
                counted += 1
                classes[label] += 1
                hits += int(scores.index(max(scores)) == label)
    return hits / counted, max(classes.values()) / counted


def test_padding_labels_are_left_out_of_train_and_test_accuracy() -> None:
    torch.manual_seed(0)
    model = Tagger()
    x, y = _padded(1)
    test_x, test_y = _padded(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.TestAccuracySubscriber(
        TensorDataset(test_x, test_y), batch_size=3, message_bus=bus, frequency="epoch",
        backend=None,
    )  # fmt: skip
    got: dict[str, float] = {}
    ik.CallbackSubscriber(
        ["train_accuracy", "test_accuracy", "test_accuracy_chance"],
        lambda m: got.__setitem__(m.kind, float(m.data)),
        bus,
    )
    loss_fn = exporter.wrap_loss(F.cross_entropy)  # ignore_index=-100
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    exporter.epoch_finished()
    exporter.close()
    train, _ = _by_hand(model, x, y)
    test, chance = _by_hand(model, test_x, test_y)
    assert got["train_accuracy"] == pytest.approx(train)
    assert got["test_accuracy"] == pytest.approx(test)
    assert got["test_accuracy_chance"] == pytest.approx(chance)


def test_a_test_set_of_nothing_but_padding_has_accuracy_zero() -> None:
    data = TensorDataset(torch.randn(2, 3, 3), torch.full((2, 3), -100))
    sub = ik.TestAccuracySubscriber(data, forward_fn=Tagger(), backend=None)
    assert sub.evaluate().item() == 0.0
    assert sub.chance is not None and sub.chance.item() == 0.0


class _Counting(Dataset):  # type: ignore[type-arg]
    """A map-style data set of regression pairs that counts the samples fetched."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True) * 3 + 5
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.fetched += 1
        return self.x[i], self.y[i]


def _regression() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 4, generator=g)
    return x, x.sum(1, keepdim=True) * 3 + 5


@pytest.mark.parametrize("form", ["tensors", "dataset", "loader", "shuffled loader"])
def test_test_accuracy_rejects_regression_labels_at_construction(form: str) -> None:
    x, y = _regression()
    counting = _Counting(10_000)
    if form == "tensors":
        data, batch_size = TensorDataset(x, y), 16
    elif form == "dataset":
        data, batch_size = counting, 16
    elif form == "loader":
        data, batch_size = DataLoader(counting, batch_size=16), None
    else:
        data, batch_size = DataLoader(counting, batch_size=16, shuffle=True), None
    model = nn.Linear(4, 1)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="Expected classification targets: class indices") as err:
        ik.TestAccuracySubscriber(data, model, batch_size=batch_size, backend=None)
    message = str(err.value)
    assert "dtype torch.float32 and shape (16, 1) with a value" in message
    assert "not a whole number" in message
    assert counting.fetched <= 16  # the first batch, not the whole data set
    assert torch.equal(torch.get_rng_state(), rng)  # no random draws from the user's stream


@pytest.mark.parametrize("column", [True, False])
def test_whole_number_ratings_for_one_output_are_refused_in_either_shape(column: bool) -> None:
    """Star ratings 1-5 as floats (a regression's targets that happen to be whole numbers) beside
    one output per sample: read as labels of one logit, every rating above 0.5 was class 1 and
    accuracy a bogus 1.0 where the targets were shaped (N, 1); in that shape as in (N,), they
    are refused as labels beyond the output's two classes."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(30, 4, generator=g)
    ratings = torch.randint(1, 6, (30,), generator=g).float()
    y = ratings[:, None] if column else ratings
    refused = "class indices below the 2 classes of the output but got a label 5"
    attached = ik.TestAccuracySubscriber(TensorDataset(x, y), batch_size=8, backend=None)
    with ik.Exporter(nn.Linear(4, 1)) as exporter:
        with pytest.raises(ValueError, match=refused):  # every label, when attached
            exporter.message_bus.register_subscriber(attached)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    sub = ik.TestAccuracySubscriber(loader, nn.Linear(4, 1), backend=None)
    with pytest.raises(ValueError, match=refused):  # at the first evaluation
        sub.evaluate()


def test_test_accuracy_rejects_autoencoder_targets_at_construction() -> None:
    images = torch.randn(20, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match=r"shape \(8, 3, 5, 5\) with a value .* not a whole"):
        ik.TestAccuracySubscriber(TensorDataset(images, images), nn.Conv2d(3, 3, 3, padding=1),
                                  batch_size=8, backend=None)  # fmt: skip


class _Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        x, y = _regression()
        return iter(zip(x, y))


def test_an_iterable_test_set_is_checked_in_the_first_evaluation() -> None:
    sub = ik.TestAccuracySubscriber(DataLoader(_Stream(), batch_size=8), nn.Linear(4, 1),
                                    backend=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"dtype torch.float32 and shape \(8, 1\) with a value"):
        sub.evaluate()


def test_test_accuracy_checks_soft_labels_against_the_output() -> None:
    soft = torch.tensor([[0.5, 0.5], [0.25, 0.75]])  # soft labels of 2 classes, model has 3
    sub = ik.TestAccuracySubscriber(TensorDataset(torch.randn(2, 4), soft), nn.Linear(4, 3),
                                    backend=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"shaped like the output \(2, 3\)"):
        sub.evaluate()


def test_test_accuracy_accepts_float_class_indices_and_soft_labels() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(30, 4, generator=g)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    labels = torch.randint(0, 3, (30,), generator=g)
    expected = sum(p == t for p, t in zip(pred, labels.tolist())) / 30
    soft = F.one_hot(labels, 3).float() * 0.7 + 0.1  # rows sum to 1, arg-max the label
    for y in (labels.float(), soft):
        sub = ik.TestAccuracySubscriber(TensorDataset(x, y), model, batch_size=8, backend=None)
        assert sub.evaluate().item() == pytest.approx(expected)


def _counting(
    model: nn.Module | None = None, opt: torch.optim.Optimizer | None = None
) -> tuple[ik.Exporter, list[float]]:
    """An Exporter on ``model`` (a stand-in layer where the scored outputs are made by hand)
    with a TrainAccuracySubscriber, and the list its values are published to."""
    bus = MessageBus()
    exporter = ik.Exporter(nn.Linear(1, 1) if model is None else model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    published: list[float] = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: published.append(float(m.data)), bus)
    return exporter, published


def _train_step(model: nn.Module, opt, loss_fn, x, y) -> None:  # type: ignore[no-untyped-def]
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()


def test_train_accuracy_rejects_regression_labels_at_the_first_step() -> None:
    x, y = _regression()
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    exporter, published = _counting(model, opt)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # labels by hand
        exporter.publish_labels(target)
        return F.mse_loss(out, target)

    with pytest.raises(ValueError, match=r"dtype torch.float32 and shape \(8, 1\) with a value"):
        _train_step(model, opt, mse, x[:8], y[:8])
    assert published == []
    exporter.close()


def test_train_accuracy_leaves_out_the_targets_of_a_regression_loss(caplog) -> None:
    """torch's regression losses (or classes=False) have no class labels: their targets are
    left out with a warning, whichever loss comes first in a step; a classification head
    beside them is counted (the plain-PyTorch accuracy of its logits)."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    boxes = torch.randn(16, 2, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(4, 5)  # 3 class logits, then 2 box coordinates
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter, published = _counting(model, opt)
    ce = exporter.wrap_loss(F.cross_entropy)
    regressions = [
        exporter.wrap_loss(F.mse_loss),
        exporter.wrap_loss(nn.SmoothL1Loss()),
        exporter.wrap_loss(lambda out, target: (out - target).abs().mean(), classes=False),
    ]
    expected = []
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        for regression in regressions:
            opt.zero_grad()
            out = model(x)
            with torch.no_grad():
                expected.append(float((out[:, :3].argmax(1) == y).float().mean()))
            (regression(out[:, 3:], boxes) + ce(out[:, :3], y)).backward()
            opt.step()
    assert published == pytest.approx(expected)
    told = [r.getMessage() for r in caplog.records if "left out of train" in r.getMessage()]
    assert len(told) == 3  # once for each
    with pytest.raises(ValueError, match="`classes` to be True, False or None"):
        exporter.wrap_loss(F.mse_loss, classes="no")
    # a loss of one's own whose first targets are no class labels is left out, with the reason
    unknown = exporter.wrap_loss(lambda out, target: (out - target).abs().mean())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        for _ in range(2):
            opt.zero_grad()
            out = model(x)
            with torch.no_grad():
                expected.append(float((out[:, :3].argmax(1) == y).float().mean()))
            (unknown(out[:, 3:], boxes) + ce(out[:, :3], y)).backward()
            opt.step()
    assert published == pytest.approx(expected)
    (told,) = [r.getMessage() for r in caplog.records]
    assert "Expected classification targets" in told and "number 5" in told
    exporter.close()


def test_train_accuracy_rejects_autoencoder_targets() -> None:
    model = nn.Conv2d(3, 3, 3, padding=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    images = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(7))

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # labels by hand
        exporter.publish_labels(target)
        return F.mse_loss(out, target)

    with pytest.raises(ValueError, match=r"output \(4, 3, 5, 5\).*but got .* shape \(4, 3, 5, 5\)"):
        _train_step(model, opt, mse, images, images)
    exporter.close()


def test_binary_float_labels_are_accepted_and_checked_with_one_read_once() -> None:
    """0.0 / 1.0 labels for one logit (BCE) give the accuracy counted by hand; the check reads
    back once, at the first step, and the steps after it read nothing more than plain training."""
    g = torch.Generator().manual_seed(8)
    batches = [(torch.randn(10, 4, generator=g), torch.randint(0, 2, (10, 1), generator=g).float())
               for _ in range(4)]  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    published: list[torch.Tensor] = []
    ik.CallbackSubscriber(["train_accuracy"], lambda m: published.append(m.data), bus)
    loss_fn = exporter.wrap_loss(F.binary_cross_entropy_with_logits)
    expected, per_step = [], []
    with counting_reads() as reads:
        for x, y in batches:
            with torch.no_grad():
                logits = model(x).reshape(-1)
            expected.append(sum(int(v > 0) == int(t) for v, t in zip(logits, y.reshape(-1))) / 10)
            before = sum(reads.values())
            _train_step(model, opt, loss_fn, x, y)
            per_step.append(sum(reads.values()) - before)
    exporter.close()
    assert per_step == [1, 0, 0, 0]
    assert [float(a) for a in published] == pytest.approx(expected)


def test_a_model_returning_its_loss_first_is_told_to_choose_its_scores() -> None:
    """``(loss, logits)`` from forward: the first tensor, the loss, is no batch of scores;
    train accuracy says so and names ``output_fn`` (the error came from deep in the maths)."""

    class LossFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, y):
            logits = self.fc(x)
            return F.cross_entropy(logits, y), logits

    model = LossFirst()
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with ik.Exporter(model, message_bus=bus) as exporter:
        model(x, y)
        with pytest.raises(ValueError, match=r"network_output.*0-d tensor.*output_fn"):
            exporter.publish_labels(y)
    seen = []
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.CallbackSubscriber(["train_accuracy"], lambda m: seen.append(float(m.data)), bus)
    with ik.Exporter(model, message_bus=bus, output_fn=lambda out: out[1]) as exporter:
        _, logits = model(x, y)
        exporter.publish_labels(y)
    assert seen == [pytest.approx((logits.argmax(1) == y).float().mean().item())]


class _Dicts(Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return {"x": torch.ones(3), "y": i % 2}


class _InputsOnly(Dataset):  # type: ignore[type-arg]
    def __init__(self, size: int = 4) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        return torch.ones(3)


class _Triples(torch.utils.data.Dataset):
    """Samples of (input, index, label): no pair."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.ones(3), i, 0


def test_test_data_that_is_no_labelled_pairs_is_refused_at_construction() -> None:
    """Known at construction, refused there (it failed at the first epoch end, after training,
    or never with a batch frequency the trial does not reach)."""
    cases = [
        (DataLoader(_Dicts(), batch_size=2), "first batch is a dict"),
        (_InputsOnly(), "first batch is a Tensor"),
        (TensorDataset(torch.ones(4, 3)), "TensorDataset of inputs alone"),
        # (inputs, sample index, labels): the index was read as the labels, and a test
        # accuracy of 0.098 reported where the labels give 0.727
        (TensorDataset(torch.ones(4, 3), torch.arange(4), torch.zeros(4)), "3 tensors a sample"),
        (DataLoader(_Triples(), batch_size=2), "first batch is a list of 3"),
        (TensorDataset(torch.ones(0, 3), torch.ones(0)), "got an empty one"),
        (_InputsOnly(size=0), "got an empty one"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            ik.TestAccuracySubscriber(data, backend=None)


def test_test_labels_beyond_the_models_classes_are_refused_at_the_first_evaluation() -> None:
    """Labels 1..4 for a model of 4 classes (1-based labels, as raw SVHN's): counted as wrong
    they gave a plausible accuracy; cross_entropy would raise. The first evaluation says so."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g)
    model = nn.Linear(3, 4)
    ok = ik.TestAccuracySubscriber(TensorDataset(x, torch.arange(20) % 4), forward_fn=model)
    assert 0.0 <= float(ok.evaluate()) <= 1.0
    shifted = ik.TestAccuracySubscriber(
        TensorDataset(x, torch.arange(20) % 4 + 1), forward_fn=model
    )
    with pytest.raises(ValueError, match="below the 4 classes of the output .* got a label 4"):
        shifted.evaluate()


def test_the_label_range_is_checked_over_the_whole_first_evaluation() -> None:
    """A test set sorted by class whose labels are 1-based: its first batch (all 1s) fits the
    3 classes, its last (3s) does not; the whole first evaluation is checked."""
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) // 10 + 1  # 1, 2, 3
    sub = ik.TestAccuracySubscriber(
        TensorDataset(x, labels), forward_fn=nn.Linear(3, 3), batch_size=10
    )
    with pytest.raises(ValueError, match="below the 3 classes of the output but got a label 3"):
        sub.evaluate()


def test_a_test_loader_that_yields_no_batch_is_refused_at_construction() -> None:
    data = TensorDataset(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    for loader in (
        DataLoader(data, batch_size=32, drop_last=True),
        DataLoader(data, sampler=torch.utils.data.SubsetRandomSampler([])),
    ):
        with pytest.raises(ValueError, match="DataLoader that yields batches but got one that"):
            ik.TestAccuracySubscriber(loader, backend=None)


def test_which_losses_have_class_labels() -> None:
    """torch's losses are read through partial, torch.compile and wrap_loss's own wrapper."""
    import functools

    from ikkuna_tune.exporter import _loss_labels

    bus = MessageBus()
    exporter = ik.Exporter(nn.Linear(2, 2), None, bus)
    bce = exporter.wrap_loss(nn.BCELoss())
    cases = {
        "cross_entropy": (F.cross_entropy, (True, 0.0)),
        "CrossEntropyLoss subclass": (type("Mine", (nn.CrossEntropyLoss,), {})(), (True, 0.0)),
        "partial cross_entropy": (functools.partial(F.cross_entropy, label_smoothing=0.1),
                                  (True, 0.0)),
        "BCELoss compiled": (torch.compile(nn.BCELoss()), (True, 0.5)),
        "partial binary_cross_entropy": (functools.partial(F.binary_cross_entropy),
                                         (True, 0.5)),
        "wrapped BCELoss": (bce, (True, 0.5)),
        "mse_loss partial": (functools.partial(F.mse_loss, reduction="sum"), (False, None)),
        "MSELoss compiled": (torch.compile(nn.MSELoss()), (False, None)),
        "SoftMarginLoss (-1/1 targets)": (nn.SoftMarginLoss(), (False, None)),
        "MultiLabelSoftMarginLoss": (nn.MultiLabelSoftMarginLoss(), (False, None)),
        "KLDivLoss (soft labels or not)": (nn.KLDivLoss(), (None, None)),
        "a function of one's own": (lambda out, target: out.sum(), (None, None)),
    }  # fmt: skip
    for name, (loss, expected) in cases.items():
        assert _loss_labels(loss) == expected, name
    assert exporter.wrap_loss(bce) is bce  # wrapped again, it would publish twice
    exporter.close()


def _two_heads() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    targets = torch.randn(32, 2, generator=g)
    torch.manual_seed(1)
    return nn.Linear(4, 5), x, y, targets


def test_a_regression_loss_takes_no_other_loss_output_or_threshold() -> None:
    """Every pass run before every loss, the regression head's loss between two class
    losses: its labels pair with its own scores and are left out, so each class loss counts
    its own pass (they took the next loss's output, whose own labels were dropped)."""
    model, x, y, targets = _two_heads()
    exporter, published = _counting(model)
    ce, mse = exporter.wrap_loss(F.cross_entropy), exporter.wrap_loss(F.mse_loss)
    outs = [model(x[:16]), model(x[16:])]
    ce(outs[0][:, :3], y[:16])
    mse(outs[0][:, 3:], targets[:16])
    ce(outs[1][:, :3], y[16:])
    mse(outs[1][:, 3:], targets[16:])
    both = torch.cat(outs).detach()[:, :3]
    assert published[-1] == pytest.approx(float((both.argmax(1) == y).float().mean()))
    assert len(published) == 2
    # a regression loss has no say in the threshold test accuracy takes
    bce_exporter = ik.Exporter(nn.Linear(4, 1), None, MessageBus())
    bce_exporter.wrap_loss(nn.BCELoss())
    bce_exporter.wrap_loss(F.mse_loss)
    assert (bce_exporter.binary_threshold, bce_exporter.scores_known) == (0.5, True)
    bce_exporter.close()
    exporter.close()


def test_multi_hot_targets_of_a_bce_head_are_left_out_and_training_goes_on(caplog) -> None:
    model, x, y, _ = _two_heads()
    multi_hot = (torch.rand(32, 2, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    exporter, published = _counting(model)
    ce, bce = exporter.wrap_loss(F.cross_entropy), exporter.wrap_loss(nn.BCEWithLogitsLoss())
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        out = model(x)
        ce(out[:, :3], y)
        bce(out[:, 3:], multi_hot)
    assert published == pytest.approx([float((out[:, :3].argmax(1) == y).float().mean())])
    assert "left out of train accuracy" in caplog.text and "classes=False" in caplog.text
    exporter.close()


def test_a_center_loss_or_distillation_term_beside_cross_entropy_is_left_out() -> None:
    """Its targets pass as class labels (a center loss's are the class indices; distillation's
    the teacher's probabilities) but score no class output: only classes=True counts them."""
    model, x, y, _ = _two_heads()
    teacher = torch.softmax(torch.randn(32, 3, generator=torch.Generator().manual_seed(3)), 1)
    for classes, counted in ((None, 1), (True, 2)):
        exporter, published = _counting(model)
        ce = exporter.wrap_loss(F.cross_entropy)
        kl = exporter.wrap_loss(nn.KLDivLoss(reduction="batchmean"), classes=classes)
        center = exporter.wrap_loss(lambda f, t: f.sum() * 0 + t.float().mean(), classes=classes)
        out = model(x)
        ce(out[:, :3], y)
        kl(torch.log_softmax(out[:, :3], 1), teacher)
        center(out[:, 3:], y)
        exporter.close()
        hits = (out[:, :3].argmax(1) == y).float().sum()
        if counted == 1:
            assert published[-1] == pytest.approx(float(hits / 32))
        else:  # the student against the teacher too, and the features against the labels
            more = (out[:, :3].argmax(1) == teacher.argmax(1)).float().sum()
            more += (out[:, 3:].argmax(1) == y).float().sum()
            assert published[-1] == pytest.approx(float((hits + more) / 96))


def test_a_non_negative_ignore_index_counts_nowhere() -> None:
    """Padding labelled 0 or 255 (segmentation's void), given to the module, a partial or
    the call, as in the loss; and a binary segmentation's (N, 1, H, W) logits per pixel."""
    import functools

    g = torch.Generator().manual_seed(9)
    logits, y = torch.randn(8, 4, 6, generator=g), torch.randint(0, 4, (8, 6), generator=g)
    y[:, 4:] = 255
    kept = y != 255
    expected = float((logits.argmax(1)[kept] == y[kept]).float().mean())
    losses = {
        "module": (nn.CrossEntropyLoss(ignore_index=255), {}),
        "partial": (functools.partial(F.cross_entropy, ignore_index=255), {}),
        "call": (F.cross_entropy, {"ignore_index": 255}),
    }
    for name, (loss, kwargs) in losses.items():
        exporter, published = _counting()  # (scored outputs made by hand)
        exporter.wrap_loss(loss)(logits, y, **kwargs)
        exporter.close()
        assert published == pytest.approx([expected]), name
    masks = (torch.rand(4, 5, 5, generator=g) > 0.6).float()
    pixel_logits = (2 * masks - 1).unsqueeze(1) + torch.randn(4, 1, 5, 5, generator=g)
    for loss, scores, cut in ((nn.BCEWithLogitsLoss(), pixel_logits, 0.0),
                              (nn.BCELoss(), torch.sigmoid(pixel_logits), 0.5)):  # fmt: skip
        exporter, published = _counting()
        exporter.wrap_loss(loss)(scores, masks.unsqueeze(1))
        exporter.close()
        by_hand = float(((scores[:, 0] > cut).float() == masks).float().mean())
        assert published == pytest.approx([by_hand])
        assert by_hand != pytest.approx(float((masks == 0).float().mean()))  # not background


def test_a_loss_wrapped_again_each_epoch_is_checked_once() -> None:
    """Float labels cost one read back at a loss's first labels: wrapping the same loss again
    (once an epoch) costs no more."""
    from tests.test_host_reads import counting_reads

    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(10, 4, generator=g), torch.randint(0, 2, (10, 1), generator=g).float()
    model = nn.Linear(4, 1)
    bus = MessageBus()
    exporter = ik.Exporter(model, None, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    per_epoch = []
    with counting_reads() as reads:
        for _ in range(3):
            loss_fn = exporter.wrap_loss(F.binary_cross_entropy_with_logits)
            before = sum(reads.values())
            loss_fn(model(x), y)
            per_epoch.append(sum(reads.values()) - before)
    exporter.close()
    assert per_epoch == [1, 0, 0]


def test_a_loss_of_ones_own_counts_in_the_steps_no_classification_loss_counts_in() -> None:
    """A class-weighted cross-entropy of one's own trains; nn.CrossEntropyLoss, wrapped too,
    only scores validation passes (eval, no gradients), or trained an earlier stage: the own
    loss's accuracy is published at every step (it was left out for good)."""
    model, x, y, _ = _two_heads()
    weight = torch.tensor([1.0, 2.0, 0.5])
    exporter, published = _counting(model)
    validation = exporter.wrap_loss(nn.CrossEntropyLoss())
    own = exporter.wrap_loss(lambda out, t: F.cross_entropy(out, t, weight=weight))
    expected = []
    for step, stage in enumerate(("classification", "own", "own")):
        xs, ys = x[8 * step : 8 * step + 16], y[8 * step : 8 * step + 16]  # batches differ
        out = model(xs)
        (validation if stage == "classification" else own)(out[:, :3], ys)
        expected.append(float((out[:, :3].argmax(1) == ys).float().mean()))
        model.eval()
        with torch.no_grad():
            validation(model(x)[:, :3], y)
        model.train()
    exporter.close()
    assert published == pytest.approx(expected)
    assert len(set(expected)) == 3


def test_uint8_and_numpy_ignore_indices_and_grayscale_images() -> None:
    """A uint8 mask's void 255 (-1 wrapped to 255 in uint8), an ignore_index given as a NumPy
    or tensor integer; and a grayscale image in [0, 1], which is no label even shaped like a
    binary segmentation's output."""
    import numpy as np

    g = torch.Generator().manual_seed(10)
    logits, y = torch.randn(4, 3, 5, generator=g), torch.randint(0, 3, (4, 5), generator=g)
    y[:, 3:] = 255
    kept = y != 255
    expected = float((logits.argmax(1)[kept] == y[kept]).float().mean())

    class LongTargets(nn.CrossEntropyLoss):
        def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return super().forward(out, target.long())

    cases = {
        "uint8 masks": (LongTargets(ignore_index=255), y.to(torch.uint8), {}),
        "numpy index": (F.cross_entropy, y, {"ignore_index": np.int64(255)}),
        "tensor index": (F.cross_entropy, y, {"ignore_index": torch.tensor(255)}),
    }
    for name, (loss, target, kwargs) in cases.items():
        exporter, published = _counting()
        exporter.wrap_loss(loss)(logits, target, **kwargs)
        exporter.close()
        assert published == pytest.approx([expected]), name
    images = torch.rand(4, 1, 6, 6, generator=g)
    with pytest.raises(ValueError, match="Expected classification targets"):
        ik.TestAccuracySubscriber(TensorDataset(images, images), forward_fn=lambda t: t)


def test_a_sigmoid_segmentation_read_as_logits_is_warned_about(caplog) -> None:
    scores = torch.sigmoid(torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(5)))
    masks = (scores > 0.5).float()
    bus = MessageBus()
    exporter = ik.Exporter(nn.Linear(1, 1), None, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    dice = exporter.wrap_loss(lambda p, t: 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.accuracy"):
        dice(scores, masks)
    exporter.close()
    assert "all in [0, 1]" in caplog.text


def test_a_step_whose_classification_labels_are_all_ignored_counts_the_other_loss() -> None:
    model, x, y, _ = _two_heads()
    exporter, published = _counting(model)
    ce = exporter.wrap_loss(F.cross_entropy)
    own = exporter.wrap_loss(lambda out, t: F.cross_entropy(out, t))
    expected = []
    for step in range(3):
        head_a = y.clone() if step != 1 else torch.full_like(y, -100)  # no label for head A
        out = model(x)
        ce(out[:, :3], head_a)
        own(out[:, 1:4], y)
        kept = head_a >= 0
        scores, labels = (out[:, :3], y) if kept.any() else (out[:, 1:4], y)
        expected.append(float((scores.argmax(1) == labels).float().mean()))
    exporter.close()
    assert published[1::2] == pytest.approx(expected)  # the last value of each step
    assert expected[1] != 0.0


def test_a_regression_trials_report_says_why_train_accuracy_is_none() -> None:
    """A trial trained on mse_loss alone has no train accuracy: the report's warning says why
    (every loss's targets so far are no class labels), not that a subscriber measuring every
    few batches is the likely cause, and still what a stopper does with None."""
    import warnings

    def trial(config: dict) -> None:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        loss_fn = exporter.wrap_loss(F.mse_loss)
        x, y = _regression()
        for _ in range(2):
            for _ in range(3):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            exporter.epoch_finished()
            ik.report({"val": 1.0})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ik.instrument(trial, [ik.TrainAccuracySubscriber(backend=None)])({})
    assert [r["train_accuracy"] for r in ik.local_results()] == [None, None]
    said = [str(w.message) for w in caught if "train_accuracy" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(
        "ik.report: 'train_accuracy' not measured since the previous report, so None in this "
        "one (TrainAccuracySubscriber: the targets of every wrapped loss so far are no class "
        "labels (a regression loss's, say), which have no accuracy). A Tune stopper"
    )

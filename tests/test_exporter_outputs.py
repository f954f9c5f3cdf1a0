"""Unusual models: outputs that are tuples or dicts, an LSTM, parameters not named weight/bias,
and a layer called twice in one forward pass. Each published tensor is compared with the same
quantity computed by plain autograd on copies of the parameters."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from tests.test_exporter import _by, _record


def _inputs(n: int = 6, features: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), self.aux(x)


class DictNet(TupleNet):
    def __init__(self, logits_key: str = "logits") -> None:
        super().__init__()
        self.logits_key = logits_key

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"features": self.aux(x), self.logits_key: self.fc(x)}


class NoTensorNet(TupleNet):
    def forward(self, x: torch.Tensor) -> dict[str, float]:  # type: ignore[override]
        self.fc(x)
        return {"count": 3.0}


def test_tuple_output_gives_network_output_and_train_accuracy() -> None:
    torch.manual_seed(0)
    model = TupleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.MeanSubscriber("network_output", message_bus=bus, backend=None)
    accuracy = _record(bus, ["train_accuracy", "network_output_mean"])
    x, y = _inputs()
    with ik.Exporter(model, opt, bus) as exporter:
        for _ in range(2):
            logits = F.linear(x, model.fc.weight, model.fc.bias).detach()
            opt.zero_grad()
            out, _aux = model(x)
            exporter.wrap_loss(F.cross_entropy)(out, y).backward()
            opt.step()
            torch.testing.assert_close(_by(got, "network_output")[-1], logits)
            expected = (logits.argmax(1) == y).float().mean()
            torch.testing.assert_close(_by(accuracy, "train_accuracy")[-1], expected)
            torch.testing.assert_close(_by(accuracy, "network_output_mean")[-1], logits.mean())


@pytest.mark.parametrize("key", ["logits", "out"])
def test_dict_output_prefers_logits_or_out(key: str) -> None:
    torch.manual_seed(0)
    model = DictNet(key)
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    x, _ = _inputs()
    with ik.Exporter(model, message_bus=bus):
        model(x)
    torch.testing.assert_close(_by(got, "network_output")[0], model.fc(x).detach())


def test_dict_output_without_a_preferred_key_gives_its_first_tensor() -> None:
    torch.manual_seed(0)
    model = DictNet("scores")
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    x, _ = _inputs()
    with ik.Exporter(model, message_bus=bus):
        model(x)
    torch.testing.assert_close(_by(got, "network_output")[0], model.aux(x).detach())


def test_output_fn_chooses_the_tensor_and_is_validated() -> None:
    torch.manual_seed(0)
    model = TupleNet()
    with pytest.raises(ValueError, match="Expected `output_fn` to be callable or None but got 3"):
        ik.Exporter(model, output_fn=3)  # type: ignore[arg-type]
    assert not model._forward_pre_hooks
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    x, _ = _inputs()
    with ik.Exporter(model, message_bus=bus, output_fn=lambda out: out[1]):
        model(x)
    torch.testing.assert_close(_by(got, "network_output")[0], model.aux(x).detach())
    bus = MessageBus()
    _record(bus, ["network_output"])
    with ik.Exporter(model, message_bus=bus, output_fn=lambda out: out[1].tolist()):
        with pytest.raises(ValueError, match="Expected `output_fn` to return a tensor.*list"):
            model(x)


def test_output_without_a_tensor_raises_naming_the_model_and_type() -> None:
    model = NoTensorNet()
    bus = MessageBus()
    _record(bus, ["network_output"])
    x, _ = _inputs()
    with ik.Exporter(model, message_bus=bus):
        with pytest.raises(ValueError, match=r"NoTensorNet returned a dict.*no tensor"):
            model(x)


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(x)
        return self.fc(seq[:, -1])


def test_lstm_activations_are_its_output_sequence(caplog) -> None:
    torch.manual_seed(0)
    model = LSTMNet()
    reference = LSTMNet()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["activations", "layer_gradients", "weights"])
    ik.NormSubscriber("activations", message_bus=bus, backend=None)
    norms = _record(bus, ["activations_norm2"])
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 7, 3, generator=g), torch.randint(0, 3, (5,), generator=g)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        exporter = ik.Exporter(model, opt, bus)
    text = caplog.text
    assert "'lstm'" in text and "weight_ih_l0" in text and "bias_hh_l0" in text
    seq, _ = reference.lstm(x)
    seq.retain_grad()
    F.cross_entropy(reference.fc(seq[:, -1]), y).backward()
    with exporter:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.testing.assert_close(_by(got, "activations", "lstm")[0], seq.detach())
    torch.testing.assert_close(_by(got, "layer_gradients", "lstm")[0], seq.grad)
    torch.testing.assert_close(_by(norms, "activations_norm2", "lstm")[0], seq.detach().norm())
    assert _by(got, "weights", "lstm") == []  # its four parameters: no single weight


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Affine(Scale):
    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = Scale()
        self.affine = Affine()
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.affine(self.norm(self.fc(x))))


def test_a_single_parameter_of_another_name_is_the_layers_weight(caplog) -> None:
    torch.manual_seed(0)
    model = ScaleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    got = _record(bus, ["weights", "weight_gradients", "weight_updates", "biases"])
    x, y = _inputs()
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        exporter = ik.Exporter(model, opt, bus)
    text = caplog.text
    assert "'affine'" in text and "'scale'" in text and "'shift'" in text
    assert "'norm'" not in text
    with exporter:
        for _ in range(2):
            before = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
            h = F.linear(x, before["fc.weight"], before["fc.bias"]) * before["norm.scale"]
            h = h * before["affine.scale"] + before["affine.shift"]
            F.cross_entropy(F.linear(h, before["out.weight"], before["out.bias"]), y).backward()
            got.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            change = model.norm.scale.detach() - before["norm.scale"].detach()
            assert change.abs().sum() > 0
            torch.testing.assert_close(_by(got, "weights", "norm")[0], before["norm.scale"])
            grad = before["norm.scale"].grad
            torch.testing.assert_close(_by(got, "weight_gradients", "norm")[0], grad)
            torch.testing.assert_close(_by(got, "weight_updates", "norm")[0], change)
            assert _by(got, "biases", "norm") == []
            assert {key for _, key, _, _ in got} == {"fc", "norm", "out"}  # not 'affine'


class Twice(nn.Module):
    """The same layer twice in one forward pass (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_a_layer_called_twice_publishes_every_call() -> None:
    torch.manual_seed(0)
    model = Twice()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["activations", "layer_gradients", "weights"])
    ik.NormSubscriber("activations", message_bus=bus, backend=None)
    norms = _record(bus, ["activations_norm2"])
    x, y = _inputs()
    with ik.Exporter(model, opt, bus) as exporter:
        assert list(exporter.modules) == ["fc", "out"]
        for step in range(2):
            p = {n: q.detach().clone() for n, q in model.named_parameters()}
            first = F.linear(x, p["fc.weight"], p["fc.bias"]).requires_grad_()
            second = F.linear(torch.relu(first), p["fc.weight"], p["fc.bias"])
            second.retain_grad()
            out = F.linear(torch.relu(second), p["out.weight"], p["out.bias"])
            F.cross_entropy(out, y).backward()
            got.clear()
            norms.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            assert [(k, key, s) for k, key, s, _ in got if k == "activations"] == [
                ("activations", "fc", step),
                ("activations", "fc#2", step),
                ("activations", "out", step),
            ]
            torch.testing.assert_close(_by(got, "activations", "fc")[0], first.detach())
            torch.testing.assert_close(_by(got, "activations", "fc#2")[0], second.detach())
            torch.testing.assert_close(_by(got, "layer_gradients", "fc")[0], first.grad)
            torch.testing.assert_close(_by(got, "layer_gradients", "fc#2")[0], second.grad)
            assert [key for k, key, _, _ in got if k == "weights"] == ["fc", "out"]
            assert sorted(key for _, key, _, _ in norms) == ["fc", "fc#2", "out"]
            torch.testing.assert_close(
                _by(norms, "activations_norm2", "fc#2")[0], second.detach().norm()
            )
        # the key of the second call resolves to the layer, but is not a layer of its own
        assert exporter.modules["fc#2"].module is model.fc and "fc#2" not in exporter.modules
        with pytest.raises(ValueError, match="Unknown layer 'fc#2'"):
            exporter.freeze("fc#2")


def test_a_layer_named_like_another_layers_repeated_call_is_refused_at_construction() -> None:
    # a ModuleDict key 'fc#2' beside 'fc': fc's second call would publish under that layer
    model = nn.ModuleDict({"fc": nn.Linear(3, 3), "fc#2": nn.Linear(3, 3)})
    with pytest.raises(ValueError, match="got 'fc#2' beside layer 'fc'"):
        ik.Exporter(model)
    # either layer on its own is fine, and so is a name with '#' that is no call's key
    assert list(ik.Exporter(nn.ModuleDict({"fc#2": nn.Linear(3, 3)})).modules) == ["fc#2"]
    for name in ("fc#x", "fc#1", "fc#02"):  # no call's key: calls are numbered from #2
        odd = nn.ModuleDict({"fc": nn.Linear(3, 3), name: nn.Linear(3, 3)})
        assert list(ik.Exporter(odd).modules) == ["fc", name]


class PaddedTextNet(nn.Module):
    """Embedding -> one TransformerEncoderLayer (padding mask from token 0) -> head on token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(self.emb(tokens), src_key_padding_mask=tokens == 0)[:, 0])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_outputs_of_an_encoders_fast_path_are_left_out_with_one_warning(caplog) -> None:
    # in eval mode without gradients, the encoder packs the padded batch into nested tensors
    # (one sequence per sample): they are not published (a norm of one crashed), training
    # passes are, and an SVCCA probe over such a model runs
    torch.manual_seed(0)
    model = PaddedTextNet()
    tokens = torch.randint(1, 20, (16, 6))
    tokens[::2, 4:] = 0
    seen: dict[str, torch.Tensor] = {}
    handle = model.enc.layers[0].linear1.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("linear1", out.detach().clone())
    )
    bus = MessageBus()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evals = _record(bus, ["activations"], tag="eval")
    trains = _record(bus, ["activations"])
    ik.NormSubscriber("activations", bus, tag="eval")
    exporter = ik.Exporter(model, opt, bus)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        ik.SVCCASubscriber(tokens, n=16, message_bus=bus, backend=None)
        with torch.no_grad():
            model.eval()(tokens)
    assert seen["linear1"].is_nested  # the fast path was taken
    nested = [r for r in caplog.records if "nested tensor" in r.getMessage()]
    assert len(nested) == 1
    assert "enable_nested_tensor=False" in nested[0].getMessage()
    assert {key for _, key, _, _ in evals} == {"emb", "fc"}
    model.train()
    _step_tokens = tokens[:8]
    opt.zero_grad()
    exporter.wrap_loss(F.cross_entropy)(model(_step_tokens), torch.zeros(8, dtype=torch.long))
    assert not seen["linear1"].is_nested
    torch.testing.assert_close(
        _by(trains, "activations", "enc.layers.0.linear1")[0], seen["linear1"]
    )
    exporter.epoch_finished()  # the SVCCA checkpoint's probe passes run
    handle.remove()
    exporter.close()


class FeaturesFirstNet(nn.Module):
    """Returns ``(features, logits)``: the scores are not the first tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = torch.relu(self.body(x))
        return features, {"scores": self.head(features)}


def test_the_element_the_wrapped_loss_scores_is_the_output_from_the_next_pass_on(caplog) -> None:
    torch.manual_seed(0)
    model = FeaturesFirstNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    x, y = _inputs(n=12)
    with caplog.at_level(logging.INFO, logger="ikkuna_tune"), ik.Exporter(model, opt, bus) as ex:
        test = ik.TestAccuracySubscriber(
            torch.utils.data.TensorDataset(x, y), batch_size=12, message_bus=bus, backend=None
        )
        loss_fn = ex.wrap_loss(F.cross_entropy)
        for step in range(3):
            opt.zero_grad()
            features, out = model(x)
            # before any loss, the first tensor by the rule; then the scores the loss took
            expected = features if step == 0 else out["scores"]
            torch.testing.assert_close(_by(got, "network_output")[-1], expected.detach())
            loss_fn(out["scores"], y).backward()
            opt.step()
        accuracy = test.evaluate()
    with torch.no_grad():
        reference = float((model(x)[1]["scores"].argmax(1) == y).double().mean())
    assert accuracy == pytest.approx(reference)
    told = [r.getMessage() for r in caplog.records if "scores the element" in r.getMessage()]
    assert told == [
        "The wrapped loss scores the element [1]['scores'] of FeaturesFirstNet's output, not "
        "its first tensor: network_output and test accuracy use that element (pass "
        "Exporter(..., output_fn=...) to choose another)"
    ]


def test_a_loss_on_the_first_tensor_too_keeps_the_rule_and_output_fn_wins() -> None:
    torch.manual_seed(0)
    x, y = _inputs(n=12)
    for output_fn in (None, lambda out: out[0][:, :3]):
        model = FeaturesFirstNet()
        bus = MessageBus()
        got = _record(bus, ["network_output"])
        with ik.Exporter(model, message_bus=bus, output_fn=output_fn) as ex:
            loss_fn = ex.wrap_loss(F.cross_entropy)
            for _ in range(3):
                features, out = model(x)
                # an auxiliary loss on the scores, and one on the first tensor (the rule's)
                loss_fn(out["scores"], y) + loss_fn(features[:, :3], y)
                loss_fn(features, y)
        expected = features if output_fn is None else features[:, :3]
        torch.testing.assert_close(_by(got, "network_output")[-1], expected.detach())


@pytest.mark.parametrize("how", ["computed", "part"])
def test_computed_or_partial_scores_leave_the_rule_and_let_the_output_go(caplog, how) -> None:
    """A loss on scores computed from an element (no view of it), or on a part of one, settles
    on the rule at the next pass and lets the held output (and its graph) go; a part of an
    element other than the first tensor is warned of (test accuracy scores the first); a
    regression loss on another element (a box head) never moves the scores there."""
    torch.manual_seed(0)
    x, y = _inputs(n=12)
    model = FeaturesFirstNet()
    bus = MessageBus()
    got = _record(bus, ["network_output"])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        with ik.Exporter(model, message_bus=bus) as exporter:
            ce, mse = exporter.wrap_loss(F.cross_entropy), exporter.wrap_loss(F.mse_loss)
            for _ in range(3):
                features, out = model(x)
                if how == "computed":
                    ce(out["scores"] / 2.0, y)
                else:
                    ce(out["scores"][:, :2], y % 2)
                mse(out["scores"], torch.zeros(12, 3))  # a regression loss on the element
            assert exporter._pending_output is None
    torch.testing.assert_close(_by(got, "network_output")[-1], features.detach())
    told = [r.getMessage() for r in caplog.records if "a part of an element" in r.getMessage()]
    expected = [
        "The wrapped loss scores a tensor of shape (12, 2), a part of an element of "
        "FeaturesFirstNet's output other than its first tensor: network_output and test "
        "accuracy read that first tensor, of shape (12, 8), as the model's scores. Pass "
        "output_fn= to ik.watch or Exporter to say which scores the output holds"
    ]
    assert told == ([] if how == "computed" else expected)


class Tagger(nn.Module):
    """Returns ``(features, logits)``: 16 features, 3 classes last (``(N, T, 3)`` logits for
    sequences ``(N, T, 4)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.body(x))
        return features, self.head(features)


class ViewedLogitsNet(Tagger):
    """Returns ``(features, logits)`` with logits shaped ``(N, 1, 3)``; 16 features, so labels
    0-2 fit either."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = super().forward(x)
        return features, logits.unsqueeze(1)


def _test_accuracy_after_training(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, scored, loss=F.cross_entropy
) -> float:
    """Train 3 steps with ``loss(scored(output), y)``; test accuracy on (x, y) then."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    with ik.Exporter(model, opt, bus) as ex:
        test = ik.TestAccuracySubscriber(
            torch.utils.data.TensorDataset(x, y), batch_size=10, message_bus=bus, backend=None
        )
        loss_fn = ex.wrap_loss(loss)
        for _ in range(3):
            opt.zero_grad()
            loss_fn(scored(model(x)), y).backward()
            opt.step()
        return float(test.evaluate())


def test_scores_the_loss_views_are_read_from_the_element_it_views(caplog) -> None:
    """The loss scores ``logits.squeeze(1)``, a view of all of an element of the output: test
    accuracy reads that element (before: the features, in silence, 5 % where the model was at
    50 %), as plain PyTorch scores the model."""
    torch.manual_seed(0)
    model = ViewedLogitsNet()
    x, y = _inputs(n=30)
    with caplog.at_level(logging.INFO, logger="ikkuna_tune"):
        accuracy = _test_accuracy_after_training(model, x, y, lambda out: out[1].squeeze(1))
    said = [r.getMessage() for r in caplog.records]
    model.eval()
    with torch.no_grad():
        reference = float((model(x)[1].squeeze(1).argmax(1) == y).double().mean())
    assert accuracy == pytest.approx(reference)
    assert any("scores the element [1] of ViewedLogitsNet" in m for m in said), said


@pytest.mark.parametrize("alone", [False, True])
def test_a_transposed_sequence_output_is_read_with_its_classes_last(alone) -> None:
    """A token tagger's ``(N, T, C)`` logits scored as ``logits.transpose(1, 2)`` (what
    cross_entropy takes): test accuracy reads the logits with their classes last, as plain
    PyTorch's arg-max over the last dimension, whether the logits are the output or one of
    its elements (a learned reshape to ``(N, C, T)`` scrambled them: 0.24 for 1.0)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(20, 7, 4, generator=g), torch.randint(0, 3, (20, 7), generator=g)
    tagger = Tagger()
    model: nn.Module = nn.Sequential(tagger, _Pick(1)) if alone else tagger

    def logits_of(output: Any) -> torch.Tensor:
        return output if alone else output[1]

    accuracy = _test_accuracy_after_training(model, x, y, lambda o: logits_of(o).transpose(1, 2))
    model.eval()
    with torch.no_grad():
        reference = float((logits_of(model(x)).argmax(-1) == y).double().mean())
    assert accuracy == pytest.approx(reference)


def test_a_binary_segmentation_scored_squeezed_keeps_one_logit_per_pixel() -> None:
    """``(N, 1, H, W)`` logits scored as ``out.squeeze(1)`` against ``(N, H, W)`` masks by
    ``binary_cross_entropy_with_logits``: one logit per pixel, as plain PyTorch thresholds
    them at 0 (a learned reshape to ``(N, H, W)`` read H as classes and refused the masks)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 2, 5, 5, generator=g)
    masks = (x[:, 0] > 0).float()
    model = nn.Conv2d(2, 1, 3, padding=1)
    accuracy = _test_accuracy_after_training(
        model, x, masks, lambda out: out.squeeze(1), F.binary_cross_entropy_with_logits
    )
    with torch.no_grad():
        reference = float(((model(x).squeeze(1) > 0).float() == masks).double().mean())
    assert accuracy == pytest.approx(reference)


class _Pick(nn.Module):
    """The element ``index`` of a tuple output."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, output: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return output[self.index]


def test_a_model_trained_on_a_regression_loss_alone_lets_its_output_go() -> None:
    torch.manual_seed(0)
    x, _ = _inputs(n=12)
    model = FeaturesFirstNet()
    with ik.Exporter(model, message_bus=MessageBus()) as exporter:
        mse = exporter.wrap_loss(F.mse_loss)
        for _ in range(2):
            _features, out = model(x)
            mse(out["scores"], torch.zeros(12, 3))
        assert exporter._pending_output is None and exporter._output_path is None


class FeaturesThenLogits(nn.Module):
    """Returns ``(features, logits)``: 6 features before 3 classes, so labels fit either."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


@pytest.mark.parametrize(
    "how, warned",
    [
        ("whole tuple", True),  # the loss picks the logits itself: accuracy cannot see which
        ("scores", False),  # loss_fn(output[1], y): the scored element is learned
        ("output_fn", False),
    ],
)
def test_a_loss_handed_the_whole_output_warns_which_tensor_accuracy_scores(
    caplog, how: str, warned: bool
) -> None:
    """Handed the model's whole ``(features, logits)`` tuple, a wrapped loss that scores the
    logits leaves train accuracy on the first tensor, the features (what the published
    accuracy equals, against an arg-max by hand): said once, in a warning that names the
    remedies; called with the logits, or with ``output_fn``, the accuracy is the logits'."""
    torch.manual_seed(0)
    model = FeaturesThenLogits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    got = _record(bus, ["train_accuracy"])
    output_fn = (lambda out: out[1]) if how == "output_fn" else None
    chosen = []
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(model, opt, bus, output_fn=output_fn) as exporter:
            if how == "whole tuple":
                loss_fn = exporter.wrap_loss(lambda out, y: F.cross_entropy(out[1], y))
            else:
                loss_fn = exporter.wrap_loss(F.cross_entropy)
            for _ in range(3):
                x, y = _inputs(16)
                opt.zero_grad()
                features, logits = model(x)
                scored = (features, logits) if how == "whole tuple" else logits
                loss_fn(scored, y).backward()
                picked = features if how == "whole tuple" else logits
                chosen.append(float((picked.argmax(1) == y).float().mean()))
                opt.step()
    warnings = [r for r in caplog.records if "holding 2 tensors" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "output_fn=" in warnings[0].getMessage()
    published = [float(d) for d in _by(got, "train_accuracy")]
    assert published == pytest.approx(chosen)


@pytest.mark.parametrize("case", ["some classes", "shifted tokens", "shifted, unflattened"])
def test_a_loss_on_some_of_the_classes_the_output_stands_for_is_warned_of(caplog, case) -> None:
    """A head of 10 logits (the first of a tuple output) trained on ``logits[:, :3]`` gets a
    test accuracy over all 10 (its arg-max may fall on a class the loss never saw), so that is
    warned of; a language model's
    ``logits[:, :-1]`` (the next token's scores), flattened or handed to a loss that flattens
    it, is the usual way to score it, so not."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    if case == "some classes":
        model: nn.Module = TupleNet()  # (10 logits, 2 more): the logits stand for the output
        model.fc = nn.Linear(4, 10)
        x, y = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)

        def scored(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return out[0][:, :3]

        target = y
    else:
        model = TupleNet()  # (5 logits per token, 2 more)
        model.fc = nn.Linear(4, 5)
        x, y = torch.randn(6, 8, 4, generator=g), torch.randint(0, 5, (6, 8), generator=g)

        def scored(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            if case == "shifted tokens":
                return out[0][:, :-1].reshape(-1, 5)
            return out[0][:, :-1]

        target = y[:, 1:].reshape(-1) if case == "shifted tokens" else y[:, 1:]

    def flattening(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        with ik.Exporter(model, message_bus=MessageBus()) as exporter:
            loss_fn = exporter.wrap_loss(F.cross_entropy if x.dim() == 2 else flattening)
            for _ in range(2):
                loss_fn(scored(model(x)), target)
    told = [r.getMessage() for r in caplog.records if "Pass output_fn=" in r.getMessage()]
    expected = [
        "The wrapped loss scores 3 of the 10 classes (dimension 1) of TupleNet's output: test "
        "accuracy reads all of them. Pass output_fn= to ik.watch or Exporter to say which "
        "scores the output holds"
    ]
    assert told == (expected if case == "some classes" else [])


@pytest.mark.parametrize("case", ["some classes", "all classes", "output_fn", "computed"])
def test_a_loss_on_some_classes_of_a_one_tensor_output_is_warned_of(caplog, case) -> None:
    """A model whose output is one ``(N, 10)`` tensor, trained on ``logits[:, :3]``, gets a
    test accuracy over all 10 classes: its arg-max may fall on a class the loss never saw (a
    trial read 0.125 where the 3 trained classes give 0.875), so that is warned of, once. The
    whole output, scores computed from it, or an ``output_fn`` that says where the scores lie
    are not. The output is held weakly: the step still lets it go."""
    import gc
    import weakref

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    model = nn.Linear(4, 10)
    x, y = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)
    output_fn = (lambda out: out[:, :3]) if case == "output_fn" else None

    def scored(out: torch.Tensor) -> torch.Tensor:
        if case == "all classes":
            return out
        if case == "computed":
            return out[:, :3] * 2.0
        return out[:, :3]

    refs = []
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        with ik.Exporter(model, message_bus=MessageBus(), output_fn=output_fn) as exporter:
            loss_fn = exporter.wrap_loss(F.cross_entropy)
            for _ in range(3):
                out = model(x)
                refs.append(weakref.ref(out))
                loss_fn(scored(out), y).backward()
                del out
            gc.collect()
            assert [r() for r in refs] == [None, None, None]
    told = [r.getMessage() for r in caplog.records if "Pass output_fn=" in r.getMessage()]
    expected = [
        "The wrapped loss scores 3 of the 10 classes (dimension 1) of Linear's output: test "
        "accuracy reads all of them. Pass output_fn= to ik.watch or Exporter to say which "
        "scores the output holds"
    ]
    assert told == (expected if case == "some classes" else [])


def test_a_permuted_view_scored_elementwise_is_read_as_the_output_is() -> None:
    """``binary_cross_entropy_with_logits(out.permute(0, 2, 3, 1), masks)`` with channels-last
    masks: one logit per pixel, as plain PyTorch thresholds them. Reading the loss's view as
    classes in dimension 1 (a permutation moved back) misread this element-wise loss: 0.13
    where the model was at 0.48."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 2, 5, 6, generator=g)
    masks = (x[:, 0] > 0).float().unsqueeze(-1)  # (N, H, W, 1)
    model = nn.Conv2d(2, 1, 3, padding=1)
    accuracy = _test_accuracy_after_training(
        model, x, masks, lambda out: out.permute(0, 2, 3, 1), F.binary_cross_entropy_with_logits
    )
    with torch.no_grad():
        reference = float(((model(x).permute(0, 2, 3, 1) > 0).float() == masks).double().mean())
    assert accuracy == pytest.approx(reference)

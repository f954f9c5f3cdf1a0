from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.exporter import select_modules
from ikkuna_tune.messages import DATA_KINDS, META_KINDS


def _record(bus, kinds, tag="default"):
    """Collect (kind, key, step, data clone) for ``kinds``."""
    got = []

    def keep(m):
        data = m.data.detach().clone() if isinstance(m.data, torch.Tensor) else m.data
        got.append((m.kind, m.key, m.global_step, data))

    ik.CallbackSubscriber(kinds, keep, bus, tag=tag)
    return got


def _by(got, kind, key=None):
    return [d for k, kk, _, d in got if k == kind and kk == key]


def _step(model, opt, exporter, batch):
    x, y = batch
    opt.zero_grad()
    loss = exporter.wrap_loss(F.cross_entropy)(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_per_kind_values_match_plain_autograd(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    got = _record(bus, [*list(DATA_KINDS), "loss", "network_output", "input_labels", "input_data"])
    exporter = ik.Exporter(tiny, opt, bus)
    x, y = batch
    for _ in range(2):
        # reference: the same forward/backward with plain autograd on copies of the parameters
        before = {n: p.detach().clone().requires_grad_() for n, p in tiny.named_parameters()}
        conv_out = F.conv2d(x, before["conv.weight"], before["conv.bias"])
        conv_out.retain_grad()
        fc_out = F.linear(F.relu(conv_out).flatten(1), before["fc.weight"], before["fc.bias"])
        fc_out.retain_grad()
        ref_loss = F.cross_entropy(fc_out, y)
        ref_loss.backward()
        got.clear()
        loss = _step(tiny, opt, exporter, batch)
        after = {n: p.detach().clone() for n, p in tiny.named_parameters()}
        for layer in ("conv", "fc"):
            torch.testing.assert_close(_by(got, "weights", layer)[0], before[f"{layer}.weight"])
            torch.testing.assert_close(_by(got, "biases", layer)[0], before[f"{layer}.bias"])
            torch.testing.assert_close(
                _by(got, "weight_gradients", layer)[0], before[f"{layer}.weight"].grad
            )
            torch.testing.assert_close(
                _by(got, "bias_gradients", layer)[0], before[f"{layer}.bias"].grad
            )
            torch.testing.assert_close(
                _by(got, "weight_updates", layer)[0],
                after[f"{layer}.weight"] - before[f"{layer}.weight"],
            )
            torch.testing.assert_close(
                _by(got, "bias_updates", layer)[0], after[f"{layer}.bias"] - before[f"{layer}.bias"]
            )
        torch.testing.assert_close(_by(got, "activations", "conv")[0], conv_out.detach())
        torch.testing.assert_close(_by(got, "activations", "fc")[0], fc_out.detach())
        torch.testing.assert_close(_by(got, "layer_gradients", "conv")[0], conv_out.grad)
        torch.testing.assert_close(_by(got, "layer_gradients", "fc")[0], fc_out.grad)
        torch.testing.assert_close(_by(got, "loss")[0], loss.detach())
        torch.testing.assert_close(_by(got, "network_output")[0], fc_out.detach())
        assert torch.equal(_by(got, "input_labels")[0], y)
        assert torch.equal(_by(got, "input_data")[0], x)
    exporter.close()


def test_order_and_step_numbers_within_steps_and_epochs(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    bus = MessageBus()
    got = []
    ik.CallbackSubscriber(
        list(DATA_KINDS) + [k for k in META_KINDS if k != "layer_frozen"],
        lambda m: got.append((m.kind, m.key, m.global_step, m.train_step, m.epoch)),
        bus,
    )
    with ik.Exporter(tiny, opt, bus) as exporter:
        for _epoch in range(2):
            for _ in range(2):
                _step(tiny, opt, exporter, batch)
            exporter.epoch_finished()
    first = [(k, key) for k, key, step, *_ in got if step == 0]
    assert first == [
        ("epoch_started", None),
        ("batch_started", None),
        ("weights", "conv"), ("weights", "fc"),
        ("biases", "conv"), ("biases", "fc"),
        ("input_data", None),
        ("activations", "conv"), ("activations", "fc"),
        ("network_output", None),
        ("input_labels", None),
        ("loss", None),
        # backward: output layer first
        ("layer_gradients", "fc"), ("layer_gradients", "conv"),
        # optimizer.step(): the gradients it is about to use, then what it changed
        ("weight_gradients", "conv"), ("weight_gradients", "fc"),
        ("bias_gradients", "conv"), ("bias_gradients", "fc"),
        ("weight_updates", "conv"), ("weight_updates", "fc"),
        ("bias_updates", "conv"), ("bias_updates", "fc"),
        ("batch_finished", None),
    ]  # fmt: skip
    steps = [(s, t, e) for k, _, s, t, e in got if k == "batch_finished"]
    assert steps == [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)]
    assert [(k, s) for k, _, s, _, _ in got if k.startswith("epoch")] == [
        ("epoch_started", 0), ("epoch_finished", 1), ("epoch_started", 2), ("epoch_finished", 3)
    ]  # fmt: skip


def test_eval_and_probe_passes_do_not_disturb_training_bookkeeping(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    bus = MessageBus()
    train = _record(bus, ["weight_updates", "activations", "batch_started"])
    probe = _record(bus, ["activations", "batch_started"], tag="probe")
    with ik.Exporter(tiny, opt, bus) as exporter:
        _step(tiny, opt, exporter, batch)
        tiny.fc.train(False)  # a custom mixed mode that the probe must restore exactly
        with exporter.probe() as model:
            assert not model.training and not torch.is_grad_enabled()
            model(batch[0])
        assert tiny.training and not tiny.fc.training and tiny.conv.training
        tiny.fc.train(True)
        before = tiny.conv.weight.detach().clone()
        _step(tiny, opt, exporter, batch)
        assert exporter.global_step == 1
    assert [s for k, _, s, _ in train if k == "batch_started"] == [0, 1]
    assert [(k, key, s) for k, key, s, _ in probe] == [
        ("activations", "conv", 0),
        ("activations", "fc", 0),
    ]
    update = _by(train, "weight_updates", "conv")[1]
    torch.testing.assert_close(update, tiny.conv.weight.detach() - before)
    assert update.abs().sum() > 0


def test_probe_rejects_default_tag_and_nesting(tiny) -> None:
    with ik.Exporter(tiny) as exporter:
        with pytest.raises(ValueError, match="probe tag other than 'default'"):
            with exporter.probe("default"):
                pass
        with exporter.probe():
            with pytest.raises(RuntimeError, match="already running"):
                with exporter.probe("other"):
                    pass


def test_hooks_only_for_subscribed_kinds_and_close_removes_all(tiny, batch) -> None:
    x, _ = batch
    reference = tiny(x).detach()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    bus = MessageBus()
    loss_only = ik.CallbackSubscriber(["loss"], print, bus)
    exporter = ik.Exporter(tiny, opt, bus)
    assert not tiny.conv._forward_hooks and not tiny.fc._forward_hooks
    assert not tiny.conv.weight._post_accumulate_grad_hooks
    acts = ik.CallbackSubscriber(["activations"], lambda m: None, bus)
    grads = ik.CallbackSubscriber(["weight_gradients"], lambda m: None, bus)
    assert len(tiny.conv._forward_hooks) == 1 and len(tiny.fc._forward_hooks) == 1
    # with an optimizer, gradients are read in its pre-step hook: no hook per parameter
    assert not tiny.conv.weight._post_accumulate_grad_hooks
    acts.detach()
    grads.detach()
    assert not tiny.conv._forward_hooks
    ik.CallbackSubscriber(list(DATA_KINDS), lambda m: None, bus)
    exporter.close()
    loss_only.detach()
    for module in tiny.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
        for p in module.parameters(recurse=False):
            assert not p._post_accumulate_grad_hooks
            assert not p._backward_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert bus.listeners == ()  # the bus forgets the closed Exporter
    torch.testing.assert_close(tiny(x), reference)


def test_without_optimizer_gradients_come_from_one_hook_per_subscribed_parameter(
    tiny, batch
) -> None:
    bus = MessageBus()
    got = _record(bus, ["weight_gradients"])
    with ik.Exporter(tiny, message_bus=bus):
        assert len(tiny.conv.weight._post_accumulate_grad_hooks) == 1
        assert not tiny.conv.bias._post_accumulate_grad_hooks
        x, y = batch
        reference = {n: p.detach().clone().requires_grad_() for n, p in tiny.named_parameters()}
        out = F.conv2d(x, reference["conv.weight"], reference["conv.bias"])
        out = F.linear(F.relu(out).flatten(1), reference["fc.weight"], reference["fc.bias"])
        F.cross_entropy(out, y).backward()
        F.cross_entropy(tiny(x), y).backward()
    assert sorted(key for _, key, _, _ in got) == ["conv", "fc"]
    for layer in ("conv", "fc"):
        torch.testing.assert_close(
            _by(got, "weight_gradients", layer)[0], reference[f"{layer}.weight"].grad
        )
    assert not tiny.conv.weight._post_accumulate_grad_hooks


def test_gradients_with_accumulation_are_what_the_optimizer_uses(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["weight_gradients"])
    x, y = batch
    halves = (slice(0, 2), slice(2, None))
    reference = {n: p.detach().clone().requires_grad_() for n, p in tiny.named_parameters()}
    for half in halves:
        out = F.conv2d(x[half], reference["conv.weight"], reference["conv.bias"])
        out = F.linear(F.relu(out).flatten(1), reference["fc.weight"], reference["fc.bias"])
        F.cross_entropy(out, y[half]).backward()
    with ik.Exporter(tiny, opt, bus):
        opt.zero_grad()
        for half in halves:
            F.cross_entropy(tiny(x[half]), y[half]).backward()
        opt.step()
    assert [key for _, key, _, _ in got] == ["conv", "fc"]  # once per step, not per backward
    for layer in ("conv", "fc"):
        torch.testing.assert_close(
            _by(got, "weight_gradients", layer)[0], reference[f"{layer}.weight"].grad
        )


def test_final_batch_finished_without_optimizer(tiny, batch) -> None:
    bus = MessageBus()
    got = _record(bus, ["batch_started", "batch_finished", "epoch_finished"])
    exporter = ik.Exporter(tiny, message_bus=bus)
    for _ in range(2):
        F.cross_entropy(tiny(batch[0]), batch[1]).backward()
    exporter.epoch_finished()
    tiny(batch[0]).sum().backward()
    exporter.close()
    assert [(k, s) for k, _, s, _ in got] == [
        ("batch_started", 0), ("batch_finished", 0), ("batch_started", 1), ("batch_finished", 1),
        ("epoch_finished", 1), ("batch_started", 2), ("batch_finished", 2),
    ]  # fmt: skip


def test_freeze_stops_parameters_and_skips_backward_of_frozen_prefix(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    bus = MessageBus()
    got = _record(bus, ["weight_gradients", "layer_gradients", "layer_frozen"])
    with ik.Exporter(tiny, opt, bus) as exporter:
        _step(tiny, opt, exporter, batch)  # builds momentum buffers
        exporter.freeze("conv")
        assert exporter.frozen == ("conv",)
        assert all(not p.requires_grad and p.grad is None for p in tiny.conv.parameters())
        frozen = {n: p.detach().clone() for n, p in tiny.conv.named_parameters()}
        fc_before = tiny.fc.weight.detach().clone()
        got.clear()
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(tiny(x), y)
        # walk the backward graph: no node accumulates into the frozen parameters
        seen, stack, leaves = set(), [loss.grad_fn], []
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if hasattr(node, "variable"):
                leaves.append(node.variable)
            stack.extend(n for n, _ in node.next_functions)
        assert not any(leaf is p for leaf in leaves for p in tiny.conv.parameters())
        assert any(leaf is tiny.fc.weight for leaf in leaves)
        loss.backward()
        opt.step()
        for n, p in tiny.conv.named_parameters():
            assert torch.equal(p, frozen[n]) and p.grad is None
        assert not torch.equal(tiny.fc.weight, fc_before)
        assert [(k, key) for k, key, _, _ in got] == [
            ("layer_gradients", "fc"),
            ("weight_gradients", "fc"),
        ]
        assert exporter.frozen_parameter_fraction() == pytest.approx(30 / (30 + 245))
        exporter.unfreeze("conv")
        assert all(p.requires_grad for p in tiny.conv.parameters())


def test_a_state_of_another_models_layers_is_refused_before_anything_changes(tiny) -> None:
    """A checkpoint of a model with other layer names: the load is refused, naming the layer,
    and leaves the Exporter's counters as they were (it set them first, then raised)."""
    with ik.Exporter(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))) as other:
        other.freeze("0")
        other.global_step, other.epoch = 40, 3
        state = other.state_dict()
    with ik.Exporter(tiny) as exporter:
        with pytest.raises(ValueError, match=r"Unknown layer '0'; this Exporter tracks"):
            exporter.load_state_dict(state)
        assert (exporter.global_step, exporter.epoch, exporter.frozen) == (0, 0, ())


def test_freeze_errors_and_meta_message(tiny) -> None:
    bus = MessageBus()
    got = _record(bus, ["layer_frozen"])
    with ik.Exporter(tiny, message_bus=bus) as exporter:
        with pytest.raises(
            ValueError, match=r"Unknown layer 'nope'; this Exporter tracks \['conv', 'fc'\]"
        ):
            exporter.freeze("nope")
        exporter.freeze("conv")
        exporter.freeze("conv")  # idempotent
        with pytest.raises(ValueError, match="'fc': it is the last trainable layer"):
            exporter.freeze("fc")
        assert tiny.fc.weight.requires_grad
    assert [(k, d) for k, _, _, d in got] == [("layer_frozen", "conv")]


class TwoHeads(nn.Module):
    """A shared body and two task heads; this training uses head ``a`` only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.heads = nn.ModuleDict({"a": nn.Linear(6, 3), "b": nn.Linear(6, 3)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["a"](torch.relu(self.body(x)))


def test_a_layer_the_training_never_uses_does_not_count_as_still_trainable() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ik.Exporter(model, opt) as exporter:
        assert exporter.leaves_trainable("heads.a", ["body"])  # no gradient yet: b counts
        _step(model, opt, exporter, (x, y))
        # the reference: with body and head a untrainable, this loss has nothing to train
        twin = copy.deepcopy(model)
        for p in [*twin.body.parameters(), *twin.heads["a"].parameters()]:
            p.requires_grad_(False)
        with pytest.raises(RuntimeError, match="does not require grad"):
            F.cross_entropy(twin(x), y).backward()
        assert not exporter.leaves_trainable("heads.a", ["body"])
        exporter.freeze("body")
        with pytest.raises(ValueError, match="'heads.a': it is the last trainable layer"):
            exporter.freeze("heads.a")
        _step(model, opt, exporter, (x, y))  # head a still trains
        assert model.heads["a"].weight.grad is not None


def test_a_layer_just_unfrozen_counts_as_trainable_before_its_first_gradient() -> None:
    """A fine-tuning phase switch: the body frozen while the head trains, then the body
    unfrozen and the head frozen, with the last step's gradients still there (the body has
    none: its freeze dropped them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))

    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("0")
        _step(model, opt, exporter, (x, y))
        exporter.unfreeze("0")
        assert model[0].weight.grad is None and model[2].weight.grad is not None
        exporter.freeze("2")
        before = model[0].weight.detach().clone()
        _step(model, opt, exporter, (x, y))
        assert not torch.equal(model[0].weight, before)  # the body trains


def test_an_unfrozen_layer_the_training_never_uses_counts_only_until_the_next_step() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("heads.b")
        _step(model, opt, exporter, (x, y))
        exporter.unfreeze("heads.b")  # trainable again, but this training never uses it
        _step(model, opt, exporter, (x, y))
        assert model.heads["b"].weight.grad is None
        exporter.freeze("body")
        with pytest.raises(ValueError, match="'heads.a': it is the last trainable layer"):
            exporter.freeze("heads.a")


def test_state_dict_round_trip_refreezes(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with ik.Exporter(tiny, opt) as exporter:
        for _ in range(3):
            _step(tiny, opt, exporter, batch)
        exporter.epoch_finished()
        exporter.freeze("conv")
        state = exporter.state_dict()
    torch.manual_seed(0)
    from tests.conftest import TinyNet

    fresh = TinyNet()
    with ik.Exporter(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1)) as restored:
        restored.load_state_dict(state)
        assert restored.frozen == ("conv",) and not fresh.conv.weight.requires_grad
        assert (restored.global_step, restored.epoch) == (2, 1)
        with pytest.raises(ValueError, match="keys"):
            restored.load_state_dict({"frozen": []})


def test_weight_updates_need_an_optimizer(tiny) -> None:
    bus = MessageBus()
    with ik.Exporter(tiny, message_bus=bus):
        with pytest.raises(ValueError, match=r"\['weight_updates'\] need the optimizer"):
            ik.CallbackSubscriber(["weight_updates"], print, bus)
        assert bus.subscribers == ()
    ik.CallbackSubscriber(["bias_updates"], print, bus)
    with pytest.raises(ValueError, match="need the optimizer"):
        ik.Exporter(tiny, message_bus=bus)
    assert not tiny._forward_pre_hooks


def test_bias_kinds_need_a_tracked_layer_with_a_bias() -> None:
    # layers without biases publish no bias kinds: such a subscriber read None at every report
    biasless = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    opt = torch.optim.SGD(biasless.parameters(), lr=0.1)
    with ik.Exporter(biasless, opt) as exporter:
        for kind in ("biases", "bias_gradients", "bias_updates"):
            with pytest.raises(ValueError, match=rf"\['{kind}'\] need a tracked layer with a bias"):
                ik.NormSubscriber(kind, message_bus=exporter.message_bus, backend=None)
        ik.NormSubscriber("weight_gradients", message_bus=exporter.message_bus, backend=None)
    one = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    with ik.Exporter(one, torch.optim.SGD(one.parameters(), lr=0.1)) as exporter:
        ik.NormSubscriber("bias_gradients", message_bus=exporter.message_bus, backend=None)


def test_constructor_validation(tiny) -> None:
    with pytest.raises(ValueError, match="`model` to be a torch.nn.Module"):
        ik.Exporter("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`optimizer` to be a torch.optim.Optimizer"):
        ik.Exporter(tiny, optimizer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`depth` to be an integer >= 1"):
        ik.Exporter(tiny, depth=0)
    with pytest.raises(ValueError, match="`module_filter`"):
        ik.Exporter(tiny, module_filter=int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="No layer of TinyNet matches"):
        ik.Exporter(tiny, module_filter=nn.LSTM)
    bus = MessageBus()
    with ik.Exporter(tiny, message_bus=bus):
        with pytest.raises(ValueError, match="already has an Exporter"):
            ik.Exporter(tiny, message_bus=bus)


def test_module_selection_by_depth_and_class() -> None:
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Sequential(MyConv(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    assert list(select_modules(model)) == ["0.0", "0.2", "2"]
    assert list(select_modules(model, depth=1)) == ["0", "2"]
    assert list(select_modules(model, module_filter=nn.Conv2d)) == ["0.0", "0.2"]
    assert list(select_modules(model, module_filter=MyConv)) == ["0.0"]
    assert list(select_modules(nn.Linear(2, 2))) == [""]


@pytest.mark.parametrize(
    "loss", ["none", "wrapped", "published", "validation_only", "eval_mode", "eval_subscriber"]
)
def test_a_training_step_without_its_loss_is_named_once(tiny, batch, caplog, loss) -> None:
    """A subscriber of the training loss (a LossSubscriber, a mean of it) with a loss neither
    wrapped nor published (or wrapped in validation passes only) gets one warning naming the
    fix; a loss wrapped or published (also training in eval mode), or a subscriber of the
    evaluation's loss alone, none."""
    bus = MessageBus()
    ik.MeanSubscriber(
        "loss",
        message_bus=bus,
        backend=None,
        tag="eval" if loss == "eval_subscriber" else "default",
    )
    x, y = batch
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    with caplog.at_level("WARNING"), ik.Exporter(tiny, opt, bus) as exporter:
        if loss == "eval_mode":
            tiny.eval()
        wrapped = exporter.wrap_loss(F.cross_entropy)
        loss_fn = wrapped if loss in ("wrapped", "eval_mode") else F.cross_entropy
        for _ in range(3):
            opt.zero_grad()
            value = loss_fn(tiny(x), y)
            value.backward()
            if loss == "published":
                exporter.publish_loss(value.detach())
            opt.step()
            if loss == "validation_only":
                with torch.no_grad():
                    wrapped(tiny(x), y)
    warned = [r.getMessage() for r in caplog.records if "without its loss" in r.getMessage()]
    if loss in ("none", "validation_only"):
        assert len(warned) == 1 and "wrap_loss" in warned[0] and "MeanSubscriber" in warned[0]
    else:
        assert warned == []

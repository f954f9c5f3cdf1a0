"""Freezing a layer freezes its buffers too: a frozen BatchNorm stops tracking statistics; a
layer the training code makes trainable again is no longer frozen."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class ConvBNNet(nn.Module):
    """conv(1->3, 3x3) -> batchnorm -> relu -> flatten -> linear(48 -> 5) on 6x6 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


class Block(nn.Module):
    """A residual block: x + dropout(relu(bn(conv(x))))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(F.relu(self.bn(self.conv(x))))


def _batches(n: int, channels: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(8, channels, 6, 6, generator=g) * 3 + 1,
            torch.randint(0, 5, (8,), generator=g),
        )
        for _ in range(n)
    ]


def _buffers(bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    return {n: getattr(bn, n).detach().clone() for n in _BN_BUFFERS}


def _train(model, opt, exporter, batches, epochs: int = 2) -> None:
    for _ in range(epochs):
        model.train()  # what a training loop does every epoch: must not unfreeze the buffers
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        exporter.epoch_finished()


def test_frozen_batchnorm_keeps_its_running_statistics() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    outputs = []
    ik.CallbackSubscriber(["network_output"], lambda m: outputs.append(m.data.clone()), bus)
    batches = _batches(3)
    with ik.Exporter(model, opt, bus) as exporter:
        assert list(exporter.modules) == ["conv", "bn", "fc"]
        initial = _buffers(model.bn)
        _train(model, opt, exporter, batches, epochs=1)
        # before freezing, training moves the statistics: the assertions below are not vacuous
        assert model.bn.num_batches_tracked.item() == 3
        assert not torch.equal(model.bn.running_mean, initial["running_mean"])
        exporter.freeze("bn")
        exporter.freeze("conv")
        frozen = _buffers(model.bn)
        frozen_params = {n: p.detach().clone() for n, p in model.named_parameters()}
        outputs.clear()
        _train(model, opt, exporter, batches)
        with exporter.probe():
            model(batches[0][0])  # a probe in between restores the modes it found
        _train(model, opt, exporter, batches, epochs=1)
        for name in _BN_BUFFERS:
            assert torch.equal(getattr(model.bn, name), frozen[name]), name
        for name in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
            assert torch.equal(model.get_parameter(name), frozen_params[name]), name
        assert not torch.equal(model.fc.weight, frozen_params["fc.weight"])
        assert model.training and model.fc.training and not model.bn.training
        # reference: the first training output after freezing is the frozen prefix with
        # BatchNorm in inference form (running statistics), computed with plain functions
        x = batches[0][0]
        ref = F.conv2d(x, frozen_params["conv.weight"], frozen_params["conv.bias"])
        ref = F.batch_norm(
            ref,
            frozen["running_mean"],
            frozen["running_var"],
            frozen_params["bn.weight"],
            frozen_params["bn.bias"],
            training=False,
            eps=model.bn.eps,
        )
        ref = F.linear(F.relu(ref).flatten(1), frozen_params["fc.weight"], frozen_params["fc.bias"])
        torch.testing.assert_close(outputs[0], ref)


def test_frozen_block_containing_batchnorm_and_dropout_runs_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(2 * 6 * 6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    acts = []
    ik.CallbackSubscriber(["activations"], lambda m: acts.append((m.key, m.data.clone())), bus)
    batches = _batches(3, channels=2)
    with ik.Exporter(model, opt, bus, depth=1) as exporter:
        assert list(exporter.modules) == ["0", "2"]  # the whole block is one layer
        _train(model, opt, exporter, batches, epochs=1)
        block = model[0]
        exporter.freeze("0")
        frozen = _buffers(block.bn)
        reference = copy.deepcopy(block).eval()  # independent copy, no hooks
        fc_before = model[2].weight.detach().clone()
        acts.clear()
        _train(model, opt, exporter, batches)
        for name in _BN_BUFFERS:
            assert torch.equal(getattr(block.bn, name), frozen[name]), name
        assert not torch.equal(model[2].weight, fc_before)
        assert not any(m.training for m in block.modules())
        # no dropout and running statistics: the block's output is its eval output, every step
        block_acts = [a for key, a in acts if key == "0"]
        assert len(block_acts) == 2 * len(batches)
        with torch.no_grad():
            for i, act in enumerate(block_acts):
                torch.testing.assert_close(act, reference(batches[i % len(batches)][0]))


class Stages(nn.Module):
    """Blocks kept in a ModuleList, called one by one (the list itself is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.fc = nn.Linear(2 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.fc(x.flatten(1))


def test_a_frozen_layer_that_is_never_called_itself_holds_its_modules_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = Stages()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _batches(3, channels=2)
    with ik.Exporter(model, opt, depth=1) as exporter:
        assert list(exporter.modules) == ["blocks", "fc"]
        _train(model, opt, exporter, batches, epochs=1)
        exporter.freeze("blocks")
        frozen = [_buffers(block.bn) for block in model.blocks]
        reference = copy.deepcopy(model.blocks).eval()  # independent copy, no hooks
        _train(model, opt, exporter, batches)  # calls model.train() every epoch
        for block, buffers in zip(model.blocks, frozen):
            for name in _BN_BUFFERS:
                assert torch.equal(getattr(block.bn, name), buffers[name]), name
        # running statistics, no dropout: each block computes its eval output
        x = batches[0][0]
        with torch.no_grad():
            expected = reference[1](reference[0](x))
            torch.testing.assert_close(model.blocks[1](model.blocks[0](x)), expected)
        exporter.unfreeze("blocks")
        assert all(m.training for m in model.blocks.modules())  # the model's mode again
        assert not any(m._forward_pre_hooks for m in model.blocks.modules())


def test_unfreeze_restores_the_models_training_mode_and_statistics_move_again() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _batches(2)
    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("bn")
        _train(model, opt, exporter, batches)
        assert model.bn.num_batches_tracked.item() == 0
        model.eval()
        exporter.unfreeze("bn")
        assert not model.bn.training  # the model's mode now: eval
        assert not model.bn._forward_pre_hooks
        model.train()
        exporter.freeze("bn")
        exporter.unfreeze("bn")
        assert model.bn.training  # the model's mode now: train, without a forward in between
        before = _buffers(model.bn)
        x, y = batches[0]
        # reference: the running mean update from the batch statistics of the conv output
        conv_out = F.conv2d(x, model.conv.weight.detach(), model.conv.bias.detach())
        mean = conv_out.mean(dim=(0, 2, 3))
        var = conv_out.var(dim=(0, 2, 3), unbiased=True)
        m = model.bn.momentum
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert model.bn.num_batches_tracked.item() == 1
        torch.testing.assert_close(
            model.bn.running_mean, (1 - m) * before["running_mean"] + m * mean
        )
        torch.testing.assert_close(model.bn.running_var, (1 - m) * before["running_var"] + m * var)


def test_close_removes_the_freeze_hook_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.Exporter(model, opt)
    exporter.freeze("bn")
    assert len(model.bn._forward_pre_hooks) == 1
    _train(model, opt, exporter, _batches(1))
    assert not model.bn.training
    exporter.close()
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert module.training  # the model is in train mode, and so is every layer again
    model(_batches(1)[0][0])
    assert model.bn.training and model.bn.num_batches_tracked.item() == 1


def test_a_freeze_after_close_is_refused() -> None:
    """A closed Exporter holds no layer in eval mode: a freeze would leave a BatchNorm's
    statistics training while the layer reads as frozen, so it is refused, and nothing of the
    model changes."""
    torch.manual_seed(0)
    model = ConvBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ik.Exporter(model, opt) as exporter:
        pass
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"freeze\('bn'\) after close\(\)"):
        exporter.freeze("bn")
    assert exporter.frozen == () or not exporter.frozen
    assert [p.requires_grad for p in model.parameters()] == flags


def test_restored_exporter_refreezes_the_buffers() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    with ik.Exporter(model) as exporter:
        exporter.freeze("bn")
        state = exporter.state_dict()
    fresh = ConvBNNet()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    with ik.Exporter(fresh, opt) as restored:
        restored.load_state_dict(state)
        before = _buffers(fresh.bn)
        _train(fresh, opt, restored, _batches(2))
        for name in _BN_BUFFERS:
            assert torch.equal(getattr(fresh.bn, name), before[name]), name


def _updates_of_layer_0() -> tuple[MessageBus, list[float]]:
    """A bus whose weight-update norms of layer '0' are kept in the returned list."""
    bus = MessageBus()
    ik.NormSubscriber("weight_updates", bus, backend=None)
    updates: list[float] = []
    ik.CallbackSubscriber(
        ["weight_updates_norm2"],
        lambda m: updates.append(float(m.data)) if m.key == "0" else None,
        bus,
    )
    return bus, updates


def test_a_frozen_layer_the_training_code_makes_trainable_again_counts_as_unfrozen(caplog):
    """``requires_grad_(True)`` on every parameter (a fine-tuning phase that trains everything)
    after the Exporter froze a layer: the layer trains, so it is unfrozen with a warning, runs
    in training mode and its update is what the step changed (it was published as zero)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus, updates = _updates_of_layer_0()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with ik.Exporter(model, opt, bus) as exporter:
        exporter.freeze("0")
        for param in model.parameters():
            param.requires_grad_(True)
        before = model[0].weight.detach().clone()
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert exporter.frozen == () and model[0].training
        assert "Layer '0' was frozen but some of its parameters require gradients again" in (
            caplog.text
        )
    moved = (model[0].weight - before).norm().item()
    assert moved > 1e-3 and updates == pytest.approx([moved], rel=1e-6)


def test_a_layer_the_user_had_frozen_then_trains_again_is_released_with_its_flags(caplog):
    """Fine-tuning: the backbone starts with requires_grad=False, the Exporter freezes it (its
    modes held), then the training code unfreezes it gradually (requires_grad back on,
    add_param_group): it counts as unfrozen, trains in training mode and keeps its flags."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    for param in [*model[0].parameters(), *model[1].parameters()]:
        param.requires_grad_(False)
    opt = torch.optim.SGD(model[2].parameters(), lr=0.5)
    bus, updates = _updates_of_layer_0()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with ik.Exporter(model, opt, bus) as exporter:
        exporter.freeze("0")
        exporter.freeze("1")
        for param in [*model[0].parameters(), *model[1].parameters()]:
            param.requires_grad_(True)
        opt.add_param_group({"params": [*model[0].parameters(), *model[1].parameters()]})
        before = model[0].weight.detach().clone()
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert exporter.frozen == () and model[1].training
        assert all(p.requires_grad for p in model.parameters())
    moved = (model[0].weight - before).norm().item()
    assert moved > 1e-3 and updates == pytest.approx([moved], rel=1e-6)


def test_a_frozen_layer_whose_weight_is_replaced_and_handed_to_a_new_optimizer_trains(caplog):
    """The training code puts a new, trainable weight in place of a frozen one
    (``load_state_dict(assign=True)``, say) and hands a new optimizer over: the layer trains
    again, so it counts as unfrozen, with a warning, and its update is what the step changed
    (it was published as zero), the old weight let go."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus, updates = _updates_of_layer_0()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with ik.Exporter(model, opt, bus) as exporter:
        exporter.freeze("0")
        old = model[0].weight
        model[0].weight = nn.Parameter(old.detach().clone())
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            exporter.set_optimizers(opt)
        assert exporter.frozen == ()
        assert "put in place of a frozen one" in caplog.text
        assert all(id(old) != key for key in exporter._held)
        assert model[0].bias.requires_grad  # the held bias gets its flag back
        before = model[0].weight.detach().clone()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    moved = (model[0].weight - before).norm().item()
    assert moved > 1e-3 and updates == pytest.approx([moved], rel=1e-6)


def test_the_frozen_fraction_counts_a_shared_weight_once() -> None:
    """An embedding and a head that share one weight, both frozen: the weight is one share of
    the parameters (it was counted twice, giving a fraction above 1)."""
    torch.manual_seed(0)
    emb, mid, head = nn.Embedding(100, 16), nn.Linear(16, 16), nn.Linear(16, 100)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "mid": mid, "head": head})
    with ik.Exporter(model, depth=1) as exporter:
        exporter.freeze("emb")
        exporter.freeze("head")
        frozen = {id(p): p.numel() for p in [emb.weight, head.bias]}
        total = {id(p): p.numel() for p in model.parameters()}
        assert exporter.frozen_parameter_fraction() == pytest.approx(
            sum(frozen.values()) / sum(total.values())
        )


def test_freezing_a_layer_with_a_tied_weight_says_which_layers_it_stops(caplog) -> None:
    """An embedding whose weight the head reuses: freezing the embedding stops the head's
    weight too (checked by a step), which the freeze says once, naming the head."""
    torch.manual_seed(0)
    emb, mid, head = nn.Embedding(10, 6), nn.Linear(6, 6), nn.Linear(6, 10)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "mid": mid, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ik.Exporter(model, opt, depth=1) as exporter:
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            exporter.freeze("emb")
        said = [r.getMessage() for r in caplog.records if "tied weights" in r.getMessage()]
        assert len(said) == 1 and "'emb'" in said[0] and "['head']" in said[0]
        before = head.weight.detach().clone(), head.bias.detach().clone()
        tokens = torch.randint(0, 10, (8,))
        opt.zero_grad()
        F.cross_entropy(head(mid(emb(tokens))), tokens).backward()
        opt.step()
        assert torch.equal(head.weight, before[0]) and not torch.equal(head.bias, before[1])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            exporter.freeze("mid")  # shares nothing
        assert "tied weights" not in caplog.text


@pytest.mark.parametrize("case", ["backbone", "weight only"])
def test_the_frozen_fraction_is_of_the_parameters_that_train(case) -> None:
    """Parameters the user froze (a fine-tuned backbone; a weight kept, its bias trained) are
    no training work the freezes stop: the fraction is of the parameters that would train
    without them, counted by hand from the gradients one step computes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.Linear(32, 4))
    if case == "backbone":
        model[0].requires_grad_(False)
        layer = "2"
    else:
        model[0].weight.requires_grad_(False)
        layer = "0"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with ik.Exporter(model, opt) as exporter:

        def trained() -> int:  # parameters a step computes gradients for
            opt.zero_grad(set_to_none=True)
            model(torch.randn(8, 64)).sum().backward()
            return sum(p.numel() for p in model.parameters() if p.grad is not None)

        before = trained()
        exporter.freeze(layer)
        after = trained()
        assert before > after
        assert exporter.frozen_parameter_fraction() == pytest.approx((before - after) / before)
        exporter.unfreeze(layer)
        assert exporter.frozen_parameter_fraction() == 0.0 and trained() == before


def test_closing_the_exporter_keeps_frozen_parameters_untrainable_and_restores_modes() -> None:
    """Closing removes the hooks: a frozen layer's parameters stay untrainable (another
    Exporter restored from the state may hold them frozen), its modules take the model's mode,
    and a new Exporter restored from the state freezes it again; unfreezing before closing
    trains it again."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("1")
        exporter.freeze("2")
        state = exporter.state_dict()
        exporter.unfreeze("2")
    assert not model[1].weight.requires_grad and model[1].training
    assert model[2].weight.requires_grad
    with ik.Exporter(model, opt) as again:
        again.load_state_dict(state)
        assert again.frozen == ("1", "2") and not model[2].weight.requires_grad


def _lbfgs_run(freeze_with_exporter: bool) -> tuple[nn.Module, torch.Tensor]:
    """Six L-BFGS steps of a small regression; layer '0' frozen before step 3, through the
    Exporter or, for the reference, by hand with a fresh L-BFGS over the same parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, history_size=5, max_iter=4)
    exporter = ik.Exporter(model, opt, MessageBus()) if freeze_with_exporter else None
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    at_freeze = torch.empty(0)
    for step in range(6):
        if step == 3:
            if exporter is not None:
                exporter.freeze("0")
            else:
                for p in model[0].parameters():
                    p.requires_grad_(False)
                    p.grad = None
                opt = torch.optim.LBFGS(model.parameters(), lr=0.5, history_size=5, max_iter=4)
            at_freeze = model[0].weight.detach().clone()

        def closure(opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model, at_freeze


def test_a_layer_frozen_under_lbfgs_stays_put_and_the_rest_trains_as_with_a_fresh_lbfgs() -> None:
    # L-BFGS moves every parameter along a direction built from its history, grad or not: the
    # Exporter clears that history when it freezes a layer
    model, at_freeze = _lbfgs_run(freeze_with_exporter=True)
    reference, reference_at_freeze = _lbfgs_run(freeze_with_exporter=False)
    assert torch.equal(at_freeze, reference_at_freeze)
    assert torch.equal(model[0].weight, at_freeze)  # not moved at all
    torch.testing.assert_close(model[2].weight, reference[2].weight, rtol=0, atol=0)
    torch.testing.assert_close(model[2].bias, reference[2].bias, rtol=0, atol=0)


def test_close_gives_a_module_the_user_kept_in_eval_mode_its_own_mode_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(2 * 6 * 6, 5)).train()
    model[0].bn.eval()  # the user's choice: fixed statistics
    exporter = ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), depth=1)
    exporter.freeze("0")
    _train(model, exporter.optimizers[0], exporter, _batches(1, channels=2), epochs=1)
    exporter.close()
    assert model[0].training and model[0].conv.training  # the model's mode again
    assert not model[0].bn.training  # its own


@pytest.mark.parametrize("validate_before_freeze", [False, True])
def test_a_batchnorm_the_user_holds_in_eval_mode_stays_so_after_an_unfreeze(
    validate_before_freeze: bool,
) -> None:
    """Fine-tuning with fixed statistics (``model.train(); bn.eval()`` at each epoch's start),
    a prefix frozen after the epoch's validation (the model in eval mode, as at a report) and
    unfrozen two epochs later: the BatchNorm stays in eval mode, as with the same freeze made
    by hand (``requires_grad_`` only), and the losses are the reference's step for step.
    Frozen in eval mode, every module looked alike, and the unfreeze put the BatchNorm in
    training mode: its statistics moved for the rest of the epoch."""
    prefix = ["0", "1", "3"]
    torch.manual_seed(123)
    inputs, labels = torch.randn(6, 5, 16, 1, 8, 8), torch.randint(0, 10, (6, 5, 16))

    def run(by_hand: bool) -> tuple[list[float], list[int]]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10),
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        exporter = None if by_hand else ik.Exporter(model, opt)
        losses, tracked = [], []
        for epoch in range(6):
            model.train()
            model[1].eval()  # the user keeps the statistics fixed
            if epoch == 4:  # unfrozen at the epoch's start, after the modes were set
                if exporter is None:
                    for name in prefix:
                        model[int(name)].requires_grad_(True)
                else:
                    for name in prefix:
                        exporter.unfreeze(name)
            for step in range(5):
                opt.zero_grad()
                loss = F.cross_entropy(model(inputs[epoch, step]), labels[epoch, step])
                loss.backward()
                opt.step()
                losses.append(loss.item())
            tracked.append(int(model[1].num_batches_tracked))
            if validate_before_freeze:
                model.eval()
                with torch.no_grad():
                    model(inputs[0, 0])
            if exporter is not None:
                exporter.epoch_finished()
            if epoch == 1:
                for name in prefix:
                    if exporter is None:
                        model[int(name)].requires_grad_(False)
                        for p in model[int(name)].parameters():
                            p.grad = None
                    else:
                        exporter.freeze(name)
        if exporter is not None:
            exporter.close()
        return losses, tracked

    watched, reference = run(by_hand=False), run(by_hand=True)
    assert reference[1] == [0] * 6  # (the reference's BatchNorm never tracked a batch)
    assert watched == reference


def test_a_freeze_made_in_eval_mode_and_checkpointed_at_once_reads_the_modes_after_restore():
    """Frozen in eval mode and checkpointed before any training pass (the report's checkpoint),
    then restored: the modes are read at the restored trial's first training pass, so the
    BatchNorm the user keeps in eval mode stays so after the unfreeze (it tracks no batch)."""

    def model_and_exporter() -> tuple[nn.Sequential, torch.optim.Optimizer, ik.Exporter]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, opt, ik.Exporter(model, opt, message_bus=MessageBus())

    model, _, exporter = model_and_exporter()
    model.eval()  # validation before the report
    exporter.freeze("0")
    exporter.freeze("1")
    state = exporter.state_dict()
    exporter.close()
    model, opt, exporter = model_and_exporter()
    exporter.load_state_dict(state)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    model.train()
    model[1].eval()  # the user keeps the statistics fixed
    for step in range(3):
        if step == 1:  # unfrozen mid-epoch, after the layers' hooks held them in eval mode
            exporter.unfreeze("1")
            exporter.unfreeze("0")
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not model[1].training and int(model[1].num_batches_tracked) == 0
    assert model[0].training  # (the rest of the layer follows the model)
    exporter.close()


def test_a_freeze_in_eval_mode_undone_before_any_training_pass_leaves_nothing_to_read():
    """Frozen in eval mode and unfrozen before a training pass, then frozen again in training
    mode: the second freeze reads the modes itself, and the unfreeze gives the layer the
    model's mode with the BatchNorm the user keeps in eval mode (the first freeze's reading,
    left pending, read the layer after its hook had put every module in eval mode, and the
    unfrozen layer trained in eval mode: no dropout)."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5))
    model = nn.Sequential(block, nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    with ik.Exporter(model, opt, message_bus=MessageBus(), depth=1) as exporter:
        model.train()
        block[1].eval()
        step()
        model.eval()
        exporter.freeze("0")
        exporter.unfreeze("0")
        model.train()
        block[1].eval()
        exporter.freeze("0")
        step()
        step()
        exporter.unfreeze("0")
        assert [m.training for m in (block, block[0], block[1], block[2])] == [
            True, True, False, True,
        ]  # fmt: skip

"""Layer calls that are not a plain training forward pass: activation checkpointing's
recomputation, a layer run on its own, training with the model in eval mode, and a pass
without gradients inside a training step."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.body, x, use_reentrant=self.reentrant))


def _record(bus: MessageBus, kinds: list[str], tag: str | None = None) -> list[tuple]:
    seen: list[tuple] = []
    ik.CallbackSubscriber(
        kinds, lambda m: seen.append((m.kind, m.key, m.global_step, m.tag, m.data)), bus, tag=tag
    )
    return seen


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_layers_publish_their_activations_once_per_step(reentrant: bool) -> None:
    torch.manual_seed(0)
    model = _Checkpointed(reentrant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["activations"])
    xs = [torch.randn(8, 4, requires_grad=reentrant) for _ in range(3)]
    expected = []
    with ik.Exporter(model, opt, bus):
        for step, x in enumerate(xs):
            with torch.no_grad():  # the activations by hand, before the step changes the weights
                first = model.body[0](x)
                expected += [("body.0", step, first), ("head", step, model.head(first.tanh()))]
            opt.zero_grad()
            F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
            opt.step()
    got = [(key, step, data) for _, key, step, tag, data in seen if tag == "default"]
    assert [(k, s) for k, s, _ in got] == [(k, s) for k, s, _ in expected]
    for (_, _, value), (_, _, reference) in zip(got, expected):
        torch.testing.assert_close(value, reference)


class _CheckpointedTwice(nn.Module):
    """A first layer, then a checkpointed block whose Linear runs twice, then a head."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.reentrant = reentrant

    def block(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(self.body(h).tanh()).tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.block, self.first(x).tanh(), use_reentrant=self.reentrant)
        return self.head(h)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_layers_publish_their_gradients_once_per_call(reentrant: bool) -> None:
    # a reentrant checkpoint runs its block without gradients in the forward pass: the layer
    # gradients are those of the recomputation in the backward pass (none were published)
    torch.manual_seed(0)
    model = _CheckpointedTwice(reentrant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["layer_gradients"])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    expected: dict[tuple[str, int], torch.Tensor] = {}
    with ik.Exporter(model, opt, bus):
        for step in range(2):
            x = torch.randn(8, 4)
            # by hand: the same computation without the modules (and their hooks)
            w = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
            first = F.linear(x, w["first.weight"], w["first.bias"])
            body1 = F.linear(first.tanh(), w["body.weight"], w["body.bias"])
            body2 = F.linear(body1.tanh(), w["body.weight"], w["body.bias"])
            head = F.linear(body2.tanh(), w["head.weight"], w["head.bias"])
            outputs = {"first": first, "body": body1, "body#2": body2, "head": head}
            for t in outputs.values():
                t.retain_grad()
            F.cross_entropy(head, y).backward()
            expected.update({(k, step): t.grad for k, t in outputs.items()})
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    got = {(key, step): data for _, key, step, _, data in seen}
    if reentrant:  # which recomputation is body's and which body#2's cannot be told: left out
        expected = {k: v for k, v in expected.items() if not k[0].startswith("body")}
    assert sorted(got) == sorted(expected)
    for key, reference in expected.items():
        torch.testing.assert_close(got[key], reference)


def test_a_reentrant_checkpoints_layer_in_two_passes_before_one_backward() -> None:
    # two views of a batch through the model, one backward: each pass's checkpointed layer
    # publishes its gradient (as without checkpointing)
    torch.manual_seed(0)
    model = _Checkpointed(reentrant=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["layer_gradients"])
    x1, x2 = (torch.randn(8, 4, requires_grad=True) for _ in range(2))  # reentrant needs it
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    w = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    outs = [F.linear(x, w["body.0.weight"], w["body.0.bias"]) for x in (x1, x2)]
    for out in outs:
        out.retain_grad()
    heads = [F.linear(o.tanh(), w["head.weight"], w["head.bias"]) for o in outs]
    (F.cross_entropy(heads[0], y) + F.cross_entropy(heads[1], y)).backward()
    with ik.Exporter(model, opt, bus):
        opt.zero_grad()
        (F.cross_entropy(model(x1), y) + F.cross_entropy(model(x2), y)).backward()
        opt.step()
    got = sorted((float(d.norm()) for _, key, _, _, d in seen if key == "body.0"))
    assert got == pytest.approx(sorted(float(o.grad.norm()) for o in outs))


def test_a_reentrant_checkpoint_around_the_whole_model_is_named_in_a_warning(caplog) -> None:
    # the checkpoint runs the whole model without gradients: its pass reads as an evaluation
    # (documented), said once; a checkpoint inside the model, or use_reentrant=False, counts
    # as training and says nothing
    torch.manual_seed(0)
    tags: dict[bool, set[str]] = {}
    for reentrant in (True, False):
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.Exporter(model, opt)
        seen = _record(exporter.message_bus, ["network_output"], tag=None)
        embedded = torch.randn(8, 4, requires_grad=True)  # an embedding's output, say
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            for _ in range(2):
                opt.zero_grad()
                out = checkpoint(model, embedded, use_reentrant=reentrant)
                F.cross_entropy(out, torch.zeros(8, dtype=torch.long)).backward()
                opt.step()
        exporter.close()
        tags[reentrant] = {tag for _, _, _, tag, _ in seen}
        warned = [r for r in caplog.records if "checkpoint around the whole model" in r.message]
        assert len(warned) == (1 if reentrant else 0), [r.message for r in caplog.records]
    assert tags == {True: {"eval"}, False: {"default"}}
    # inside the model, a reentrant checkpoint's pass is training: no warning
    model = _Checkpointed(reentrant=True)
    exporter = ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        F.cross_entropy(model(torch.randn(8, 4)), torch.zeros(8, dtype=torch.long)).backward()
    exporter.close()
    assert not [r for r in caplog.records if "checkpoint around" in r.message]


def test_a_layer_run_on_its_own_is_tagged_by_its_own_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["activations"], tag=None)
    with ik.Exporter(model, opt, bus):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 4)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
        opt.step()
        seen.clear()
        model.eval()
        with torch.no_grad():
            features = model[0](torch.randn(5, 4))  # validation features of the first layer
        assert [(key, tag) for _, key, _, tag, _ in seen] == [("0", "eval")]
        torch.testing.assert_close(seen[0][4], features)
        seen.clear()
        model.train()
        model[0](torch.randn(5, 4))  # a training-mode call with gradients: a training call
        assert [(key, tag) for _, key, _, tag, _ in seen] == [("0", "default")]


def test_training_in_eval_mode_counts_each_optimizer_step(caplog) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["weight_gradients", "weight_updates", "loss"], tag=None)
    reference = []
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        with ik.Exporter(model, opt, bus) as exporter:
            loss_fn = exporter.wrap_loss(F.cross_entropy)
            model.eval()  # batch-norm statistics frozen while fine-tuning
            for _ in range(3):
                opt.zero_grad()
                loss_fn(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
                reference.append(model[3].weight.grad.clone())
                opt.step()
            assert exporter.global_step == 2
    grads = [(step, tag, data) for kind, key, step, tag, data in seen
             if kind == "weight_gradients" and key == "3"]  # fmt: skip
    assert [(step, tag) for step, tag, _ in grads] == [
        (0, "default"),
        (1, "default"),
        (2, "default"),
    ]
    for (_, _, value), expected in zip(grads, reference):
        torch.testing.assert_close(value, expected)
    updates = [step for kind, key, step, tag, _ in seen if kind == "weight_updates" and key == "3"]
    assert updates == [0, 1, 2]
    losses = [tag for kind, _, _, tag, _ in seen if kind == "loss"]
    assert losses == ["eval"] * 3
    warnings = [r for r in caplog.records if "eval mode" in r.getMessage()]
    assert len(warnings) == 1


def test_a_training_forward_pass_gives_no_eval_mode_warning(caplog) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        with ik.Exporter(model, opt, MessageBus()) as exporter:
            for _ in range(2):
                opt.zero_grad()
                model(torch.randn(2, 4)).sum().backward()
                opt.step()
            assert exporter.global_step == 1
    assert not [r for r in caplog.records if "eval mode" in r.getMessage()]


def test_a_model_with_lazy_parameters_is_refused_until_it_ran_once() -> None:
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(
        ValueError, match=r"lazy parameters \['0.weight', '0.bias'\].*run the model"
    ):
        ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(2, 5))  # the first forward pass creates them
    norms: list[float] = []
    bus = MessageBus()
    ik.CallbackSubscriber(["weights"], lambda m: norms.append(float(m.data.norm())), bus)
    with ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), bus):
        model(torch.randn(2, 5))
    assert norms == pytest.approx([float(model[0].weight.norm()), float(model[2].weight.norm())])


def test_a_loss_after_a_pass_without_gradients_belongs_to_the_training_step() -> None:
    """Training forward pass, then a pass without gradients (pseudo-labels from the same
    model), then the loss on the training pass's output: the step's loss and labels are the
    training step's (they took the tag of the last pass, 'eval', and train accuracy was lost).
    A validation pass after the optimizer step keeps its own tag."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    seen = _record(bus, ["loss", "train_accuracy"], tag=None)
    g = torch.Generator().manual_seed(1)
    expected = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for step in range(3):
            x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
            opt.zero_grad()
            logits = model(x)
            with torch.no_grad():
                model(x + 0.01)  # a pass without gradients, inside the step
            loss = loss_fn(logits, y)
            hits = sum(int(r.index(max(r)) == t) for r, t in zip(logits.tolist(), y.tolist()))
            expected += [  # the labels complete the accuracy's step before the loss comes
                ("train_accuracy", step, "default", hits / 8),
                ("loss", step, "default", loss.item()),
            ]
            loss.backward()
            opt.step()
            with torch.no_grad():  # validation after the step: its own tag
                check = loss_fn(model(x), y)
            expected.append(("loss", step, "eval", check.item()))
    got = [(kind, step, tag, float(data)) for kind, _, step, tag, data in seen]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    assert [g[3] for g in got] == pytest.approx([e[3] for e in expected], rel=1e-6)


def test_a_validation_loss_in_eval_mode_with_gradients_keeps_its_eval_tag() -> None:
    """Without an optimizer the step stays open until the next training pass: a validation
    pass in eval mode without torch.no_grad (its loss has gradients) is still validation, and
    its loss must not replace the training step's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    bus = MessageBus()
    seen = _record(bus, ["loss"], tag=None)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with ik.Exporter(model, message_bus=bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        train = loss_fn(model(x), y)
        train.backward()
        model.eval()
        check = loss_fn(model(x), y)  # gradients on: no torch.no_grad()
        model.train()
    got = [(step, tag, float(data)) for _, _, step, tag, data in seen]
    assert got == [
        (0, "default", pytest.approx(train.item())),
        (0, "eval", pytest.approx(check.item())),
    ]


@pytest.mark.parametrize("computed", [False, True], ids=["scores", "log-softmax-scores"])
def test_a_look_in_eval_mode_with_gradients_before_the_steps_loss_leaves_it_the_steps(
    computed: bool,
) -> None:
    """``out = model(x); model.eval(); model(xv); model.train(); loss_fn(out, y)``: a logging
    look written without ``torch.no_grad`` between the training pass and its loss. The loss
    and the labels scored the training pass's output, as it is or computed from it
    (``nll_loss(log_softmax(out))``): they are the step's (loss and train accuracy of plain
    PyTorch), not the look's; a loss of the look's own output after the step stays under
    ``eval``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["loss"], tag=None)
    ik.TrainAccuracySubscriber(bus)
    accuracies = _record(bus, ["train_accuracy"])
    expected = []
    with ik.Exporter(model, opt, message_bus=bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        nll = exporter.wrap_loss(F.nll_loss)
        for step in range(3):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            xv, yv = torch.randn(8, 4), torch.randint(0, 3, (8,))
            opt.zero_grad()
            out = model(x)
            model.eval()
            model(xv)  # the look: gradients on, its output left alone
            model.train()
            loss = nll(F.log_softmax(out, 1), y) if computed else loss_fn(out, y)
            hits = (out.argmax(1) == y).float().mean().item()
            expected.append(((step, "default", loss.item()), (step, hits)))
            loss.backward()
            opt.step()
            model.eval()
            look = loss_fn(model(xv), yv)  # the look's own loss, gradients on
            model.train()
            expected.append(((step, "eval", look.item()), None))
        exporter.epoch_finished()
    got = [(step, tag, float(data)) for _, _, step, tag, data in seen]
    assert got == [pytest.approx(e) for e, _ in expected]
    hits = [(step, float(data)) for _, _, step, _, data in accuracies]
    assert hits == [pytest.approx(h) for _, h in expected if h is not None]


def test_a_looks_own_loss_on_a_computed_score_stays_the_looks() -> None:
    """Between two accumulated training passes, a look in eval mode with gradients scores its
    own output through a computation (log_softmax, then nll_loss): its loss is the look's,
    under ``eval``, not the step's; the step's own losses stay ``default`` (plain PyTorch's
    values)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen = _record(bus, ["loss"], tag=None)
    expected = []
    with ik.Exporter(model, opt, message_bus=bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        nll = exporter.wrap_loss(F.nll_loss)
        for step in range(2):
            opt.zero_grad()
            for half in range(2):
                x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
                loss = loss_fn(model(x), y)
                loss.backward()
                expected.append((step, "default", loss.item()))
                if half == 0:
                    model.eval()
                    look = nll(F.log_softmax(model(x), 1), y)
                    model.train()
                    expected.append((step, "eval", look.item()))
            opt.step()
    got = [(step, tag, float(data)) for _, _, step, tag, data in seen]
    assert got == [pytest.approx(e) for e in expected]


class _EncoderHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


def test_a_loop_that_runs_the_models_parts_publishes_each_step_under_its_number() -> None:
    """``model.head(relu(model.encoder(x)))`` in place of ``model(x)``: the activations, layer
    gradients and loss of a step carry that step's number, as its weights and gradients do,
    and hold the values of that step (computed by hand)."""
    torch.manual_seed(0)
    model = _EncoderHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    kinds = ["weights", "weight_gradients", "activations", "layer_gradients", "loss"]
    seen = _record(bus, kinds, tag="default")
    batches = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(3)]
    expected_encoder, expected_loss = [], []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for x, y in batches:
            with torch.no_grad():
                hidden = model.encoder(x)
                expected_encoder.append(hidden)
                expected_loss.append(F.cross_entropy(model.head(hidden.relu()), y))
            opt.zero_grad()
            loss_fn(model.head(torch.relu(model.encoder(x))), y).backward()
            opt.step()
    for kind in kinds:
        steps = [step for k, key, step, tag, _ in seen if k == kind and key in ("encoder", None)]
        assert steps == [0, 1, 2], kind
    activations = [d for k, key, _, _, d in seen if k == "activations" and key == "encoder"]
    losses = [d for k, _, _, _, d in seen if k == "loss"]
    for step in range(3):
        torch.testing.assert_close(activations[step], expected_encoder[step])
        torch.testing.assert_close(losses[step], expected_loss[step])


class _GAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3))
        self.disc = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def test_parts_called_between_optimizers_that_step_in_turn_stay_in_one_step() -> None:
    """A GAN's loop calls the generator and the discriminator (parts of one watched model),
    steps D, then runs G's loss through D and steps G: one training step per iteration, with
    each part's activations and gradients under the same step number."""
    torch.manual_seed(0)
    model = _GAN()
    opt_d = torch.optim.SGD(model.disc.parameters(), lr=0.01)
    opt_g = torch.optim.SGD(model.gen.parameters(), lr=0.01)
    bus = MessageBus()
    seen = _record(bus, ["activations", "weight_gradients", "batch_started"], tag="default")
    with ik.Exporter(model, [opt_d, opt_g], bus) as exporter:
        for _ in range(4):
            z, real = torch.randn(8, 2), torch.randn(8, 3)
            fake = model.gen(z)
            d_loss = model.disc(real).mean() - model.disc(fake.detach()).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            model.disc(fake).mean().backward()
            opt_g.step()
        assert exporter.global_step == 3
    starts = [step for kind, _, step, _, _ in seen if kind == "batch_started"]
    assert starts == [0, 1, 2, 3]
    for key in ("gen.0", "disc.0"):
        for kind in ("activations", "weight_gradients"):
            steps = sorted({step for k, name, step, _, _ in seen if k == kind and name == key})
            assert steps == [0, 1, 2, 3], (kind, key)


@pytest.mark.parametrize("convert", ["script", "trace"])
def test_a_torchscript_model_is_refused_with_what_to_watch_instead(convert) -> None:
    eager = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model = (
        torch.jit.script(eager)
        if convert == "script"
        else torch.jit.trace(eager, torch.randn(2, 3))
    )
    with pytest.raises(ValueError, match=r"TorchScript module .*watch the eager model"):
        ik.Exporter(model)


def test_a_scripted_model_inside_a_wrapper_is_refused_naming_torchscript() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    for model in (nn.DataParallel(scripted), nn.Sequential(scripted, nn.Softmax(dim=1))):
        with pytest.raises(ValueError, match=r"No layer of .*TorchScript modules") as raised:
            ik.Exporter(model)
        assert "['0'] are" in str(raised.value) or "['<model>'] are" in str(raised.value)
    # a filter that matches nothing is the cause, not a scripted block without parameters
    eager = nn.Sequential(nn.Linear(3, 4), torch.jit.script(nn.Sequential(nn.ReLU())))
    with pytest.raises(ValueError, match="No layer of") as raised:
        ik.Exporter(eager, module_filter=nn.Conv2d)
    assert "TorchScript" not in str(raised.value)


def test_a_scripted_part_is_no_layer_and_the_eager_layers_are_watched(caplog) -> None:
    """A model holding a TorchScript submodule: the submodule is no layer (its parameters are
    named as untracked, with what to do), and the eager layers' updates are the real ones."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), torch.jit.script(nn.Linear(4, 4)), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    updates: dict[str, torch.Tensor] = {}
    ik.CallbackSubscriber(
        ["weight_updates"], lambda m: updates.__setitem__(m.key, m.data.clone()), bus
    )
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        exporter = ik.Exporter(model, opt, bus)
    assert list(exporter.modules) == ["0", "2"]
    assert "'1': ['weight', 'bias']" in caplog.text and "['1'] are TorchScript" in caplog.text
    assert "depth=1" not in caplog.text  # no depth makes a TorchScript module a layer
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    with exporter:
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(5, 3)), torch.tensor([0, 1, 0, 1, 1])).backward()
        opt.step()
    assert torch.allclose(updates["0"], model[0].weight.detach() - before[0])
    assert torch.allclose(updates["2"], model[2].weight.detach() - before[1])


def test_wrap_loss_warns_once_when_the_target_is_no_tensor(caplog) -> None:
    """A mixup loss takes (labels_a, labels_b, lam): no labels can be published, so train
    accuracy has nothing to count; the wrapper says so once."""
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def mixup_loss(out, target):
        a, b, lam = target
        return lam * F.cross_entropy(out, a) + (1 - lam) * F.cross_entropy(out, b)

    labels: list = []
    bus = MessageBus()
    ik.CallbackSubscriber(["input_labels"], labels.append, bus)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(model, opt, bus) as exporter:
            loss_fn = exporter.wrap_loss(mixup_loss)
            for _ in range(2):
                opt.zero_grad()
                target = (torch.tensor([0, 1]), torch.tensor([1, 1]), 0.7)
                loss_fn(model(torch.randn(2, 3)), target).backward()
                opt.step()
    assert labels == []
    warned = [r for r in caplog.records if "not a tensor" in r.getMessage()]
    assert len(warned) == 1 and "tuple" in warned[0].getMessage()

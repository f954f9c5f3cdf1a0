"""Weight updates with several optimizers, with layers no optimizer steps, and of frozen layers:
always the change the step really made, measured by hand (clone before, diff after)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus

_UPDATES = ["weight_updates", "bias_updates"]
_GRADIENTS = ["weight_gradients", "bias_gradients"]


def _record(bus, kinds):
    got = []

    def keep(m):
        data = m.data.detach().clone() if isinstance(m.data, torch.Tensor) else m.data
        got.append((m.kind, m.key, m.global_step, data))

    ik.CallbackSubscriber(kinds, keep, bus)
    return got


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _only(got, kind, key):
    found = [d for k, kk, _, d in got if k == kind and kk == key]
    assert len(found) == 1, (kind, key, len(found))
    return found[0]


def test_two_optimizers_publish_the_real_change_of_every_layer(tiny, batch) -> None:
    body = torch.optim.SGD(tiny.conv.parameters(), lr=0.1, momentum=0.9)
    head = torch.optim.Adam(tiny.fc.parameters(), lr=0.01)
    bus = MessageBus()
    got = _record(bus, [*_UPDATES, *_GRADIENTS, "batch_started", "batch_finished"])
    x, y = batch
    with ik.Exporter(tiny, [body, head], bus) as exporter:
        assert exporter.optimizers == (body, head)
        for step in range(3):
            got.clear()
            body.zero_grad()
            head.zero_grad()
            F.cross_entropy(tiny(x), y).backward()
            grads = {n: p.grad.detach().clone() for n, p in tiny.named_parameters()}
            before = _params(tiny)
            body.step()
            head.step()
            after = _params(tiny)
            for layer in ("conv", "fc"):
                for role in ("weight", "bias"):
                    name = f"{layer}.{role}"
                    change = after[name] - before[name]
                    assert change.abs().sum() > 0
                    torch.testing.assert_close(_only(got, f"{role}_updates", layer), change)
                    torch.testing.assert_close(_only(got, f"{role}_gradients", layer), grads[name])
            # one step: it ends when every optimizer has stepped
            assert [(k, s) for k, _, s, _ in got if k.startswith("batch")] == [
                ("batch_started", step),
                ("batch_finished", step),
            ]
            assert got[-1][0] == "batch_finished"


def test_layers_in_no_optimizer_get_a_warning_and_no_fake_updates(tiny, batch, caplog) -> None:
    body = torch.optim.SGD(tiny.conv.parameters(), lr=0.1)  # trained, but not given
    head = torch.optim.SGD(tiny.fc.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, [*_UPDATES, *_GRADIENTS])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        exporter = ik.Exporter(tiny, head, bus)
    warnings = [r.getMessage() for r in caplog.records if "optimizer" in r.getMessage()]
    assert len(warnings) == 1 and "'conv'" in warnings[0] and "'fc'" not in warnings[0]
    x, y = batch
    with exporter:
        for _ in range(2):
            got.clear()
            body.zero_grad()
            head.zero_grad()
            F.cross_entropy(tiny(x), y).backward()
            before = _params(tiny)
            body.step()
            head.step()
            after = _params(tiny)
            assert not torch.equal(after["conv.weight"], before["conv.weight"])
            assert {key for _, key, _, _ in got} == {"fc"}  # nothing (no fake 0) for conv
            torch.testing.assert_close(
                _only(got, "weight_updates", "fc"), after["fc.weight"] - before["fc.weight"]
            )


def test_optimizer_argument_validation(tiny) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Expected `optimizer` to be a torch.optim.Optimizer"):
        ik.Exporter(tiny, [opt, "adam"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one optimizer"):
        ik.Exporter(tiny, [])
    with pytest.raises(ValueError, match="the same optimizer twice"):
        ik.Exporter(tiny, [opt, opt])
    with ik.Exporter(tiny, (opt,)) as exporter:
        assert exporter.optimizers == (opt,) and exporter.optimizer is opt


def test_frozen_layer_publishes_a_zero_update_and_no_gradients(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    bus = MessageBus()
    got = _record(bus, [*_UPDATES, *_GRADIENTS])
    raw: list[torch.Tensor] = []
    ik.CallbackSubscriber(
        ["weight_updates"], lambda m: raw.append(m.data) if m.key == "conv" else None, bus
    )
    x, y = batch
    with ik.Exporter(tiny, opt, bus) as exporter:
        for _ in range(2):  # momentum buffers for every parameter
            opt.zero_grad()
            F.cross_entropy(tiny(x), y).backward()
            opt.step()
        exporter.freeze("conv")
        raw.clear()
        for _ in range(3):
            got.clear()
            opt.zero_grad()
            F.cross_entropy(tiny(x), y).backward()
            before = _params(tiny)
            opt.step()
            after = _params(tiny)
            for role in ("weight", "bias"):
                real = after[f"conv.{role}"] - before[f"conv.{role}"]
                assert torch.equal(real, torch.zeros_like(real))
                assert torch.equal(_only(got, f"{role}_updates", "conv"), real)
                fc_change = after[f"fc.{role}"] - before[f"fc.{role}"]
                torch.testing.assert_close(_only(got, f"{role}_updates", "fc"), fc_change)
            assert not [k for k, key, _, _ in got if key == "conv" and k.endswith("_gradients")]
        # one zero tensor kept per layer, not allocated per step
        assert len(raw) == 3 and len({t.data_ptr() for t in raw}) == 1
        exporter.unfreeze("conv")
        got.clear()
        opt.zero_grad()
        F.cross_entropy(tiny(x), y).backward()
        before = _params(tiny)
        opt.step()
        change = tiny.conv.weight.detach() - before["conv.weight"]
        assert change.abs().sum() > 0
        torch.testing.assert_close(_only(got, "weight_updates", "conv"), change)
        assert len([k for k, key, _, _ in got if key == "conv" and k == "weight_gradients"]) == 1


def test_a_layer_an_optimizer_takes_up_later_gets_gradients_and_updates(tiny, batch) -> None:
    """Gradual unfreezing: the head trains first, then ``add_param_group`` adds the body. From
    that step on the body's gradients and updates are published (they never were)."""
    head = torch.optim.SGD(tiny.fc.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, [*_UPDATES, *_GRADIENTS])
    x, y = batch
    with ik.Exporter(tiny, head, bus):
        for step in range(3):
            if step == 1:
                head.add_param_group({"params": list(tiny.conv.parameters()), "lr": 0.05})
            got.clear()
            head.zero_grad()
            F.cross_entropy(tiny(x), y).backward()
            grads = {n: p.grad.detach().clone() for n, p in tiny.named_parameters()}
            before = _params(tiny)
            head.step()
            after = _params(tiny)
            layers = {key for _, key, _, _ in got}
            assert layers == ({"fc"} if step == 0 else {"conv", "fc"})
            for layer in sorted(layers):
                name = f"{layer}.weight"
                torch.testing.assert_close(
                    _only(got, "weight_updates", layer), after[name] - before[name]
                )
                torch.testing.assert_close(_only(got, "weight_gradients", layer), grads[name])


def _closure_run(make_opt, steps: int = 3, by_keyword: bool = False):
    """Train a small MLP with ``optimizer.step(closure)``; the reference gradient norms and
    losses of each step's first closure call (at the step's weights), the number of calls, and
    what was published."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = make_opt(model.parameters())
    bus = MessageBus()
    got = _record(bus, ["weight_gradients", "loss"])
    tagged: list[tuple[str, int]] = []
    ik.CallbackSubscriber(["loss"], lambda m: tagged.append((m.tag, m.global_step)), bus, tag=None)
    accuracy: dict[int, float] = {}
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: accuracy.__setitem__(m.global_step, float(m.data)), bus
    )
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    reference: list[dict[str, float]] = []
    calls: list[int] = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(steps):
            first: dict[str, float] = {}
            count = [0]

            def closure(first=first, count=count):
                count[0] += 1
                opt.zero_grad()
                out = model(x)
                loss = loss_fn(out, y)
                loss.backward()
                if not first:
                    first["grad0"] = float(model[0].weight.grad.norm())
                    first["loss"] = float(loss.detach())
                    first["accuracy"] = float((out.argmax(1) == y).float().mean())
                return loss

            if by_keyword:
                opt.step(closure=closure)
            else:
                opt.step(closure)
            reference.append(first)
            calls.append(count[0])
    return reference, calls, got, tagged, accuracy


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=4),
    ],
    ids=["sgd", "lbfgs"],
)
@pytest.mark.parametrize("by_keyword", [False, True])
def test_closure_gradients_are_those_of_the_steps_own_weights(make_opt, by_keyword) -> None:
    reference, calls, got, tagged, accuracy = _closure_run(make_opt, by_keyword=by_keyword)
    lbfgs = isinstance(make_opt([torch.zeros(1, requires_grad=True)]), torch.optim.LBFGS)
    assert (max(calls) > 1) == lbfgs  # L-BFGS evaluates several times per step
    published = {
        step: torch.linalg.vector_norm(data).item()
        for kind, key, step, data in got
        if kind == "weight_gradients" and key == "0"
    }
    assert sorted(published) == [0, 1, 2]
    for step, first in enumerate(reference):
        assert published[step] == pytest.approx(first["grad0"], rel=1e-6), step
    # one training-step loss per step, the first evaluation's; further calls under "closure"
    losses = {step: float(d) for kind, _, step, d in got if kind == "loss"}
    assert [t for t in tagged if t[0] == "default"] == [("default", s) for s in range(3)]
    for step, first in enumerate(reference):
        assert losses[step] == pytest.approx(first["loss"], rel=1e-6)
        assert accuracy[step] == pytest.approx(first["accuracy"])
    further = sum(c - 1 for c in calls)
    assert len([t for t in tagged if t[0] == "closure"]) == further


@pytest.mark.parametrize("optimizer", ["sgd", "sparse_adam"])
def test_sparse_embedding_gradients_are_measured_as_their_dense_values(optimizer) -> None:
    """``nn.Embedding(sparse=True)``: the gradient norms and update ratios published equal
    those of the dense gradient and of the real change (the optimizer step was not broken)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(12, 4, sparse=True), torch.nn.Flatten())
    make = {
        "sgd": lambda: torch.optim.SGD(model.parameters(), lr=0.5),
        "sparse_adam": lambda: torch.optim.SparseAdam(list(model.parameters()), lr=0.1),
    }
    opt = make[optimizer]()
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[tuple[str, int], float] = {}
    ik.CallbackSubscriber(
        ["weight_gradients_norm2", "weight_updates_weights_ratio"],
        lambda m: got.__setitem__((m.kind, m.global_step), float(m.data)),
        bus,
    )
    expected = {}
    with ik.Exporter(model, opt, bus):
        for step in range(2):
            opt.zero_grad()
            model(torch.tensor([[1, 3, 3], [7, 1, 0]])).pow(2).sum().backward()
            weight = model[0].weight
            expected[("weight_gradients_norm2", step)] = weight.grad.to_dense().norm().item()
            before = weight.detach().clone()
            opt.step()
            change = (weight.detach() - before).norm() / before.norm()  # weights at the start
            expected[("weight_updates_weights_ratio", step)] = change.item()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_a_closure_over_the_models_parts_publishes_one_training_loss_per_step() -> None:
    """L-BFGS over a loop that runs the model's parts: the further closure calls' losses are
    under 'closure', as with ``model(x)``; one loss per step under 'default'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    bus = MessageBus()
    tags: list[tuple[str, int]] = []
    ik.CallbackSubscriber(["loss"], lambda m: tags.append((m.tag, m.global_step)), bus, tag=None)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    calls = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.mse_loss)
        for _ in range(2):
            count = [0]

            def closure(count=count):
                count[0] += 1
                opt.zero_grad()
                loss = loss_fn(model[2](model[1](model[0](x))), y)  # the parts, not model(x)
                loss.backward()
                return loss

            opt.step(closure)
            calls.append(count[0])
    assert min(calls) > 1
    assert [t for t in tags if t[0] == "default"] == [("default", 0), ("default", 1)]
    assert len([t for t in tags if t[0] == "closure"]) == sum(calls) - 2


def test_a_compiled_models_further_closure_calls_publish_no_training_gradients() -> None:
    """Under torch.compile the layer gradients come from taps traced into the graph: those of
    L-BFGS's further closure calls are not published as the step's (one per layer per step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    bus = MessageBus()
    seen: list[tuple[str, str, int]] = []
    ik.CallbackSubscriber(
        ["layer_gradients"], lambda m: seen.append((m.key, m.tag, m.global_step)), bus, tag=None
    )
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with ik.Exporter(model, opt, bus):
        run = torch.compile(model, backend="aot_eager")
        for _ in range(2):

            def closure():
                opt.zero_grad()
                loss = F.mse_loss(run(x), y)
                loss.backward()
                return loss

            opt.step(closure)
    assert sorted(seen) == [(k, "default", s) for k in ("0", "2") for s in (0, 1)]


@pytest.mark.parametrize("subsample", [1, 2])  # one batch of every layer; layer by layer
def test_an_update_is_the_optimizer_steps_change_not_the_forward_passs(subsample) -> None:
    # nn.Embedding(max_norm=...) renormalises the rows it looks up in place during the forward
    # pass: as documented, the update is what the optimizer step changed (copied as it
    # begins), and `weights` are the values the step started from, before the forward pass
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, max_norm=0.5)
    with torch.no_grad():
        emb.weight.mul_(3)  # rows longer than max_norm
    model = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    got = _record(bus, ["weights"])
    ik.CallbackSubscriber(
        ["weight_updates"],
        lambda m: got.append((m.kind, m.key, m.global_step, m.data.clone())),
        bus,
        subsample=subsample,
    )
    x, y = torch.randint(0, 10, (5, 3)), torch.randint(0, 3, (5,))
    starts, changes = [], []
    with ik.Exporter(model, opt, bus):
        for _ in range(4):
            starts.append(emb.weight.detach().clone())
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            before_step = emb.weight.detach().clone()
            opt.step()
            changes.append(emb.weight.detach() - before_step)
    assert (starts[1] - starts[0] - changes[0]).norm() > 1.0  # what the forward pass changed
    published = {s: d for k, key, s, d in got if k == "weight_updates" and key == "0"}
    assert sorted(published) == list(range(0, 4, subsample))
    for step, update in published.items():
        torch.testing.assert_close(update, changes[step])
    weights = [d for k, key, _, d in got if k == "weights" and key == "0"]
    assert len(weights) == 4
    for start, published_weights in zip(starts, weights):
        torch.testing.assert_close(published_weights, start)


def _step(model, opt, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_a_new_stages_optimizer_is_warned_about_then_handed_over(tiny, batch, caplog) -> None:
    """Train the head with one optimizer, then the whole model with a new one: steps of the
    new optimizer, not watched, end no training step and are warned about once; after
    set_optimizers every step is a step and every layer's update is the real change."""
    x, y = batch
    head = list(tiny.named_children())[-1][0]
    stage1 = torch.optim.SGD(getattr(tiny, head).parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, _UPDATES)
    with ik.Exporter(tiny, stage1, bus) as exporter:
        for _ in range(2):
            _step(tiny, stage1, x, y)
        assert exporter.global_step == 1
        stage2 = torch.optim.Adam(tiny.parameters(), lr=0.01)
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
            for _ in range(2):
                _step(tiny, stage2, x, y)
        warned = [r for r in caplog.records if "does not watch" in r.getMessage()]
        assert len(warned) == 1 and "set_optimizers" in warned[0].getMessage()
        assert exporter.global_step == 2  # the two passes piled up in one step
        exporter.set_optimizers(stage2)
        assert exporter.optimizers == (stage2,) and exporter.optimizer is stage2
        got.clear()
        for step in range(3):
            before = _params(tiny)
            _step(tiny, stage2, x, y)
            after = _params(tiny)
            assert exporter.global_step == 3 + step
            for name in before:
                layer, attr = name.rsplit(".", 1)
                kind = "weight_updates" if attr == "weight" else "bias_updates"
                update = [d for k, kk, s, d in got if (k, kk, s) == (kind, layer, 3 + step)]
                assert len(update) == 1
                torch.testing.assert_close(update[0], after[name] - before[name])
    assert len([r for r in caplog.records if "does not watch" in r.getMessage()]) == 1


class _Stepper(torch.optim.Optimizer):
    """An optimizer that steps another (accelerate's AcceleratedOptimizer, Lookahead)."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        super().__init__([p for g in inner.param_groups for p in g["params"]], {})

    def step(self, closure=None):  # type: ignore[override]
        return self.inner.step(closure)


def test_set_optimizers_validates_and_a_wrapped_inner_optimizer_is_not_warned_about(
    tiny, batch, caplog
) -> None:
    x, y = batch
    wrapped = _Stepper(torch.optim.SGD(tiny.parameters(), lr=0.1))
    bus = MessageBus()
    _record(bus, _UPDATES)
    with ik.Exporter(tiny, wrapped, bus) as exporter:
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
            for _ in range(2):
                _step(tiny, wrapped, x, y)
        assert exporter.global_step == 1
        assert not [r for r in caplog.records if "does not watch" in r.getMessage()]
        with pytest.raises(ValueError, match=r"kinds \['bias_updates', 'weight_updates'\]"):
            exporter.set_optimizers(None)
        with pytest.raises(ValueError, match="Expected `optimizer`"):
            exporter.set_optimizers("sgd")  # type: ignore[arg-type]
        assert exporter.optimizers == (wrapped,)  # nothing changed
    with pytest.raises(RuntimeError, match="after close"):
        exporter.set_optimizers(wrapped)


def test_a_half_precision_layers_update_is_the_exact_change_in_float32() -> None:
    """bfloat16 weights: the update is ``after - before`` exactly (float32 holds it), not that
    difference rounded to bfloat16."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)).to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)  # large steps: weights cross zero
    bus = MessageBus()
    got = _record(bus, ["weight_updates"])
    x = torch.randn(32, 8, dtype=torch.bfloat16)
    y = torch.randint(0, 3, (32,))
    with ik.Exporter(model, opt, bus):
        before = _params(model)
        _step(model, opt, x, y)
        after = _params(model)
    rounded = 0
    for layer in ("0", "1"):
        exact = after[f"{layer}.weight"].float() - before[f"{layer}.weight"].float()
        update = _only(got, "weight_updates", layer)
        assert update.dtype == torch.float32
        torch.testing.assert_close(update, exact, rtol=0, atol=0)
        rounded += int((exact.to(torch.bfloat16).float() != exact).sum())
    assert rounded > 0  # the test can tell: bfloat16 would have rounded some updates


def test_an_optimizer_stepping_twice_in_a_step_publishes_each_update_and_warns(caplog) -> None:
    """A critic stepped three times per generator step: the step ends when both stepped, so
    it holds three critic updates, each the real change of its own step, and one warning says
    that the step's weights pair with the first only."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"g": torch.nn.Linear(2, 2), "d": torch.nn.Linear(2, 1)})
    d_opt = torch.optim.SGD(model["d"].parameters(), lr=0.1)
    g_opt = torch.optim.SGD(model["g"].parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["weight_updates"])
    changes = []
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.step_hooks"):
        with ik.Exporter(model, [d_opt, g_opt], bus) as exporter:
            for _ in range(3):
                d_opt.zero_grad()
                model["d"](model["g"](torch.randn(4, 2)).detach()).mean().backward()
                before = model["d"].weight.detach().clone()
                d_opt.step()
                changes.append(model["d"].weight.detach() - before)
            g_opt.zero_grad()
            (-model["d"](model["g"](torch.randn(4, 2))).mean()).backward()
            g_opt.step()
            assert exporter.global_step == 0  # one step
    published = [d for k, key, _, d in got if key == "d"]
    assert len(published) == 3
    for update, change in zip(published, changes):
        torch.testing.assert_close(update, change)
    warned = [r for r in caplog.records if "stepped again" in r.getMessage()]
    assert len(warned) == 1 and "first update" in warned[0].getMessage()


def test_a_gradient_penalty_publishes_each_backwards_layer_gradient_and_warns(caplog) -> None:
    """WGAN-GP: the critic's output on interpolated inputs takes part in the penalty's
    autograd.grad(create_graph=True) and then in the loss's backward: both gradients are
    published, in that order, each as autograd computes it on a recomputation, with one
    warning."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["layer_gradients"])
    x = torch.randn(5, 3, requires_grad=True)

    def penalty(out: torch.Tensor) -> torch.Tensor:
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return ((grad_x.norm(dim=1) - 1) ** 2).mean()

    # the references, on a recomputation outside the Exporter
    hidden = critic[0](x)
    out = critic[2](critic[1](hidden))
    inner = torch.autograd.grad(out.sum(), hidden, retain_graph=True)[0]
    outer = torch.autograd.grad(penalty(out), hidden)[0]
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.step_hooks"):
        with ik.Exporter(critic, opt, bus):
            opt.zero_grad()
            penalty(critic(x)).backward()
            opt.step()
    first = [d for k, key, _, d in got if key == "0"]
    assert len(first) == 2
    torch.testing.assert_close(first[0], inner)
    torch.testing.assert_close(first[1], outer)
    warned = [r for r in caplog.records if "second backward pass" in r.getMessage()]
    assert len(warned) == 1


def test_no_warning_when_a_wrapper_steps_the_watched_inner_optimizer(tiny, batch, caplog) -> None:
    x, y = batch
    inner = torch.optim.SGD(tiny.parameters(), lr=0.1)
    outer = _Stepper(inner)
    bus = MessageBus()
    got = _record(bus, ["weight_updates"])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(tiny, inner, bus) as exporter:
            for _ in range(3):
                _step(tiny, outer, x, y)
            assert exporter.global_step == 2
    assert sorted({s for *_, s, _ in got}) == [0, 1, 2]  # every step measured
    assert not [r for r in caplog.records if "does not watch" in r.getMessage()]


def _out_of_memory() -> torch.Tensor:
    """A closure that fails as an out-of-memory error does (a loop may skip the batch)."""
    raise torch.OutOfMemoryError("simulated")


def test_a_watched_step_that_raised_does_not_silence_the_unwatched_warning(
    tiny, batch, caplog
) -> None:
    x, y = batch
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(tiny, opt, MessageBus()):
            with pytest.raises(torch.OutOfMemoryError):
                opt.step(_out_of_memory)  # the loop skips this batch
            stage2 = torch.optim.Adam(tiny.parameters())
            for _ in range(2):
                _step(tiny, stage2, x, y)
    assert len([r for r in caplog.records if "does not watch" in r.getMessage()]) == 1


class _Sharpness(torch.optim.Optimizer):
    """A SAM-style optimizer: its step runs the closure, then steps its base optimizer."""

    def __init__(self, params, base: type[torch.optim.Optimizer], **kwargs) -> None:
        super().__init__(params, {})
        self.base = base(self.param_groups, **kwargs)

    def step(self, closure=None):  # type: ignore[override]
        loss = closure()
        self.base.step()
        return loss


def test_no_warning_when_a_watched_optimizer_steps_its_base_after_its_closure(
    tiny, batch, caplog
) -> None:
    x, y = batch
    opt = _Sharpness(tiny.parameters(), torch.optim.SGD, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(tiny(x), y)
        loss.backward()
        return loss

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(tiny, opt, MessageBus()) as exporter:
            for _ in range(2):
                opt.step(closure)
            assert exporter.global_step == 1
    assert not [r for r in caplog.records if "does not watch" in r.getMessage()]


def test_an_unwatched_step_that_raised_is_warned_about_and_nothing_is_kept(
    tiny, batch, caplog
) -> None:
    x, y = batch
    watched = torch.optim.SGD(tiny.parameters(), lr=0.1)
    other = torch.optim.SGD(tiny.parameters(), lr=0.1)

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        with ik.Exporter(tiny, watched, MessageBus()) as exporter:
            with pytest.raises(torch.OutOfMemoryError):
                other.step(_out_of_memory)
            _step(tiny, watched, x, y)  # the next training pass judges it
            assert exporter._unwatched_running == []
    assert len([r for r in caplog.records if "does not watch" in r.getMessage()]) == 1


def test_an_exporter_collected_without_close_leaves_no_global_hook() -> None:
    import gc

    from torch.optim import optimizer as optim_module

    hooks = (
        optim_module._global_optimizer_pre_hooks,
        optim_module._global_optimizer_post_hooks,
    )
    gc.collect()  # Exporters earlier tests dropped unclosed: collected before the count
    before = [len(h) for h in hooks]
    for _ in range(3):  # a model dropped with its Exporter, never closed
        model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    del model
    gc.collect()
    assert [len(h) for h in hooks] == before


def test_an_exporter_made_or_collected_during_an_optimizer_step_breaks_no_step() -> None:
    """torch runs its global optimizer hooks from an OrderedDict: an Exporter made inside one
    (registering a hook) or collected there without close() (removing one) broke that step
    with "OrderedDict mutated during iteration"; an unwatched optimizer's steps still reach
    the open Exporter."""
    import gc

    from torch.optim.optimizer import register_optimizer_step_post_hook

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = ik.Exporter(model, opt)

    def churn(optimizer, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        other = ik.Exporter(nn.Linear(2, 1))
        other.cycle = other  # type: ignore[attr-defined]  # (collected by gc only)
        del other
        gc.collect()

    handle = register_optimizer_step_post_hook(churn)
    try:
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(4, 2)).sum().backward()
            opt.step()
    finally:
        handle.remove()
    assert kept.global_step == 2  # (0-based: the third step)
    kept.close()
    from ikkuna_tune.exporter import _WATCHING

    assert kept not in _WATCHING


class _GAN(nn.Module):
    """G and D in one model, ``forward(z) = D(G(z))``."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Linear(4, 6)
        self.d = nn.Linear(6, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.d(torch.tanh(self.g(z)))


def test_optimizers_stepping_in_turn_through_the_whole_model_make_one_step() -> None:
    """A GAN's loop through the model's own forward pass: D's step (``model(z)`` scores the
    fakes), then G's (``model(z)`` again). A step ends once every optimizer stepped: one step
    per iteration, holding both optimizers' gradients, each ``param.grad`` as its optimizer
    was about to step (plain PyTorch: a clone before each step). Each optimizer's step had
    been counted as a training step of its own (two per iteration, half of each)."""
    torch.manual_seed(0)
    model = _GAN()
    d_opt = torch.optim.SGD(model.d.parameters(), lr=0.1)
    g_opt = torch.optim.SGD(model.g.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["weight_gradients", "batch_finished"])
    expected = []
    bce = F.binary_cross_entropy_with_logits
    with ik.Exporter(model, [d_opt, g_opt], bus):
        for step in range(4):
            z, real = torch.randn(8, 4), torch.randn(8, 6)
            d_opt.zero_grad()
            fake = bce(model(z), torch.zeros(8, 1))
            (fake + bce(model.d(torch.tanh(real)), torch.ones(8, 1))).backward()
            expected.append(("weight_gradients", "d", step, model.d.weight.grad.clone()))
            d_opt.step()
            g_opt.zero_grad()
            bce(model(z), torch.ones(8, 1)).backward()
            expected.append(("weight_gradients", "g", step, model.g.weight.grad.clone()))
            g_opt.step()
            expected.append(("batch_finished", None, step, None))
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    for (_, _, _, data), (_, _, _, want) in zip(got, expected):
        if want is not None:
            torch.testing.assert_close(data, want)


def test_a_watched_optimizer_that_never_steps_leaves_each_iteration_a_step(caplog) -> None:
    """Of two watched optimizers only the first steps (the second's stage has not come):
    the first iteration waits for it (which optimizers step is not known yet); from the
    first one's second step on, each iteration is a step of its own, with one warning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    used = torch.optim.SGD(model.parameters(), lr=0.1)
    later = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["batch_finished"])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.step_hooks"):
        with ik.Exporter(model, [used, later], bus) as exporter:
            for _ in range(6):
                used.zero_grad()
                model(torch.randn(8, 4)).pow(2).mean().backward()
                used.step()
            assert exporter.global_step == 4  # iterations 1 and 2 are step 0, then one each
    assert [step for _, _, step, _ in got] == [0, 1, 2, 3, 4]  # (the last at close)
    assert sum("stepped again" in r.getMessage() for r in caplog.records) == 1


def test_optimizers_that_stop_stepping_are_left_out_of_the_step_after_a_while(caplog) -> None:
    """Optimizers that stepped on one pass, then only the second (a new stage's optimizer
    watched beside the old one): each iteration stays a step. A GAN's optimizers in turn
    (two passes a step), then only the discriminator: two of its iterations make a step
    until it has stepped again so often with no step of every optimizer
    (_RESTEPS_BEFORE_RELEARN) that the generator looks stopped: then one each, with a
    warning that names it and set_optimizers."""
    from ikkuna_tune.step_hooks import _RESTEPS_BEFORE_RELEARN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    first = torch.optim.SGD(model[0].parameters(), lr=0.01)
    second = torch.optim.SGD(model[1].parameters(), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.step_hooks"):
        with ik.Exporter(model, [first, second]) as exporter:
            for stage, optimizers in ((0, [first, second]), (1, [second])):
                for _ in range(3 if stage == 0 else 5):
                    for opt in optimizers:
                        opt.zero_grad()
                    model(torch.randn(8, 4)).pow(2).mean().backward()
                    for opt in optimizers:
                        opt.step()
            assert exporter.global_step == 3 + 4  # one step an iteration throughout
    assert not any("have not stepped" in r.getMessage() for r in caplog.records)
    model = _GAN()
    d_opt = torch.optim.SGD(model.d.parameters(), lr=0.01)
    g_opt = torch.optim.SGD(model.g.parameters(), lr=0.01)
    alone = 2 * (_RESTEPS_BEFORE_RELEARN + 1) + 4
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.step_hooks"):
        with ik.Exporter(model, [d_opt, g_opt]) as exporter:
            for iteration in range(3 + alone):
                for opt in (d_opt, g_opt) if iteration < 3 else (d_opt,):
                    opt.zero_grad()
                    model(torch.randn(8, 4)).mean().backward()
                    opt.step()
            # 3 GAN steps; then the discriminator's iterations two a step, RESTEPS + 1 times,
            # then the last 4 one each
            assert exporter.global_step == 3 + (_RESTEPS_BEFORE_RELEARN + 1) + 4 - 1
    assert any("[1] have not stepped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("b_first", [False, True], ids=["b-after-a", "b-before-a"])
@pytest.mark.parametrize("phase", [0, 3])
def test_an_optimizer_stepping_every_kth_iteration_on_the_same_pass_holds_no_step_open(
    phase, b_first
):
    """Optimizer A steps after every pass, B (another layer's) after every 4th, on the same
    pass, right after A or right before it: B steps on no pass of its own, so each iteration
    is a step (a loop counter's), past the first iterations before A stepped twice (the
    cycle was not known yet: with B first stepping at iteration 3, iterations 0 and 1 are
    one step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    a = torch.optim.SGD(model[0].parameters(), lr=0.1)
    b = torch.optim.SGD(model[2].parameters(), lr=0.1)
    bus = MessageBus()
    got = _record(bus, ["batch_finished"])
    with ik.Exporter(model, [a, b], bus):
        for iteration in range(12):
            a.zero_grad()
            b.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            order = [b, a] if b_first else [a, b]
            for opt in order:
                if opt is a or iteration % 4 == phase:
                    opt.step()
    steps = [step for _, _, step, _ in got]
    assert steps == list(range(12 if phase == 0 else 11))

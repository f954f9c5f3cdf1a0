"""Copies of an instrumented model (deepcopy, pickle, torch.save) carry none of the Exporter's
hooks: they run, publish nothing, and leave the original Exporter working."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import DATA_KINDS

_KINDS = [*DATA_KINDS, "network_output", "input_data", "loss", "batch_started"]


def _copy(obj: object, how: str) -> object:
    if how == "deepcopy":
        return copy.deepcopy(obj)
    if how == "pickle":
        return pickle.loads(pickle.dumps(obj))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _train_step(model, opt, batch) -> torch.Tensor:
    x, y = batch
    opt.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    opt.step()
    return out


@pytest.mark.parametrize("backend", ["tb", None])
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_of_an_instrumented_model_publish_nothing(
    tiny, batch, tmp_path, backend, how
) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus(log_dir=tmp_path)
    got: list[str] = []
    ik.CallbackSubscriber(_KINDS, lambda m: got.append(m.kind), bus)
    ik.NormSubscriber("weights", message_bus=bus, backend=backend)
    x, _ = batch
    with ik.Exporter(tiny, opt, bus) as exporter:
        _train_step(tiny, opt, batch)
        exporter.freeze("conv")
        model_copy = _copy(tiny, how)
        opt_copy = torch.optim.SGD(model_copy.parameters(), lr=0.1, momentum=0.9)
        opt_copy.load_state_dict(_copy(opt.state_dict(), how))
        with torch.no_grad():  # the same network: the same outputs
            torch.testing.assert_close(model_copy(x), tiny(x))
        got.clear()
        out = _train_step(model_copy, opt_copy, batch)
        assert got == []  # the copy has no live hook: nothing reaches any bus
        # the copy no longer holds the frozen layer in eval mode: that was the Exporter's hook
        model_copy.train()
        assert model_copy.conv.training
        assert not model_copy.conv.weight.requires_grad  # its parameters' state is copied
        got.clear()
        _train_step(tiny, opt, batch)  # the original still publishes
        assert {"weights", "activations", "network_output", "weight_updates"} <= set(got)
        assert out.shape == (x.shape[0], 5)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copy_computes_what_the_original_computes(tiny, batch, tmp_path, how) -> None:
    bus = MessageBus(log_dir=tmp_path)
    got: list[str] = []
    kinds = [k for k in _KINDS if not k.endswith("_updates")]
    ik.CallbackSubscriber(kinds, lambda m: got.append(m.kind), bus)
    ik.NormSubscriber("activations", message_bus=bus)  # a TensorBoard backend on the bus
    x, y = batch
    with ik.Exporter(tiny, message_bus=bus):  # without an optimizer: per-parameter grad hooks
        model_copy = _copy(tiny, how)
        got.clear()
        out_copy = model_copy(x)
        F.cross_entropy(out_copy, y).backward()
        assert got == []
        out = tiny(x)
        F.cross_entropy(out, y).backward()
        assert "weight_gradients" in got and "activations" in got
    torch.testing.assert_close(out_copy, out)
    for (name, p), q in zip(tiny.named_parameters(), model_copy.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    bus.close()


def test_deepcopy_of_the_optimizer_publishes_nothing(tiny, batch) -> None:
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    bus = MessageBus()
    got: list[str] = []
    kinds = ["activations", "weight_updates", "batch_finished"]
    ik.CallbackSubscriber(kinds, lambda m: got.append(m.kind), bus)
    with ik.Exporter(tiny, opt, bus):
        _train_step(tiny, opt, batch)
        model_copy = copy.deepcopy(tiny)
        opt_copy = copy.deepcopy(opt)
        opt_copy.param_groups[0]["params"] = list(model_copy.parameters())
        got.clear()
        _train_step(model_copy, opt_copy, batch)
        assert got == []

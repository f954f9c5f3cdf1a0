from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ikkuna_tune as ik
from ikkuna_tune.backends import (
    NullBackend,
    SummaryEncoder,
    TensorBoardBackend,
    layer_tag,
    safe_tag,
    to_numbers,
    vector_numbers,
)
from ikkuna_tune.bus import MessageBus


class WeightSum(ik.PlotSubscriber):
    def __init__(self, backend: str | None = "tb") -> None:
        super().__init__([ik.Subscription(self, ["weights"])], backend=backend)
        self._add_publication("weights_sum")

    def compute(self, message) -> None:
        self.publish("weights_sum", message.data.sum(), message)


def _train(tiny, batch, bus: MessageBus) -> list[dict[str, torch.Tensor]]:
    """Three SGD steps under an Exporter, then the end of the epoch and of the bus; the weights
    each step started from, by layer."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    weights = []
    with ik.Exporter(tiny, opt, bus) as exporter:
        for _ in range(3):
            weights.append({n: getattr(tiny, n).weight.detach().clone() for n in ("conv", "fc")})
            opt.zero_grad()
            tiny(batch[0]).sum().backward()
            opt.step()
        exporter.epoch_finished()
    bus.close()
    return weights


def test_scalars_reach_tensorboard_event_files(tmp_path, tiny, batch) -> None:
    bus = MessageBus(log_dir=tmp_path / "run")
    WeightSum().attach(bus)
    expected = [w["conv"].sum().item() for w in _train(tiny, batch, bus)]
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"weights_sum/conv", "weights_sum/fc"}
    got = events.Scalars("weights_sum/conv")
    assert [e.step for e in got] == [0, 1, 2]
    assert [e.value for e in got] == pytest.approx(expected, rel=1e-5)


def test_batched_norms_reach_tensorboard_layer_by_layer(tmp_path, tiny, batch) -> None:
    """NormSubscriber gets each step's weights as one batch and hands the backend one vector
    of norms; the event files hold one scalar per layer and step, as for single messages."""
    bus = MessageBus(log_dir=tmp_path / "run")
    ik.NormSubscriber("weights", bus)  # backend 'tb'
    assert bus.takes_batches("weights")
    weights = _train(tiny, batch, bus)
    expected = {name: [w[name].norm().item() for w in weights] for name in ("conv", "fc")}
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"weights_norm2/conv", "weights_norm2/fc"}
    for name, values in expected.items():
        got = events.Scalars(f"weights_norm2/{name}")
        assert [e.step for e in got] == [0, 1, 2]
        assert [e.value for e in got] == pytest.approx(values, rel=1e-5)


def test_a_steps_scalars_are_written_as_one_event(tmp_path) -> None:
    """Everything flushed for one step goes into one event (not one event per value), and
    TensorBoard reads each value back under its own tag."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    backend = TensorBoardBackend(tmp_path)
    tags = [f"norm/{i}" for i in range(50)]
    for step in range(3):
        backend.add_scalars(tags, torch.arange(50.0) + step, step)
        backend.add_scalar("loss", torch.tensor(0.5 * step), step)
    backend.close()
    (path,) = tmp_path.iterdir()
    events = [Event.FromString(record) for record in RawEventFileLoader(str(path)).Load()]
    events = [e for e in events if e.HasField("summary")]
    assert [e.step for e in events] == [0, 1, 2]
    for step, event in enumerate(events):
        values = {v.tag: v.simple_value for v in event.summary.value}
        assert values == {**{t: i + step for i, t in enumerate(tags)}, "loss": 0.5 * step}
    reader = EventAccumulator(str(tmp_path))
    reader.Reload()
    assert [e.value for e in reader.Scalars("norm/7")] == [7.0, 8.0, 9.0]


def test_a_long_epochs_values_are_written_once_the_buffer_is_full(tmp_path, monkeypatch) -> None:
    """Values buffered past FLUSH_AFTER are written as the next one comes, not held until the
    epoch ends (a 5,000-step epoch of a 50-layer model held 440 MB); none is lost or doubled,
    and the histograms' values come back as given."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    import ikkuna_tune.backends as backends

    monkeypatch.setattr(backends, "FLUSH_AFTER", 25)
    backend = TensorBoardBackend(tmp_path)
    (path,) = tmp_path.iterdir()

    def written() -> list[Event]:
        return [Event.FromString(r) for r in RawEventFileLoader(str(path)).Load()]

    tags = [f"norm/{i}" for i in range(10)]
    for step in range(3):  # 11 values a step: the third step's go past 25
        backend.add_scalars(tags, torch.arange(10.0) + step, step)
        backend.add_scalar("loss", torch.tensor(0.5 * step), step)
        if step < 2:
            assert not [e for e in written() if e.HasField("summary")]
    assert [e.step for e in written() if e.HasField("summary")] == [0, 1, 2]
    assert backend._buffered == 1  # the third step's loss, which came after the write
    backend.add_histogram("h", torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.5, 1.0]),
                          torch.tensor([0.0, 1.0, 4.0, 2.5, 2.0]), step=3)  # fmt: skip
    backend.close()
    reader = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    reader.Reload()
    assert [e.value for e in reader.Scalars("norm/7")] == [7.0, 8.0, 9.0]
    assert [e.value for e in reader.Scalars("loss")] == [0.0, 0.5, 1.0]
    (histogram,) = reader.Histograms("h")
    value = histogram.histogram_value
    assert (value.min, value.max, value.num, value.sum, value.sum_squares) == (0, 1, 4, 2.5, 2)
    assert list(value.bucket_limit) == [0.5, 1.0] and list(value.bucket) == [1.0, 3.0]


def test_summary_encoder_writes_the_bytes_protobuf_writes() -> None:
    """Byte for byte protobuf's own serialisation of the same Summary: odd floats (NaN, infinities,
    float32 overflow, -0, subnormals), a tag of 200 characters (a two-byte length), non-ASCII."""
    import numpy as np
    from tensorboardX.proto.summary_pb2 import Summary

    numbers = [0.5, float("nan"), float("inf"), -float("inf"), 1e39, -0.0, 1e-45, 1 / 3, -7.25]
    tags = [f"metric/{i}" for i in range(len(numbers) - 2)] + ["x" * 200, "gewicht/schicht_ü"]
    reference = Summary(
        value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, numbers)]
    ).SerializeToString()
    with np.errstate(over="ignore"):  # 1e39 is an infinity in float32, as protobuf rounds it
        floats = np.array(numbers, dtype=np.float64).astype("<f4")
    encoder = SummaryEncoder()
    assert encoder.encode(tags, floats) == reference
    assert encoder.encode(tags, floats) == reference  # the kept prefixes
    half = len(tags) // 2  # summaries concatenated are one summary (a repeated field)
    joined = encoder.encode(tags[:half], floats[:half]) + encoder.encode(tags[half:], floats[half:])
    assert joined == reference


def test_flushed_values_are_the_float32_of_each_tensor(tmp_path) -> None:
    """float64 and bfloat16 values and plain numbers reach the event file as float32, as
    protobuf would round them."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    backend = TensorBoardBackend(tmp_path)
    values = torch.tensor([1 / 3, 1e-40, 3.0e38 * 2], dtype=torch.float64)
    backend.add_scalars(["a", "b", "c"], values, 0)
    backend.add_scalar("d", torch.tensor(1.7, dtype=torch.bfloat16), 0)
    backend.add_scalar("e", 2.5, 0)
    backend.close()
    (path,) = tmp_path.iterdir()
    (event,) = [
        e
        for e in (Event.FromString(r) for r in RawEventFileLoader(str(path)).Load())
        if e.HasField("summary")
    ]
    got = {v.tag: v.simple_value for v in event.summary.value}
    expected = {t: torch.tensor(v).float().item() for t, v in zip("abc", values.tolist())}
    expected |= {"d": torch.tensor(1.7, dtype=torch.bfloat16).item(), "e": 2.5}
    assert got == expected
    assert vector_numbers([(("a",), values, 0)]) == [values.tolist()]


def test_no_backend_draws_nothing(tmp_path) -> None:
    bus = MessageBus(log_dir=tmp_path)
    WeightSum(backend=None).attach(bus)
    bus.close()
    assert list(tmp_path.iterdir()) == []


def test_bad_backend_and_plot_config() -> None:
    with pytest.raises(ValueError, match="`backend` to be one of"):
        WeightSum(backend="matplotlib")
    with pytest.raises(ValueError, match="Unknown plot_config keys"):
        ik.PlotSubscriber([], plot_config={"colour": 1})


def test_safe_tag_and_numbers() -> None:
    assert safe_tag("weights_norm2", "features.0 (conv)") == "weights_norm2/features.0__conv_"
    assert safe_tag("loss", None) == "loss"
    items = [("a", torch.tensor(1.5), 0), ("b", 2, 0), ("c", torch.tensor([3.0]), 0)]
    assert to_numbers(items) == [1.5, 2.0, 3.0]


def test_to_numbers_of_mixed_dtypes_and_shapes_in_one_transfer(monkeypatch) -> None:
    """Every value as ``float(value)`` gives it (the exact value), in order, whatever mix of
    dtypes and single-element shapes, with one read back to the host."""
    g = torch.Generator().manual_seed(0)
    values = [
        torch.rand((), generator=g),
        torch.tensor(True),
        torch.tensor(2**40 + 3, dtype=torch.int64),
        torch.tensor(0.1, dtype=torch.float64),
        torch.tensor([0.3], dtype=torch.float16),
        torch.tensor([[0.7]], dtype=torch.bfloat16),
        torch.rand((), generator=g, requires_grad=True) * 2,  # part of a graph
        7,
        torch.tensor(float("nan")),
        torch.rand((), generator=g),
    ]
    expected = [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values]
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t) or tolist(t))
    got = to_numbers([(str(i), v, 0) for i, v in enumerate(values)])
    assert len(reads) == 1
    assert got[:8] == expected[:8] and math.isnan(got[8]) and got[9] == expected[9]
    assert all(type(number) is float for number in got)


def test_copying_a_tensorboard_backend_says_what_cannot_be_copied(tmp_path) -> None:
    bus = MessageBus(log_dir=tmp_path / "run")
    attached = WeightSum()
    attached.attach(bus)
    for copier in (copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match=r"Cannot copy or pickle a TensorBoardBackend .*run"):
            copier(attached)
    template = WeightSum()  # a subscriber not yet attached has no backend: it copies
    assert copy.deepcopy(template).backend_name == "tb"
    bus.close()


def test_event_files_opened_in_the_same_second_as_tunes_keep_their_own_names(tmp_path) -> None:
    # Tune's TBXLoggerCallback opens its own event file in the trial directory; names are
    # <time in seconds>.<host>, so without a suffix of our own both got the same name
    from tensorboardX import SummaryWriter

    from ikkuna_tune.backends import EVENT_FILE_SUFFIX, TensorBoardBackend

    tunes = SummaryWriter(str(tmp_path))
    ours = TensorBoardBackend(tmp_path)
    ours.add_scalar("x", 1.0, 0)
    ours.flush()
    ours.close()
    tunes.close()
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents*"))
    assert len(names) == 2
    assert sum(name.endswith(EVENT_FILE_SUFFIX) for name in names) == 1


def test_a_bus_that_does_not_draw_writes_no_event_file(tmp_path, tiny, batch) -> None:
    """The ranks of a data-parallel job other than 0 compute as rank 0 does but draw nothing."""
    bus = MessageBus(log_dir=tmp_path / "run", draw=False)
    norms = ik.NormSubscriber("weights", bus)  # backend 'tb'
    _train(tiny, batch, bus)
    assert isinstance(norms.backend, NullBackend)
    assert not (tmp_path / "run").exists()


def test_layers_whose_names_give_one_tag_get_tags_of_their_own(tmp_path) -> None:
    """'enc 1' and 'enc_1' both read 'enc_1' as a tag. 'enc_1' keeps it and 'enc 1' gets a
    suffix from its name alone, whichever layer is drawn first (the first drawn had taken the
    plain tag, so a run, restore or subscriber drawing them in another order put one layer's
    values on the other's curve); names in other scripts are kept as they are."""
    names = ["enc 1", "enc_1", "块"]
    torch.manual_seed(0)
    built = {n: float(layer.weight.detach().norm()) for n, layer in _linears(names).items()}
    # each tag holds its own layer's weights (at the first step, those it was built with)
    expected = {f"weights_norm2/{layer_tag('layers.' + n)}": norm for n, norm in built.items()}
    assert layer_tag("layers.enc 1").startswith("layers.enc_1-")
    assert layer_tag("layers.enc_1") == "layers.enc_1" and layer_tag("layers.块") == "layers.块"
    for order, folder in ((names, "a"), (names[::-1], "b")):
        torch.manual_seed(0)
        tags = _tags_of_layers(tmp_path / folder, _linears(names), order)
        assert tags == pytest.approx(expected, abs=1e-6)


def _linears(names: list[str]) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({name: torch.nn.Linear(2, 2) for name in names})


def _tags_of_layers(tmp_path, layers: torch.nn.ModuleDict, drawn: list[str]) -> dict[str, float]:
    """Train a model of ``layers`` (called in the order ``drawn``) two steps with weight norms
    drawn to TensorBoard; each scalar tag's first value."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for name in drawn:
                x = self.layers[name](x)
            return x

    net = Net()
    bus = MessageBus(log_dir=tmp_path)
    ik.NormSubscriber("weights", bus)
    ik.HistogramSubscriber("weights", bus)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with ik.Exporter(net, opt, bus) as exporter:
        for _ in range(2):
            opt.zero_grad()
            net(torch.randn(4, 2)).sum().backward()
            opt.step()
        exporter.epoch_finished()
    bus.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert len(events.Tags()["histograms"]) == len(layers)
    assert all(len(events.Scalars(tag)) == 2 for tag in events.Tags()["scalars"])  # 1 a step
    return {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}


def test_a_flush_that_fails_loses_no_file_and_writes_no_histogram_twice(tmp_path, monkeypatch):
    """A full disk: the flush raises, the histograms it held are not written again by the next
    flush (TensorBoard showed two for one step), and closing closes the file all the same."""
    backend = TensorBoardBackend(tmp_path)
    stats = torch.tensor([0.0, 1.0, 4.0, 2.0, 1.5])
    backend.add_histogram("h", torch.ones(2), torch.tensor([0.0, 0.5, 1.0]), stats, step=0)
    write = backend.events.add_summary
    monkeypatch.setattr(backend.events, "add_summary", _raises_once(write))
    with pytest.raises(OSError, match="disk full"):
        backend.flush()
    backend.add_scalar("x", 1.0, 1)
    monkeypatch.setattr(backend.events, "add_summary", _raises_always)
    with pytest.raises(OSError, match="disk full"):
        backend.close()
    assert backend.events.closed
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert events.Tags()["histograms"] == []  # lost with the failed write, never doubled


def _raises_once(write):
    calls = []

    def add_summary(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise OSError("disk full")
        return write(*args, **kwargs)

    return add_summary


def _raises_always(*args, **kwargs):
    raise OSError("disk full")


def test_validation_values_are_drawn_apart_from_trainings(tmp_path) -> None:
    # a LossSubscriber per tag and an activations norm for all tags: a validation pass's values
    # go under '<kind>/eval[/<layer>]', never into training's curves
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus(log_dir=tmp_path / "run")
    ik.LossSubscriber(bus)
    ik.LossSubscriber(bus, tag="eval")
    ik.NormSubscriber("activations", bus, tag=None)
    ik.HistogramSubscriber("activations", bus, tag=None, bins=4)
    expected: dict[str, list[float]] = {"loss": [], "loss/eval": [], "fc": [], "fc/eval": []}
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(3):
            x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            expected["loss"].append(loss.item())
            expected["fc"].append(out.norm().item())
            loss.backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
                out = model(x)
                expected["loss/eval"].append(loss_fn(out, y).item())
                expected["fc/eval"].append(out.norm().item())
            model.train()
    bus.close()
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"histograms": 0})
    events.Reload()
    for tag in ("loss", "loss/eval"):
        assert [e.value for e in events.Scalars(tag)] == pytest.approx(expected[tag], rel=1e-6)
    for tag, key in (("activations_norm2/2", "fc"), ("activations_norm2/eval/2", "fc/eval")):
        assert [e.value for e in events.Scalars(tag)] == pytest.approx(expected[key], rel=1e-5)
    histograms = set(events.Tags()["histograms"])
    assert {"activations_histogram/2", "activations_histogram/eval/2"} <= histograms
    for tag in ("activations_histogram/2", "activations_histogram/eval/2"):
        assert [e.histogram_value.num for e in events.Histograms(tag)] == [10.0] * 3


def test_values_buffered_before_a_restart_are_dropped_not_drawn(tmp_path) -> None:
    """A restored trial's subscribers measure when attached (their first probes), before the
    restore sets the step counters: those values, at step 0, were drawn beside the restored
    run's steps (a point at step 0 holding the checkpoint's value). The restart mark drops
    them; what comes after it is drawn at its steps."""
    backend = TensorBoardBackend(tmp_path)
    backend.add_scalar("norm/fc", torch.tensor(204.0), 0)  # measured when attached
    backend.add_histogram("h", torch.tensor([1, 2]), torch.tensor([0.0, 1.0, 2.0]),
                          torch.tensor([0.0, 2.0, 3.0, 3.0, 5.0]), 0)  # fmt: skip
    backend.restart_at(10)
    backend.add_scalar("norm/fc", torch.tensor(206.0), 10)
    backend.add_scalar("norm/fc", torch.tensor(209.0), 11)
    backend.close()
    reader = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    reader.Reload()
    assert [(e.step, e.value) for e in reader.Scalars("norm/fc")] == [(10, 206.0), (11, 209.0)]
    assert reader.Tags()["histograms"] == []


def test_a_kind_published_several_times_in_one_step_draws_its_last_value(tmp_path) -> None:
    """A validation pass of three batches counts no step: its loss and norms came three times
    at one step, three points where a report holds the last. TensorBoard gets one point per
    tag and step, the last, as Tune does."""
    backend = TensorBoardBackend(tmp_path)
    for step in (2, 5):
        for batch in range(3):
            backend.add_scalar("loss/eval", torch.tensor(step + batch / 10), step)
            backend.add_scalars(["norm/a", "norm/b"], torch.tensor([batch, -batch]) * 1.0, step)
            edges = torch.tensor([0.0, 1.0, 2.0])
            stats = torch.tensor([0.0, 2.0, batch + 1.0, 1.0, 1.0])
            backend.add_histogram("h", torch.tensor([batch, 1]), edges, stats, step)
        backend.add_scalar("acc", torch.tensor(0.5), step)
    backend.close()
    reader = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    reader.Reload()
    read = {t: [(e.step, e.value) for e in reader.Scalars(t)] for t in reader.Tags()["scalars"]}
    assert read == {
        "loss/eval": [(2, pytest.approx(2.2)), (5, pytest.approx(5.2))],
        "norm/a": [(2, 2.0), (5, 2.0)],
        "norm/b": [(2, -2.0), (5, -2.0)],
        "acc": [(2, 0.5), (5, 0.5)],
    }
    drawn = [(e.step, e.histogram_value.num) for e in reader.Histograms("h")]
    assert drawn == [(2, 3.0), (5, 3.0)]

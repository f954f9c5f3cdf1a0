"""The overhead benchmark's turn-taking gives the messages of one uninterrupted run."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

import ikkuna_tune as ik
from experiments import bench_overhead as bo
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.examples.models import DeepCNN


def _args() -> argparse.Namespace:
    return argparse.Namespace(model="cnn", depth=2, width=4, layers=0, steps_per_epoch=11)


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(n)
    ]


def _record(bus: MessageBus, topic: str) -> list[tuple[int, str, float]]:
    seen: list[tuple[int, str, float]] = []
    ik.CallbackSubscriber(
        [topic], lambda m: seen.append((m.global_step, m.key, float(m.data))), bus
    )
    return seen


def test_turns_publish_what_one_uninterrupted_run_publishes(tmp_path) -> None:
    torch.manual_seed(0)
    init = DeepCNN(2, width=4).state_dict()
    batches = _batches(33)

    model = bo.Model(init, _args(), torch.device("cpu"))
    run = bo.Run("sub16", model, _args(), str(tmp_path))
    assert run.bus is not None
    turns = {t: _record(run.bus, t) for t in ("weights_norm2", "weight_updates_weights_ratio")}
    for start in range(0, len(batches), 3):  # turns of 3 steps, hooks removed in between
        run.begin()
        for x, y in batches[start : start + 3]:
            run.step(x, y)
        run.end()
    run.close()

    # reference: the same training with one Exporter attached throughout
    net = DeepCNN(2, width=4)
    net.load_state_dict(init)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    bus = MessageBus("reference", log_dir=str(tmp_path / "reference"))
    bo.standard_set(bus, 16)
    whole = {t: _record(bus, t) for t in turns}
    with ik.Exporter(net, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for step, (x, y) in enumerate(batches, start=1):
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
            if step % 11 == 0:
                exporter.epoch_finished()
    bus.close()

    for topic, got in turns.items():
        assert [s for s, _, _ in got] == [s for s, _, _ in whole[topic]]
        assert {s for s, _, _ in got} == {0, 16, 32}
        for (_, key, value), (_, ref_key, ref_value) in zip(got, whole[topic], strict=True):
            assert key == ref_key
            assert abs(value - ref_value) <= 1e-6 * max(1.0, abs(ref_value))


def test_main_reports_the_ratios() -> None:
    # two timed steps per run are too few to tell stalls apart: nothing counts as stalled
    result = bo.main(
        ["--steps", "6", "--block", "2", "--steps-per-epoch", "3", "--width", "4",
         "--stall-factor", "1000"]
    )  # fmt: skip
    assert result["timed_steps"] == 2  # blocks 2 and 3, without the first step of each turn
    assert result["layers"] == 4
    for key in ("ratio", "ratio_subsample16", "ratio_all_steps", "ratio_subsample16_all_steps"):
        assert result[key] > 0
    assert set(result["median_ms"]) == {"plain", "every", "sub16"}
    assert all(0 <= f < 1 for f in result["stalled_fraction"].values())


def test_stalled_steps_are_left_out_of_the_medians(tmp_path) -> None:
    # 20 steps of 10 ms per run; plain also has 3 host stalls of 0.5 s, sub16 1.5% more per step
    wall = {"plain": [0.010] * 20 + [0.5] * 3, "every": [0.011] * 20, "sub16": [0.01015] * 20}
    threshold = bo.stall_threshold(wall, 3.0)
    assert threshold == 3.0 * 0.010  # 3x the 10th percentile of the pooled steps
    # the stalls are left out, an instrumented step's extra cost is not
    assert [t for t in wall["plain"] if t > threshold] == [0.5] * 3
    assert all(t <= threshold for t in wall["every"] + wall["sub16"])
    path = tmp_path / "times.json"
    result = bo.main(
        ["--steps", "6", "--block", "2", "--steps-per-epoch", "3", "--width", "4",
         "--times-out", str(path), "--stall-factor", "1000"]
    )  # fmt: skip
    times = json.loads(path.read_text())
    pooled = sorted(t for v in times["wall"].values() for t in v)
    assert result["stall_threshold_ms"] == round(
        1e3 * 1000 * pooled[int(0.1 * (len(pooled) - 1))], 3
    )
    for variant, steps in times["wall"].items():
        stalled = sum(t > result["stall_threshold_ms"] / 1e3 for t in steps) / len(steps)
        assert result["stalled_fraction"][variant] == pytest.approx(stalled, abs=1e-4)


def test_control_run_has_no_exporter(tmp_path) -> None:
    # the A/A control: the sub16 slot trains plainly, so nothing is published for it
    args = argparse.Namespace(**vars(_args()), steps=4, block=2, control=True)
    model_init = DeepCNN(2, width=4).state_dict()
    wall, _ = bo.time_runs(model_init, _batches(4), args, torch.device("cpu"), str(tmp_path))
    assert len(wall["sub16"]) == len(wall["plain"]) == 1
    assert not (tmp_path / "sub16").exists() and (tmp_path / "every").exists()


def test_a_turn_needs_a_timed_step() -> None:
    with pytest.raises(SystemExit):
        bo.main(["--steps", "6", "--block", "1"])


def test_a_run_with_every_step_stalled_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(bo, "stall_threshold", lambda wall, factor: 0.0)
    with pytest.raises(SystemExit, match="timed steps of the 'plain' run were stalled"):
        bo.main(["--steps", "6", "--block", "2", "--steps-per-epoch", "3", "--width", "4"])


def test_per_turn_timing_gives_each_step_of_a_turn_the_turns_mean(tmp_path) -> None:
    path = tmp_path / "times.json"
    result = bo.main(
        ["--steps", "8", "--block", "4", "--steps-per-epoch", "3", "--width", "4",
         "--sync", "turn", "--times-out", str(path), "--stall-factor", "1000"]
    )  # fmt: skip
    assert result["sync"] == "turn"
    assert result["timed_steps"] == 3  # block 2, without the turn's first step
    times = json.loads(path.read_text())
    for variant in ("plain", "every", "sub16"):
        steps = times["wall"][variant]
        assert len(steps) == 3 and len(set(steps)) == 1  # one turn, one mean
        assert result["median_ms"][variant] == round(1e3 * steps[0], 4)


def test_launch_counts_grow_with_what_is_published(tmp_path) -> None:
    # on the CPU, aten operator calls per step: the standard set every step adds the norms,
    # the update's copy and subtraction, the ratio and the accuracy; subsampling adds less
    args = argparse.Namespace(**vars(_args()), steps=25, block=5, control=False)
    init = DeepCNN(2, width=4).state_dict()
    device = torch.device("cpu")
    counts = {
        v: bo.count_launches(v, init, _batches(25), args, device, str(tmp_path), steps=16)
        for v in ("plain", "every", "sub16")
    }
    total = {v: sum(c.values()) for v, c in counts.items()}
    assert total["plain"] < total["sub16"] < total["every"]
    extra = counts["every"] - counts["plain"]
    assert extra["aten::_foreach_norm"] == 3  # weights, gradients, updates: one call each
    assert extra["aten::max"] == 1  # train accuracy: the maximum and its index
    assert counts["plain"]["aten::_foreach_norm"] == 0


def test_the_floor_computes_what_the_standard_set_publishes(tmp_path) -> None:
    # the hand-written set (--floor) does the same arithmetic as ikkuna_tune's standard set:
    # the same values, step by step, from the same initial model and batches
    torch.manual_seed(0)
    init = DeepCNN(2, width=4).state_dict()
    batches = _batches(12)
    topics = (
        "weights_norm2",
        "weight_gradients_norm2",
        "weight_updates_weights_ratio",
        "loss",
        "train_accuracy",
    )

    every = bo.Run("every", bo.Model(init, _args(), torch.device("cpu")), _args(), str(tmp_path))
    assert every.bus is not None
    seen = {t: _record(every.bus, t) for t in topics}
    floor = bo.Run(bo.FLOOR, bo.Model(init, _args(), torch.device("cpu")), _args(), str(tmp_path))
    assert floor.bus is None and floor.floor is not None
    for run in (every, floor):
        run.begin()
        for x, y in batches:
            run.step(x, y)
        run.close()

    reported = floor.floor.reported
    assert len(reported) == len(batches)  # read at the epoch end (step 11) and at close
    layers = [name for name, m in ik.exporter.select_modules(DeepCNN(2, width=4)).items()]
    for column, topic in enumerate(topics[:3]):
        got = seen[topic]
        assert len(got) == len(batches) * len(layers)
        for step in range(len(batches)):
            ours = {key: value for s, key, value in got if s == step}
            assert list(ours) == layers
            assert list(ours.values()) == pytest.approx(reported[step][column], rel=1e-5)
    for column, topic in ((3, "loss"), (4, "train_accuracy")):
        values = [value for _, _, value in seen[topic]]
        assert values == pytest.approx([r[column] for r in reported], rel=1e-6)


def test_main_times_the_floor_when_asked() -> None:
    result = bo.main(
        ["--steps", "8", "--block", "2", "--steps-per-epoch", "3", "--width", "4",
         "--stall-factor", "1000", "--floor"]
    )  # fmt: skip
    assert set(result["median_ms"]) == {"plain", "every", "sub16", bo.FLOOR}
    medians = result["median_ms"]
    assert result["ratio_floor"] == pytest.approx(medians[bo.FLOOR] / medians["plain"], abs=1e-3)
    assert result["overhead_ms_floor"] == pytest.approx(
        medians[bo.FLOOR] - medians["plain"], abs=1e-3
    )

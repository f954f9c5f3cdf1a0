"""The event file writer against protobuf's own serialisation and TensorBoard's own reader."""

from __future__ import annotations

import threading
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

from ikkuna_tune.event_file import EventFile, encode_event


def _summary(*pairs: tuple[str, float]) -> bytes:
    values = [Summary.Value(tag=tag, simple_value=value) for tag, value in pairs]
    return Summary(value=values).SerializeToString()


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40, -1, -(2**40)])
@pytest.mark.parametrize("pairs", [(), (("loss", 0.5),), (("a", 1.0), ("b/c", -2.5))])
def test_encoded_events_are_protobufs_own(step: int, pairs) -> None:
    summary = _summary(*pairs)
    expected = Event(wall_time=1234.5678, step=step)
    expected.summary.ParseFromString(summary)
    data = encode_event(summary, step, 1234.5678)
    assert Event.FromString(data) == expected
    assert data == expected.SerializeToString()


def test_tensorboard_reads_what_was_flushed_before_the_file_is_closed(tmp_path) -> None:
    """A flush is enough for a reader (TensorBoard, a copy of the trial directory); writing
    starts no thread."""
    threads = threading.active_count()
    events = EventFile(tmp_path, ".test")
    assert events.path.name.startswith("events.out.tfevents.") and events.path.suffix == ".test"
    for step in range(3):
        events.add_summary(_summary(("loss", 1.0 / (step + 1)), ("acc", 0.25 * step)), step)
    events.flush()
    assert threading.active_count() == threads
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [
        (0, 1.0),
        (1, 0.5),
        (2, pytest.approx(1 / 3)),
    ]
    assert [e.value for e in accumulator.Scalars("acc")] == [0.0, 0.25, 0.5]
    events.close()
    events.close()  # a second close does nothing
    assert events.closed


def test_two_files_opened_in_one_second_keep_both_writers_events(tmp_path) -> None:
    first, second = EventFile(tmp_path, ".test"), EventFile(tmp_path, ".test")
    assert first.path != second.path and second.path.name.endswith(".test")
    first.add_summary(_summary(("a", 1.0)), 0)
    second.add_summary(_summary(("b", 2.0)), 0)
    first.close()
    second.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["a", "b"]


def test_a_file_opened_in_the_same_second_sorts_after_the_first(tmp_path, monkeypatch) -> None:
    # a restored attempt that opens its file in the second the failed one opened its own: it
    # sorts after it (it was named <second>.<host>.2.ikkuna_tune, before <second>.<host>.ikk...),
    # so that TensorBoard reads it last and its restart mark drops the superseded steps
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)

    def loss(events: EventFile, step: int, value: float) -> None:
        summary = Summary(value=[Summary.Value(tag="loss", simple_value=value)])
        events.add_summary(summary.SerializeToString(), step=step, wall_time=1.0)

    failed = EventFile(tmp_path, ".ikkuna_tune")
    for step in range(4):
        loss(failed, step, 1.0)
    failed.close()
    restored = EventFile(tmp_path, ".ikkuna_tune")
    restored.add_session_start(2, wall_time=2.0)
    loss(restored, 2, 0.5)
    restored.close()
    assert sorted(tmp_path.iterdir()) == [failed.path, restored.path]
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [
        (0, 1.0),
        (1, 1.0),
        (2, 0.5),
    ]


def test_runs_started_in_one_second_without_a_log_dir_get_a_folder_each(
    tmp_path, monkeypatch
) -> None:
    """Two trials called one after the other without Ray, within one second, each wrote to the
    default ``runs/<date>_<host>``: one folder, one TensorBoard run with both trials' steps
    interleaved. Each gets a folder of its own, and reads back only its own values."""
    import datetime as real_datetime

    import ikkuna_tune.event_file as event_file

    class FixedClock(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return real_datetime.datetime(2026, 12, 2, 9, 27, 57)

    monkeypatch.setattr(event_file, "datetime", FixedClock)
    monkeypatch.chdir(tmp_path)
    files = [EventFile() for _ in range(2)]
    for value, events in enumerate(files):
        events.add_summary(
            Summary(value=[Summary.Value(tag="loss", simple_value=value)]).SerializeToString(), 0
        )
        events.close()
    assert files[0].log_dir != files[1].log_dir
    assert files[1].log_dir.name == files[0].log_dir.name + "_2"
    for value, events in enumerate(files):
        reader = EventAccumulator(str(events.log_dir))
        reader.Reload()
        assert [(e.step, e.value) for e in reader.Scalars("loss")] == [(0, float(value))]

"""One TensorBoard event file, written in the calling thread.

An event file is a sequence of records (TFRecord framing: the length, its masked CRC-32C, the
data, its masked CRC-32C), each a serialised ``Event`` protobuf; the first holds the file
version. tensorboardX's ``SummaryWriter`` hands every event to a background thread through a
multiprocessing queue, and each flush ends in an ``fsync``. Here the events are written where
they are made: :meth:`EventFile.flush` hands the file's buffer to the operating system (enough
for TensorBoard, and for a copy of the trial directory, to read it), and only
:meth:`EventFile.close` forces it to the disk. No thread competes with training for the
interpreter, and an epoch end costs no disk round trip (an ``fsync`` takes milliseconds on a
local disk and far more on a network file system).

The events written are those protobuf's own serialisation gives (tested), encoded by hand for
the common case (a non-negative step): a ``Summary`` already encoded is wrapped without being
parsed again.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from datetime import datetime
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from ikkuna_tune.backends import _varint

__all__ = ["EventFile", "encode_event"]

_FILE_VERSION = "brain.Event:2"


def encode_event(summary: bytes, step: int, wall_time: float) -> bytes:
    """The bytes of ``Event(wall_time=wall_time, step=step, summary=Summary.FromString(summary))``.

    Examples:
        >>> from tensorboardX.proto.summary_pb2 import Summary
        >>> summary = Summary(value=[Summary.Value(tag="loss", simple_value=0.5)])
        >>> data = encode_event(summary.SerializeToString(), step=3, wall_time=1.5)
        >>> event = Event.FromString(data)
        >>> event.step, event.wall_time, event.summary.value[0].tag
        (3, 1.5, 'loss')
    """
    if step < 0:  # a negative int64 is ten bytes of two's complement: protobuf's own
        event = Event(wall_time=wall_time, step=step)
        event.summary.ParseFromString(summary)
        return event.SerializeToString()
    head = b"\x09" + struct.pack("<d", wall_time)
    if step:  # proto3 leaves a zero out
        head += b"\x10" + _varint(step)
    if not summary:
        return head + b"\x2a\x00"
    return head + b"\x2a" + _varint(len(summary)) + summary


def _new_run(folder: Path) -> Path:
    """``folder``, made now, or where it exists ``folder_2``, ``folder_3`` ...: a run of its own.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     [_new_run(Path(root) / "run").name for _ in range(3)]
        ['run', 'run_2', 'run_3']
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = folder, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = folder.with_name(f"{folder.name}_{number}")


class EventFile:
    """Appends events to a new event file in ``log_dir``, in the calling thread.

    The file is named as tensorboardX names its own,
    ``events.out.tfevents.<seconds>.<host><suffix>``; when a file of that name exists (another
    writer opened one in the same second), the next free second names it: it never truncates
    the other's file, and it sorts after it, as TensorBoard, which reads a folder's files in
    name order, must read a restored attempt's file after the failed one's. ``log_dir`` None is
    tensorboardX's default, ``runs/<date and time>_<host>``, a new folder: where one of that
    name exists (another run started in the same second), ``_2``, ``_3`` ... is added.

    Examples:
        >>> import tempfile
        >>> from tensorboardX.proto.summary_pb2 import Summary
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> with tempfile.TemporaryDirectory() as log_dir:
        ...     events = EventFile(log_dir, ".example")
        ...     summary = Summary(value=[Summary.Value(tag="loss", simple_value=0.5)])
        ...     events.add_summary(summary.SerializeToString(), step=2)
        ...     events.close()
        ...     accumulator = EventAccumulator(log_dir)
        ...     _ = accumulator.Reload()
        ...     [(e.step, e.value) for e in accumulator.Scalars("loss")]
        [(2, 0.5)]
    """

    def __init__(self, log_dir: str | Path | None = None, suffix: str = "") -> None:
        host = socket.gethostname()
        if log_dir is None:
            self.log_dir = _new_run(
                Path("runs") / f"{datetime.now().strftime('%b%d_%H-%M-%S')}_{host}"
            )
        else:
            self.log_dir = Path(log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        seconds = int(now)
        while True:  # never over another writer's file of the same second
            self.path = self.log_dir / f"events.out.tfevents.{seconds}.{host}{suffix}"
            try:
                self._file = open(self.path, "xb")  # open until close()
                break
            except FileExistsError:
                seconds += 1  # named after it: TensorBoard reads a folder's files in name order
        version = _FILE_VERSION.encode()
        self._write(b"\x09" + struct.pack("<d", now) + b"\x1a" + _varint(len(version)) + version)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._file.closed

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )

    def add_summary(self, summary: bytes, step: int, wall_time: float | None = None) -> None:
        """Append an event holding ``summary`` (an encoded ``Summary``) at ``step``."""
        wall_time = time.time() if wall_time is None else wall_time
        self._write(encode_event(summary, step, wall_time))

    def add_session_start(self, step: int, wall_time: float | None = None) -> None:
        """Append a ``SessionLog.START`` event at ``step``: TensorBoard then drops the events
        at ``step`` and after that it read before, from any file of this directory (those of
        an attempt that failed after its last checkpoint, written again by the restart).

        Examples:
            >>> import tempfile
            >>> from tensorboardX.proto.summary_pb2 import Summary
            >>> from tensorboard.backend.event_processing.event_accumulator import (
            ...     EventAccumulator,
            ... )
            >>> def loss(events, step, value):
            ...     summary = Summary(value=[Summary.Value(tag="loss", simple_value=value)])
            ...     events.add_summary(summary.SerializeToString(), step=step)
            >>> with tempfile.TemporaryDirectory() as log_dir:
            ...     first = EventFile(log_dir)
            ...     for step in range(4):  # the attempt that failed, after a checkpoint at 1
            ...         loss(first, step, 1.0)
            ...     first.close()
            ...     restart = EventFile(log_dir)  # the restored attempt goes on from step 2
            ...     restart.add_session_start(2)
            ...     loss(restart, 2, 0.5)
            ...     restart.close()
            ...     accumulator = EventAccumulator(log_dir)
            ...     _ = accumulator.Reload()
            ...     [(e.step, e.value) for e in accumulator.Scalars("loss")]
            [(0, 1.0), (1, 1.0), (2, 0.5)]
        """
        wall_time = time.time() if wall_time is None else wall_time
        event = Event(
            wall_time=wall_time, step=step, session_log=SessionLog(status=SessionLog.START)
        )
        self._write(event.SerializeToString())

    def flush(self) -> None:
        """Hand what was written to the operating system (no ``fsync``)."""
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flush, force the file to the disk and close it; later calls do nothing."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:  # a file system without fsync (some network and virtual ones)
                pass
        finally:
            self._file.close()

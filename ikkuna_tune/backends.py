"""Where subscribers draw their metrics: TensorBoard event files or nowhere.

Backends buffer tensors on their device and turn them into Python numbers only in
:meth:`Backend.flush` (one host synchronisation per flush, not one per value), which the Exporter
calls at the end of every epoch and the Tune integration at every report.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, NoReturn, SupportsIndex, TypeVar

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "EVENT_DIR",
    "EVENT_FILE_SUFFIX",
    "Backend",
    "NullBackend",
    "SummaryEncoder",
    "TensorBoardBackend",
    "layer_tag",
    "safe_tag",
    "to_numbers",
    "vector_numbers",
]

logger = logging.getLogger(__name__)

#: Names accepted wherever a backend is chosen.
BACKENDS = ("tb", None)

_UNSAFE = re.compile(r"[^\w./-]")


def safe_tag(*parts: str | None) -> str:
    """Join ``parts`` with '/' into a TensorBoard tag, replacing by ``_`` every character but
    letters and digits (of any script), ``_``, ``.``, ``/`` and ``-``.

    Examples:
        >>> safe_tag("weights norm", None, "features.0"), safe_tag("block_é")
        ('weights_norm/features.0', 'block_é')
    """
    return "/".join(_UNSAFE.sub("_", p) for p in parts if p)


def layer_tag(name: str) -> str:
    """A layer's part of a TensorBoard tag that depends on ``name`` alone: the name itself
    where :func:`safe_tag` keeps it, else its safe form and 6 hex digits of its SHA-1, so that
    two names with one safe form (``'enc 1'``, ``'enc_1'``) never share a curve, whichever is
    drawn first, in any run or subscriber.

    Examples:
        >>> layer_tag("features.0"), layer_tag("enc 1"), layer_tag("enc_1")
        ('features.0', 'enc_1-85cb66', 'enc_1')
    """
    if not _UNSAFE.search(name):
        return name
    return f"{_UNSAFE.sub('_', name)}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def to_numbers(items: list[tuple[str, Any, int]]) -> list[float]:
    """The values of ``(tag, value, step)`` items as floats, one host transfer per device.

    Examples:
        >>> to_numbers([("loss", torch.tensor(0.5), 0), ("lr", 2, 0)])
        [0.5, 2.0]
    """
    numbers: list[float] = [0.0] * len(items)
    # tensors of one device, dtype and shape kind are stacked as they are: one operation for
    # the group, not one conversion per value (a report of a deep network holds thousands)
    by_device: dict[torch.device, dict[tuple[torch.dtype, bool], list[int]]] = {}
    for i, (_, value, _) in enumerate(items):
        if isinstance(value, torch.Tensor):
            group = (value.dtype, value.dim() == 0)
            by_device.setdefault(value.device, {}).setdefault(group, []).append(i)
        else:
            numbers[i] = float(value)
    with torch.no_grad():
        for groups in by_device.values():
            parts, order = [], []
            for (_, scalar), indices in groups.items():
                values = [items[i][1] for i in indices]
                stacked = torch.stack(values if scalar else [v.reshape(()) for v in values])
                parts.append(stacked.double())  # exact for every float type up to float64
                order += indices
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            for i, number in zip(order, flat.tolist()):  # one host transfer per device
                numbers[i] = number
    return numbers


def vector_numbers(items: Sequence[tuple[Any, torch.Tensor, int]]) -> list[list[float]]:
    """The values of ``(tags, vector, step)`` items as lists of floats, one host transfer per
    device.

    Examples:
        >>> vector_numbers([(("a", "b"), torch.tensor([0.5, 2.0]), 0), (("c",), torch.ones(1), 1)])
        [[0.5, 2.0], [1.0]]
    """
    return [list(map(float, v)) for v in _host_vectors(items, torch.float64)]


def _host_vectors(
    items: Sequence[tuple[Any, torch.Tensor, int]], dtype: torch.dtype
) -> list[np.ndarray]:
    """The vectors of ``(tags, vector, step)`` items as NumPy arrays of ``dtype``, one host
    transfer per device (the values are rounded to ``dtype`` on the device, as a C cast)."""
    arrays: list[np.ndarray | None] = [None] * len(items)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, vector, _) in enumerate(items):
        by_device.setdefault(vector.device, []).append(i)
    for indices in by_device.values():
        # through float64 first: a float32 vector is exact there, a float64 one is rounded once
        flat = torch.cat([items[i][1].detach().reshape(-1).double() for i in indices])
        host = flat.to(dtype).cpu().numpy()
        start = 0
        for i in indices:
            size = items[i][1].numel()
            arrays[i] = host[start : start + size]
            start += size
    return arrays  # type: ignore[return-value]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


class SummaryEncoder:
    """A TensorBoard ``Summary`` of scalars, written as protobuf bytes without one Python
    message object per value.

    A scalar is ``Summary.value`` (field 1) holding a ``Value`` of ``tag`` (field 1) and
    ``simple_value`` (field 2, a little-endian float32); everything before the float depends on
    the tag only, so it is encoded once per tag and kept. The bytes are those protobuf's own
    ``Summary(value=[Summary.Value(tag=..., simple_value=...)]).SerializeToString()`` writes
    (tested), at a tenth of a microsecond a value instead of microseconds.

    Examples:
        >>> import numpy as np
        >>> from tensorboardX.proto.summary_pb2 import Summary
        >>> encoder = SummaryEncoder()
        >>> data = encoder.encode(["loss", "acc"], np.array([0.5, 0.25], dtype="<f4"))
        >>> [(v.tag, v.simple_value) for v in Summary.FromString(data).value]
        [('loss', 0.5), ('acc', 0.25)]
    """

    def __init__(self) -> None:
        self._prefixes: dict[str, bytes] = {}

    def prefix(self, tag: str) -> bytes:
        """The bytes of ``tag``'s scalar up to its float."""
        known = self._prefixes.get(tag)
        if known is None:
            name = tag.encode("utf-8")
            value = b"\x0a" + _varint(len(name)) + name + b"\x15"  # tag, then the float's key
            known = self._prefixes[tag] = b"\x0a" + _varint(len(value) + 4) + value
        return known

    def encode(self, tags: Sequence[str], values: np.ndarray) -> bytes:
        """The ``Summary`` of ``values[i]`` under ``tags[i]``; ``values`` a float32 array."""
        floats = np.ascontiguousarray(values, dtype="<f4").tobytes()
        prefix = self.prefix
        return b"".join([prefix(tag) + floats[4 * i : 4 * i + 4] for i, tag in enumerate(tags)])


class Backend:
    """Receives scalars and histograms; the base class draws nothing.

    Examples:
        >>> class PrintingBackend(Backend):
        ...     def add_scalar(self, tag, value, step):
        ...         print(tag, float(value), step)
        >>> PrintingBackend().add_scalar("loss", torch.tensor(0.25), step=3)
        loss 0.25 3
    """

    def add_scalar(self, tag: str, value: torch.Tensor | float, step: int) -> None:
        """Record ``value`` (a 0-d tensor or number) under ``tag`` at ``step``."""

    def add_scalars(self, tags: Sequence[str], values: torch.Tensor, step: int) -> None:
        """Record ``values[i]`` (a 1-D tensor, one value per tag) under ``tags[i]`` at
        ``step``; by default one :meth:`add_scalar` each."""
        for tag, value in zip(tags, values.unbind()):
            self.add_scalar(tag, value, step)

    def add_histogram(
        self, tag: str, counts: torch.Tensor, edges: torch.Tensor, stats: torch.Tensor, step: int
    ) -> None:
        """Record a histogram: bin ``counts``, bin ``edges`` (len(counts) + 1) and
        ``stats = [min, max, count, sum, sum of squares]``, all tensors."""

    def restart_at(self, step: int) -> None:
        """Say that the run goes on from ``step`` after a restore: what an earlier attempt
        recorded at ``step`` and after it is superseded, and what this one has buffered (values
        measured before the restore set the step counters) is dropped."""

    def move_to(self, log_dir: Path) -> None:
        """Write what comes from now on to ``log_dir`` (what is buffered goes where it was)."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self) -> None:
        """Flush and release files."""


class NullBackend(Backend):
    """Draws nothing (``backend=None``); computing never depends on a backend.

    Examples:
        >>> backend = NullBackend()
        >>> backend.add_scalar("loss", 0.5, step=0)  # drawn nowhere
        >>> backend.flush(), isinstance(backend, Backend)
        (None, True)
    """


#: The folder of a Tune trial's directory that its event files go to: a TensorBoard run of
#: their own, so that a restored trial's restart mark (:meth:`Backend.restart_at`) drops only
#: ikkuna_tune's own superseded steps, never Tune's or the user's events, counted otherwise.
EVENT_DIR = "ikkuna_tune"
#: Ends the name of every event file ikkuna_tune writes. Event files are named after the second
#: they were opened and the host; without it, one opened in the same second as Tune's own
#: (``TBXLoggerCallback``, in the same trial directory) had the same name and one replaced the
#: other in storage.
EVENT_FILE_SUFFIX = ".ikkuna_tune"


#: A TensorBoard backend holding more buffered values than this (scalars, vector entries,
#: histogram bins) writes them out as the next one comes (:class:`TensorBoardBackend`).
FLUSH_AFTER = 200_000


_T = TypeVar("_T")


def _last_of_each(items: list[_T], key: Callable[[_T], Hashable]) -> list[_T]:
    """``items`` without those that a later item of the same ``key`` supersedes, in order.

    A kind published several times in one step (the batches of a validation pass, which
    counts no step, or the passes of an accumulated step) gave one TensorBoard step several
    points; a report holds the last, and so does TensorBoard.

    Examples:
        >>> _last_of_each([("loss", 0, 0.7), ("loss", 0, 0.8), ("acc", 0, 0.5)], lambda i: i[:2])
        [('loss', 0, 0.8), ('acc', 0, 0.5)]
    """
    last = {key(item): index for index, item in enumerate(items)}
    if len(last) == len(items):
        return items
    kept = set(last.values())
    return [item for index, item in enumerate(items) if index in kept]


class TensorBoardBackend(Backend):
    """Writes a TensorBoard event file in one run directory, buffering values until flushed.

    Values are written at each flush (an epoch's end, a report) and, so that a long epoch's
    values do not pile up in memory (a step of a 200-layer model buffers hundreds), once more
    than :data:`FLUSH_AFTER` values are buffered; on a GPU that write reads them back, one host
    synchronisation among that many values' steps.

    The file is named ``events.out.tfevents.<time>.<host>.ikkuna_tune`` and written in the
    calling thread (:class:`~ikkuna_tune.event_file.EventFile`): a flush hands it to the
    operating system, a close also forces it to the disk.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as log_dir:
        ...     backend = TensorBoardBackend(log_dir)
        ...     backend.add_scalar("loss", torch.tensor(0.5), step=0)
        ...     backend.close()  # writes the buffered value
        ...     [path.name.endswith(EVENT_FILE_SUFFIX) for path in backend.log_dir.iterdir()]
        [True]
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        from ikkuna_tune.event_file import EventFile

        self.events = EventFile(log_dir, EVENT_FILE_SUFFIX)
        self.log_dir = self.events.log_dir
        self._scalars: list[tuple[str, Any, int]] = []
        self._vectors: list[tuple[Sequence[str], torch.Tensor, int]] = []
        self._histograms: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self._buffered = 0  # values in the three buffers
        self._encoder = SummaryEncoder()

    @property
    def path(self) -> Path:
        """The event file written now."""
        return self.events.path

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        # a copy would write to the same open file (and an open file's own error on pickling
        # does not say where it came from)
        raise TypeError(
            f"Cannot copy or pickle a TensorBoardBackend (it writes to {str(self.log_dir)!r} "
            "through an open event-file writer): copy subscribers before attaching them to a "
            "bus, copy a model through its state_dict(), or use backend=None"
        )

    def add_scalar(self, tag: str, value: torch.Tensor | float, step: int) -> None:
        self._scalars.append((tag, value, step))
        self._count(1)

    def add_scalars(self, tags: Sequence[str], values: torch.Tensor, step: int) -> None:
        self._vectors.append((tags, values.detach(), step))
        self._count(len(tags))

    def add_histogram(
        self, tag: str, counts: torch.Tensor, edges: torch.Tensor, stats: torch.Tensor, step: int
    ) -> None:
        self._histograms.append((tag, counts, edges, stats, step))
        self._count(counts.numel())

    def _count(self, values: int) -> None:
        self._buffered += values
        if self._buffered > FLUSH_AFTER:
            self.flush()

    def move_to(self, log_dir: Path) -> None:
        from ikkuna_tune.event_file import EventFile

        self.close()
        self.events = EventFile(log_dir, EVENT_FILE_SUFFIX)
        self.log_dir = self.events.log_dir

    def restart_at(self, step: int) -> None:
        # what is buffered was measured before the restore (when subscribers were attached,
        # their first probes), on step counters not yet restored: drawn at step 0 beside the
        # restored run's steps, it was no value of that run; dropped, not written
        self._vectors, self._scalars, self._histograms = [], [], []
        self._buffered = 0
        self.events.add_session_start(step)

    def flush(self) -> None:
        # one event per step holding all of that step's scalars, encoded by SummaryEncoder:
        # tensorboardX's add_scalar passes every value through its writer thread's queue on its
        # own (tens of microseconds a value), and a protobuf message per value costs microseconds
        # (hundreds of layers x a few metrics x every step of an epoch add up to seconds)
        from tensorboardX.summary import histogram_raw

        # the scalars as vectors of one: every value of the flush in one transfer per device
        items = self._vectors + [
            (
                (tag,),
                value.detach().reshape(1)
                if isinstance(value, torch.Tensor)
                else torch.tensor([float(value)], dtype=torch.float64),
                step,
            )
            for tag, value, step in self._scalars
        ]
        self._vectors, self._scalars = [], []
        self._buffered = 0
        items = _last_of_each(items, lambda item: (item[2], tuple(item[0])))
        by_step: dict[int, list[bytes]] = {}
        if items:
            encode = self._encoder.encode
            for (tags, _, step), values in zip(items, _host_vectors(items, torch.float32)):
                by_step.setdefault(step, []).append(encode(tags, values))
        events = self.events
        for step in sorted(by_step):
            events.add_summary(b"".join(by_step[step]), step)
        histograms, self._histograms = self._histograms, []  # taken, also if writing fails
        histograms = _last_of_each(histograms, lambda item: (item[4], item[0]))
        # every histogram's stats, edges and counts in one transfer per device
        parts = [
            (tag, part, step)
            for tag, counts, edges, stats, step in histograms
            for part in (stats, edges[1:], counts)
        ]
        host = _host_vectors(parts, torch.float64)
        for i, (tag, _, _, _, step) in enumerate(histograms):
            stats_, limits, bucket_counts = host[3 * i : 3 * i + 3]
            lo, hi, num, total, squares = stats_.tolist()
            summary = histogram_raw(
                tag,
                min=lo,
                max=hi,
                num=int(num),
                sum=total,
                sum_squares=squares,
                bucket_limits=limits.tolist(),
                bucket_counts=bucket_counts.tolist(),
            )
            events.add_summary(summary.SerializeToString(), step)
        events.flush()

    def close(self) -> None:
        if self.events.closed:
            return
        try:
            self.flush()
        finally:  # the file is closed whatever writing it failed on (a full disk, say)
            self.events.close()

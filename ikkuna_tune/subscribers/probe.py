"""Draw a fixed probe set from a data set, and record each layer's activations on it as a matrix
(one row per probe point, or per kept position of a convolution; one column per feature)."""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ikkuna_tune.checks import check_int_or_epoch
from ikkuna_tune.messages import DEFAULT_TAG, Message, MessageBundle, ModuleMessage, check_tag
from ikkuna_tune.subscribers._device import device_of, own_random_state
from ikkuna_tune.subscribers.base import CallbackSubscriber

if TYPE_CHECKING:
    from ikkuna_tune.model_access import ModelAccess

__all__ = [
    "ActivationRecorder",
    "Trigger",
    "activation_layout",
    "check_probe_args",
    "draw_probe",
]

logger = logging.getLogger(__name__)

#: A layer's fixed subset of rows: sorted on the host, and by device and batch (its first probe
#: point, its points), where that batch's rows go in the buffer and which of its positions they
#: are
_Rows = tuple[
    np.ndarray, dict[tuple[torch.device, int, int], tuple[int, int, torch.Tensor, torch.Tensor]]
]


def draw_probe(dataset: object, n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """``n`` distinct indices drawn with ``seed`` (sorted) and the inputs at them, stacked.

    ``dataset`` is a map-style torch ``Dataset`` whose items are inputs or ``(input, ...)``
    tuples, or a tensor of inputs (first dimension: samples).

    Examples:
        >>> import torch
        >>> data = torch.arange(10.0).reshape(5, 2)
        >>> indices, inputs = draw_probe(data, 3, seed=0)
        >>> bool((inputs == data[torch.from_numpy(indices)]).all()), inputs.shape
        (True, torch.Size([3, 2]))
        >>> draw_probe(data, 6, seed=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `n` to be at most the data set size 5 but got 6
    """
    if not isinstance(dataset, (Dataset, torch.Tensor)):
        raise ValueError(
            "Expected `dataset` to be a torch Dataset or a tensor of inputs but got "
            f"{type(dataset).__name__}"
        )
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"Expected `dataset` to have a length (a map-style Dataset) but got {dataset!r}"
        ) from None
    if n > size:
        raise ValueError(f"Expected `n` to be at most the data set size {size} but got {n}")
    indices = np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))
    if isinstance(dataset, torch.Tensor):
        return indices, dataset[torch.from_numpy(indices)].detach().clone()
    items = []
    for i in indices.tolist():
        item = dataset[i]
        paired = isinstance(item, (tuple, list))
        if paired:
            item = item[0]
        if not isinstance(item, torch.Tensor):
            got = f"{'the input of ' if paired else ''}item {i} is {type(item).__name__}"
            raise ValueError(
                "Expected data set items to be tensors or (input, ...) tuples whose input is "
                f"one tensor but {got}; for a model of several inputs (token ids and an "
                "attention mask, say), stack them into one tensor and pass a `forward_fn` that "
                "splits it and calls the model"
            )
        items.append(item)
    return indices, torch.stack(items)


#: Layers whose outputs hold the features in dimension 1 (channels): (N, C, *S).
_CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,  # batch and instance norms
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
#: Layers whose outputs hold the features in the last dimension: (N, *S, F).
_FEATURES_LAST: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)


def _feature_count(layer: nn.Module) -> int | None:
    """The number of features a layer of a features-last kind puts last, where it says."""
    if isinstance(layer, (nn.Linear, nn.Bilinear)):
        return int(layer.out_features)
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        return int(layer.embedding_dim)
    if isinstance(layer, nn.MultiheadAttention):
        return int(layer.embed_dim)
    if isinstance(layer, nn.RNNBase):
        size = layer.proj_size or layer.hidden_size
        return int(size) * (2 if layer.bidirectional else 1)
    normalized = getattr(layer, "normalized_shape", None)  # layer and RMS norms
    if isinstance(normalized, tuple) and len(normalized) == 1:
        return int(normalized[0])
    return None


def _normalizes_a_map(layer: nn.Module, shape: tuple[int, ...] | None) -> bool:
    """Whether ``layer`` is a layer norm over a feature map's channels and positions (or its
    positions), ``nn.LayerNorm([C, H, W])`` after a convolution: its channels are in dimension 1
    as a convolution's. Told by a ``normalized_shape`` of 3 or more dims, or of 2 on an output
    of 4 or more dims (a norm over the last two dims of a 3-dim output, tokens by features,
    keeps the features last)."""
    normalized = getattr(layer, "normalized_shape", None)
    if not isinstance(normalized, tuple) or len(normalized) < 2:
        return False
    return len(normalized) >= 3 or (shape is not None and len(shape) >= 4)


def _own_forward(layer: nn.Module) -> bool:
    """Whether ``layer``'s class, outside torch, subclasses a features-last kind with a
    ``forward`` of its own (a ``LayerNorm2d`` that permutes the channels to the end and back
    around the layer norm); torch's own subclasses (``nn.LSTM`` of ``nn.RNNBase``) do not count."""
    if type(layer).__module__.split(".")[0] == "torch":
        return False
    kind = next(k for k in _FEATURES_LAST if isinstance(layer, k))
    return type(layer).forward is not kind.forward


def _channels_back_in_front(
    module: nn.Module, layer: nn.Module, shape: tuple[int, ...] | None, time_first: bool
) -> bool:
    """Whether ``module``'s output, whose layout ``layer`` (a features-last kind: the module
    itself or its last such part) decides, holds the layer's features in dimension 1 rather
    than last: the layer's own output has another size last, or its class is a norm with a
    ``forward`` of its own (``LayerNorm2d``, also when the width equals the channels), or the
    module is a block that also convolves (a ConvNeXt block ending in a Linear). A part of a
    block of sequence layers (an attention's relative position embedding, a mixture's router)
    does not decide: its width in dimension 1 is a sequence length that happens to match."""
    count = _feature_count(layer)
    if shape is None or len(shape) < 3 or time_first or count is None or shape[1] != count:
        return False
    if layer is module:
        # features in both places (32 channels of a 32-wide map): a norm of the user's own
        # forward is a LayerNorm2d; a Linear of the user's own (LoRA, say) keeps them last
        norm = hasattr(layer, "normalized_shape")
        return shape[-1] != count or (norm and _own_forward(layer))
    convolves = any(isinstance(m, _CHANNELS_FIRST) for m in module.modules())
    return convolves and shape[-1] != count


def activation_layout(
    module: nn.Module,
    shape: tuple[int, ...] | None = None,
    preceding: tuple[tuple[int, ...], bool] | None = None,
) -> tuple[bool, bool]:
    """Where the features and the probe points lie in ``module``'s output of 3 or more dims:
    ``(features_last, time_first)``.

    Features are last for linear maps, layer norms, embeddings, recurrent and attention layers
    (the token or time step is a position), and in dimension 1 for convolutions and batch,
    instance and group norms (the channels). A module of neither kind (a block of layers chosen
    with ``depth=``) takes the layout of its last registered layer of a known kind. A module
    with none (a layer of the user's own) is read from its output's ``shape`` where its
    ``weight`` tells: a weight of 1 or 2 dimensions whose first size is the output's last (a
    custom RMS norm or linear map) puts the features last, any other weight (a convolution's
    kernel) and no weight in dimension 1. Where that size is also the output's dimension 1 (a
    sequence as long as its features are wide), the output tells nothing: the layer takes the
    layout of the layer that ran before it with an output of the same shape (``preceding``: that
    shape and whether its features were last; a norm after a Linear, a scale after a Conv1d),
    and without one, features last unless the weight is a ``(C, 1)`` column (a per-channel
    scale of a ``(N, C, L)`` output). A features-last layer whose output's ``shape`` has
    its feature count in dimension 1 holds them there when its own output has another size
    last, when it is a norm of the user's own ``forward`` (a ``LayerNorm2d``, which permutes
    the channels to the end and back), or when the module is a block that also convolves (a
    ConvNeXt block ending in a Linear). A layer norm over a feature map (``nn.LayerNorm([C, H,
    W])``, or over ``[H, W]`` of a 4-dim output) holds its channels in dimension 1.
    ``time_first``: the module was built with ``batch_first=False`` (an RNN's or attention's
    (S, N, F) output), so the probe points are in dimension 1.

    Examples:
        >>> from torch import nn
        >>> activation_layout(nn.Conv2d(1, 2, 3)), activation_layout(nn.LayerNorm(4))
        ((False, False), (True, False))
        >>> activation_layout(nn.LSTM(4, 8)), activation_layout(nn.LSTM(4, 8, batch_first=True))
        ((True, True), (True, False))
        >>> block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        >>> activation_layout(block)  # as its last layer of a known kind, the batch norm
        (False, False)
        >>> scale = nn.Module()
        >>> scale.weight = nn.Parameter(torch.ones(4))  # (N, T, 4) -> (N, T, 4)
        >>> activation_layout(scale, (2, 3, 4)), activation_layout(scale, (2, 4, 3))
        ((True, False), (False, False))
        >>> square = (2, 4, 4)  # 4 positions of 4 features, or 4 channels of length 4
        >>> activation_layout(scale, square), activation_layout(scale, square, (square, False))
        ((True, False), (False, False))
        >>> norm2d = nn.LayerNorm(16)  # applied to channels-last, output (N, 16, 6, 6)
        >>> activation_layout(norm2d, (2, 16, 6, 6)), activation_layout(norm2d, (2, 6, 6, 16))
        ((False, False), (True, False))
        >>> activation_layout(nn.LayerNorm([16, 6, 6]), (2, 16, 6, 6))  # over a whole map
        (False, False)
    """
    candidates = [module, *reversed(list(module.modules())[1:])]
    time_first = next(
        (
            c.batch_first is False
            for c in candidates
            if isinstance(getattr(c, "batch_first", None), bool)
        ),
        False,
    )
    for candidate in candidates:
        if isinstance(candidate, _FEATURES_LAST):
            if _normalizes_a_map(candidate, shape):
                return False, time_first
            if _channels_back_in_front(module, candidate, shape, time_first):
                return False, time_first
            return True, time_first
        if isinstance(candidate, _CHANNELS_FIRST):
            return False, time_first
    weight = getattr(module, "weight", None)
    if (
        shape is None
        or len(shape) < 3
        or not isinstance(weight, torch.Tensor)
        or weight.dim() not in (1, 2)
        or shape[-1] != weight.shape[0]
    ):
        return False, time_first
    if shape[1 if not time_first else 2] != weight.shape[0]:
        return True, time_first
    # features as many as the positions in dimension 1: the output cannot tell
    if preceding is not None and tuple(preceding[0]) == tuple(shape):
        return preceding[1], time_first
    return not (weight.dim() == 2 and weight.shape[1] == 1), time_first


@functools.lru_cache(maxsize=64)
def _direction(width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed random direction of ``width`` entries (seeded by ``width``), made once per
    device and dtype: its copy from the host to a GPU would synchronise the two at every probe
    batch."""
    direction = torch.randn(width, generator=torch.Generator().manual_seed(width))
    return direction.to(device=device, dtype=dtype)


class _OutputVariation:
    """Whether a model's output depends on its input, over the probe's batches: some point's
    output differs from the first point's (of its batch, or of the first batch when the
    shapes match) by more than rounding. Each point's output is reduced to its projection on a
    fixed random direction (no copy of a batch's output is made: a language model's output can
    be most of the probe's memory); a difference counts above 16 of the dtype's eps times the
    largest finite output norm, and a non-finite one never counts. A network whose units all
    died gives the same output for every input.

    Examples:
        >>> variation = _OutputVariation()
        >>> variation.add(torch.tensor([[1.0, 2.0], [1.0, 2.0]]), 2)
        >>> bool(variation.result())
        False
        >>> variation.add(torch.tensor([[1.0, 2.5]]), 1)  # compared with the first point
        >>> bool(variation.result())
        True
        >>> _OutputVariation().result() is None  # nothing compared: not told
        True
    """

    def __init__(self) -> None:
        self._first: tuple[int, torch.Tensor] | None = None  # width, first point's projection
        self._varies: torch.Tensor | None = None

    def add(self, output: torch.Tensor, points: int) -> None:
        out = output.detach()
        if out.dim() >= 1 and out.shape[0] == points:
            rows = out.reshape(points, -1)
        elif out.dim() >= 2 and out.shape[1] == points:  # time-first (S, N, ...)
            rows = out.transpose(0, 1).reshape(points, -1)
        else:
            return
        if not rows.is_floating_point():
            rows = rows.double()
        width = rows.shape[1]
        direction = _direction(width, rows.device, rows.dtype)
        projection = rows @ direction
        norms = torch.nan_to_num(torch.linalg.vector_norm(rows, dim=1), nan=0.0, posinf=0.0)
        eps = torch.finfo(rows.dtype).eps
        tolerance = 16 * eps * torch.linalg.vector_norm(direction) * norms.amax()
        found = []
        if points > 1:
            found.append(((projection - projection[:1]).abs() > tolerance).any())
        if self._first is None:
            self._first = (width, projection[:1].clone())
        elif self._first[0] == width and self._first[1].dtype == projection.dtype:
            found.append(((projection - self._first[1]).abs() > tolerance).any())
        for differs in found:
            self._varies = differs if self._varies is None else self._varies | differs

    def result(self) -> torch.Tensor | None:
        """A 0-d bool tensor (read with the checkpoint's numbers), or None if no two points'
        outputs could be compared."""
        return self._varies


class ActivationRecorder:
    r"""Pushes a probe set through a model and keeps each tracked layer's activation matrix.

    The probe set goes through in batches of ``batch_size`` inside :meth:`ModelAccess.probe`
    (eval mode, ``torch.no_grad()``, messages tagged ``probe_tag``, step counters untouched); the
    layers' activations arrive as ``activations`` messages under ``probe_tag``.

    A layer output of shape (N, F) gives N rows. A convolution output (N, C, \*S) is folded to
    (N * prod(S), C): every spatial position of every probe point is a data point and the
    channels are the features. Linear, normalisation, embedding, recurrent and attention layers
    hold their features last, (N, \*S, F), and are folded to (N * prod(S), F), every token or
    time step a data point; a ``batch_first=False`` layer's (S, N, F) output is read as such
    (:func:`activation_layout`). A layer without that flag whose output has the batch's size in
    both dimension 0 and 1 (an embedding fed time-first tokens as long as the batch) is read
    with the points in dimension 0: the same rows in another order, and with ``max_positions``
    another fixed subset of them; a probe batch of another size than the sequences avoids it.
    When that gives more than ``max_positions`` rows, a fixed random subset of
    ``max_positions`` rows is used (the same at every recording, seeded by
    ``seed`` and the layer's name). Only the kept rows of each batch are copied into a
    per-layer buffer, so memory peaks at one batch of activations plus the buffers.

    Args:
        inputs: the probe inputs (first dimension: probe points).
        batch_size: probe points per forward pass.
        max_positions: at most this many rows per folded (convolution) layer.
        seed: seeds, with each layer's name, the subsets of rows.
        probe_tag: tag of the probe passes' messages.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 2))
        >>> recorder = ActivationRecorder(torch.randn(5, 1, 4, 4), 2, max_positions=12, seed=0)
        >>> with Exporter(model) as exporter:
        ...     recorded = recorder.record(exporter)
        >>> {name: tuple(matrix.shape) for name, matrix in recorded.items()}
        {'0': (12, 4), '2': (5, 2)}
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        batch_size: int,
        max_positions: int,
        seed: int,
        probe_tag: str = "svcca",
    ) -> None:
        self.inputs = inputs
        self.n = len(inputs)
        self.batch_size = batch_size
        self.max_positions = max_positions
        self.seed = seed
        self.probe_tag = probe_tag
        self._selections: dict[tuple[str, int], _Rows] = {}
        self._layouts: dict[str, tuple[bool, bool]] = {}
        #: the output shape and features-last flag of the layer stored last in the running
        #: probe batch (what a layer whose own output cannot tell its layout takes)
        self._preceding: tuple[tuple[int, ...], bool] | None = None
        self._misfits: set[str] = set()  # layers whose outputs do not hold the probe points
        self._skipped: set[str] = set()  # such layers in the running recording
        self._uncalled: set[str] = set()  # layers no probe pass called (warned about once)
        #: per layer, the positions per probe point of the running recording's first batch
        self._positions: dict[str, int] = {}
        self._uneven: set[str] = set()  # layers whose positions varied (warned about once)
        #: whether the model's output differed between probe points in the last recording (a
        #: 0-d bool tensor, read with the checkpoint's numbers; None: no tensor output)
        self.output_varies: torch.Tensor | None = None

    def record(
        self,
        access: ModelAccess,
        forward: Callable[[torch.Tensor], Any] | None = None,
        device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """Push the probe set through the model now; the activation matrices by layer name.

        ``forward`` maps a batch of inputs to outputs (by default the model of ``access``; it
        must run that model, whose hooks record the activations); the inputs go to ``device``
        (by default the device of the model's parameters). Nothing is published.
        """
        if device is None:
            device = device_of(access.model)
        buffers: dict[str, torch.Tensor] = {}
        position = [0, 0]  # the running batch: index of its first probe point, its size
        self._skipped = set()
        self._positions = {}

        seen: set[str] = set()

        def keep_rows(message: Message) -> None:
            if isinstance(message, ModuleMessage):
                seen.add(message.module.name)
                self._store(buffers, message, position[0], position[1])

        recorder = CallbackSubscriber(["activations"], keep_rows, tag=self.probe_tag)
        recorder.attach(access.message_bus)
        try:
            # on a copy of the random state: a stochastic layer (noise in eval mode too) draws
            # from it, which would otherwise change the training run's later draws
            with own_random_state(device), access.probe(self.probe_tag) as model:
                run = model if forward is None else forward
                varies = _OutputVariation()
                for start in range(0, self.n, self.batch_size):
                    batch = self.inputs[start : start + self.batch_size]
                    position[0], position[1] = start, len(batch)
                    self._preceding = None
                    if device is not None:
                        batch = batch.to(device, non_blocking=True)
                    output = run(batch)
                    try:
                        varies.add(access.output_tensor(output), len(batch))
                    except ValueError:  # no tensor output (or output_fn's): not told
                        pass
                    del output  # one batch's output at a time
                self.output_varies = varies.result()
        finally:
            recorder.detach()
        unseen = [name for name in access.modules if name not in seen | self._uncalled]
        if unseen and seen:
            self._uncalled.update(unseen)
            logger.warning(
                "Layers %s were not called in the probe's forward passes (a layer used in "
                "training only, or one whose parameters another module uses directly, as "
                "nn.MultiheadAttention does its out_proj's): no self-similarity for them, "
                "and where they act cannot be seen, so while they train they count as upstream "
                "of every layer (an attention module's out_proj: of the layers inside and "
                "after that module), which automatic freezing leaves trainable (track their "
                "parents with Exporter(depth=...), or freeze them yourself)",
                unseen,
            )
        return buffers

    def _store(
        self, buffers: dict[str, torch.Tensor], message: ModuleMessage, start: int, points: int
    ) -> None:
        """Copy the kept rows of one batch's activations of one layer into its buffer (the
        batch: ``points`` probe points from ``start`` on)."""
        name = message.module.name
        if name in self._skipped:
            return
        data = message.data
        if not isinstance(data, torch.Tensor) or data.dim() == 0:
            if name not in buffers:
                logger.warning("Layer %r does not output a tensor; no self-similarity", name)
            return
        act = data.detach()
        layout = self._layouts.get(name)
        shape = tuple(act.shape)
        if layout is None:
            module = message.module.module
            layout = self._layouts[name] = activation_layout(module, shape, self._preceding)
        features_last, time_first = layout
        self._preceding = (shape, features_last)
        # the probe points are in dimension 0, or 1 for a time-first (S, N, F) output; the
        # layer's own batch_first flag decides where both dimensions could be
        in_first = act.dim() >= 1 and act.shape[0] == points
        in_second = act.dim() >= 3 and act.shape[1] == points
        if in_second and (time_first or not in_first):
            act = act.transpose(0, 1)  # (S, N, F) -> (N, S, F)
        elif not in_first:
            self._skipped.add(name)
            buffers.pop(name, None)  # rows of earlier batches alone would be a partial matrix
            if name not in self._misfits:
                self._misfits.add(name)
                logger.warning(
                    "Layer %r: no dimension of its output of shape %s holds the %d probe points "
                    "of the batch; no self-similarity",
                    name,
                    tuple(act.shape),
                    points,
                )
            return
        batch = act.shape[0]
        if act.dim() == 1:
            act = act.unsqueeze(1)
        if act.dim() == 2:
            rows, total, features = act, self.n, act.shape[1]
            lo, hi = start, start + batch
        else:
            if features_last:
                act = act.reshape(batch, -1, act.shape[-1])  # (B, P, F)
            else:
                act = act.reshape(batch, act.shape[1], -1)  # (B, C, P): channels first
            positions = act.shape[1] if features_last else act.shape[2]
            features = act.shape[2] if features_last else act.shape[1]
            if self._positions.setdefault(name, positions) != positions:
                # one matrix needs as many rows per point in every batch: batches of sequences
                # cut to their own longest would leave rows unwritten or overrun the buffer
                self._skipped.add(name)
                buffers.pop(name, None)
                if name not in self._uneven:
                    self._uneven.add(name)
                    logger.warning(
                        "Layer %r: its output holds %d positions per probe point in one probe "
                        "batch and %d in another (sequences cut to each batch's longest?); no "
                        "self-similarity: give the probe inputs of one length",
                        name,
                        self._positions[name],
                        positions,
                    )
                return
            total = self.n * positions
            chosen = self._selection(name, total)
            if chosen is None:
                flat = act if features_last else act.transpose(1, 2)
                rows = flat.reshape(batch * positions, features)
                lo, hi = start * positions, (start + batch) * positions
            else:
                rows_host, by_batch = chosen
                key = (act.device, start, batch)
                found = by_batch.get(key)
                if found is None:  # the same batches come at every recording: worked out once
                    lo = int(np.searchsorted(rows_host, start * positions))
                    hi = int(np.searchsorted(rows_host, (start + batch) * positions))
                    local = rows_host[lo:hi] - start * positions
                    sample = torch.from_numpy(local // positions).to(act.device)
                    place = torch.from_numpy(local % positions).to(act.device)
                    found = by_batch[key] = (lo, hi, sample, place)
                lo, hi, sample, place = found
                rows = act[sample, place] if features_last else act[sample, :, place]
                total = len(rows_host)
        buffer = buffers.get(name)
        if buffer is None:
            buffer = buffers[name] = act.new_empty((total, features))
        buffer[lo:hi] = rows

    def _selection(self, name: str, total: int) -> _Rows | None:
        """The fixed sorted subset of ``max_positions`` of ``total`` rows, or None for all."""
        if total <= self.max_positions:
            return None
        key = (name, total)
        if key not in self._selections:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            rows = np.sort(rng.choice(total, size=self.max_positions, replace=False))
            self._selections[key] = (rows, {})
        return self._selections[key]


def check_probe_args(forward_fn: object, probe_tag: object) -> None:
    """Check the arguments of a subscriber that runs the model itself (through the Exporter's
    probe): ``forward_fn`` callable or None, ``probe_tag`` a tag other than the training tag.

    Examples:
        >>> check_probe_args(None, "svcca")  # no error: the arguments are fine
        >>> check_probe_args(print, "default")
        Traceback (most recent call last):
        ...
        ValueError: Expected `probe_tag` to be a tag other than 'default' but got 'default'
    """
    if forward_fn is not None and not callable(forward_fn):
        raise ValueError(f"Expected `forward_fn` to be callable or None but got {forward_fn!r}")
    if isinstance(probe_tag, str) and probe_tag and probe_tag != DEFAULT_TAG:
        check_tag("probe_tag", probe_tag)
    if not isinstance(probe_tag, str) or not probe_tag or probe_tag == DEFAULT_TAG:
        raise ValueError(
            f"Expected `probe_tag` to be a tag other than {DEFAULT_TAG!r} but got {probe_tag!r}"
        )


class Trigger:
    """When a subscriber that runs the model does its work: at every ``epoch_finished``
    (``frequency='epoch'``) or after every ``frequency``-th ``batch_finished``.

    Examples:
        >>> from ikkuna_tune.messages import NetworkMessage
        >>> trigger = Trigger(2)
        >>> trigger.kind
        'batch_finished'
        >>> done = [NetworkMessage("batch_finished", "default", s, s, 0, None) for s in range(4)]
        >>> [trigger.due(message) for message in done]
        [False, True, False, True]
    """

    def __init__(self, frequency: int | str) -> None:
        self.frequency = check_int_or_epoch("frequency", frequency)
        #: the kind to subscribe to
        self.kind = "epoch_finished" if self.frequency == "epoch" else "batch_finished"
        #: ``batch_finished`` messages seen (kept in the subscriber's state)
        self.batches = 0

    def never_reached(self) -> str | None:
        """Why the work has not run although training batches came (fewer than
        ``frequency``), or None.

        Examples:
            >>> trigger = Trigger(100)
            >>> trigger.batches = 28
            >>> trigger.never_reached().split(" (")[0]
            '28 training batches came, fewer than frequency=100'
            >>> Trigger("epoch").never_reached() is None
            True
        """
        if self.kind == "batch_finished" and 0 < self.batches < self.frequency:  # type: ignore[operator]
            return (
                f"{self.batches} training batches came, fewer than frequency={self.frequency} "
                "(frequency='epoch' runs it at every epoch_finished)"
            )
        return None

    def due(self, message: Message | MessageBundle) -> bool:
        """Whether ``message`` (of :attr:`kind`) calls for the work now."""
        if not isinstance(message, Message) or message.kind != self.kind:
            return False
        if self.kind == "batch_finished":
            self.batches += 1
            return self.batches % self.frequency == 0  # type: ignore[operator]
        return True

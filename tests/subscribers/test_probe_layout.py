"""The activation matrices the SVCCA probe records for sequence layers (features last, time
steps as data points) and for batch_first=False layers, against the layers' outputs folded by
hand."""

from __future__ import annotations

import logging

import torch
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.subscribers.probe import ActivationRecorder


class Tagger(nn.Module):
    """Embedding -> LSTM -> LayerNorm -> Linear over every token: (N, T) -> (N, T, 3)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(20, 6)
        self.rnn = nn.LSTM(6, 5, batch_first=batch_first)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # a time-first model takes (T, N) tokens
        h = self.emb(tokens)
        h, _ = self.rnn(h)
        return self.head(self.norm(h))


def _outputs_by_hand(model: Tagger, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output on (N, T) tokens, as (N * T, features) rows: point by point, each
    point's time steps in order (the recorder's row order)."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(len(tokens)):  # one sequence at a time: no layout to get wrong
            x = tokens[i : i + 1] if model.batch_first else tokens[i : i + 1].T
            h = model.emb(x)
            r, _ = model.rnn(h)
            n = model.norm(r)
            y = model.head(n)
            for name, t in (("emb", h), ("rnn", r), ("norm", n), ("head", y)):
                out.setdefault(name, []).append(t.reshape(-1, t.shape[-1]))
    return {name: torch.cat(rows) for name, rows in out.items()}


def _recorded(model: Tagger, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    recorder = ActivationRecorder(tokens, batch_size=3, max_positions=10**6, seed=0)
    forward = model if model.batch_first else (lambda x: model(x.T))
    with ik.Exporter(model) as exporter:
        return recorder.record(exporter, forward)


def test_sequence_layers_give_one_row_per_token_with_the_features_as_columns() -> None:
    torch.manual_seed(0)
    model = Tagger(batch_first=True).eval()
    tokens = torch.randint(0, 20, (7, 4))
    recorded, by_hand = _recorded(model, tokens), _outputs_by_hand(model, tokens)
    assert set(recorded) == {"emb", "rnn", "norm", "head"}
    for name, expected in by_hand.items():
        assert recorded[name].shape == (7 * 4, expected.shape[1]), name
        torch.testing.assert_close(recorded[name], expected, msg=name)


def test_time_first_outputs_have_their_probe_points_in_dimension_1() -> None:
    torch.manual_seed(0)
    model = Tagger(batch_first=False).eval()
    tokens = torch.randint(0, 20, (7, 4))  # the probe: (N, T); the model gets (T, N)
    recorded, by_hand = _recorded(model, tokens), _outputs_by_hand(model, tokens)
    # every layer's (T, N, F) output: found from where the batch's probe points are
    for name, expected in by_hand.items():
        torch.testing.assert_close(recorded[name], expected, msg=name)


class Flattening(nn.Module):
    """Its head sees every token of the batch as one row: (N * T, F), no probe-point axis."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        return self.head(h.reshape(-1, h.shape[-1]))


def test_a_layer_without_a_probe_point_axis_is_left_out_with_a_warning(caplog) -> None:
    torch.manual_seed(0)
    model = Flattening().eval()
    tokens = torch.randint(0, 20, (7, 4))
    recorder = ActivationRecorder(tokens, batch_size=3, max_positions=10**6, seed=0)
    with caplog.at_level(logging.WARNING), ik.Exporter(model) as exporter:
        first = recorder.record(exporter)
        second = recorder.record(exporter)
    assert set(first) == set(second) == {"emb"}  # no partial matrix for the head
    with torch.no_grad():
        torch.testing.assert_close(first["emb"], model.emb(tokens).reshape(-1, 6))
    warned = [r.getMessage() for r in caplog.records if "probe points" in r.getMessage()]
    assert len(warned) == 1 and "'head'" in warned[0] and "(12, 3)" in warned[0]


def test_layers_the_probe_never_calls_are_named_once(caplog) -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0).eval()
    x = torch.randn(5, 3, 8)
    recorder = ActivationRecorder(x, batch_size=2, max_positions=10**6, seed=0)
    with caplog.at_level(logging.WARNING), ik.Exporter(model) as exporter:
        first = recorder.record(exporter)
        second = recorder.record(exporter)
    # MultiheadAttention computes with out_proj's weight without calling out_proj
    assert set(first) == set(second) == {"linear1", "linear2", "norm1", "norm2"}
    warned = [r.getMessage() for r in caplog.records if "not called" in r.getMessage()]
    assert len(warned) == 1 and "['self_attn.out_proj']" in warned[0]
    with torch.no_grad():  # post-norm: the block's output is norm2's, one row per token
        torch.testing.assert_close(first["norm2"], model(x).reshape(-1, 8))


class RMSNorm(nn.Module):
    """A layer of the user's own, as transformer code often writes it: features last."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def test_a_custom_layer_with_a_vector_weight_has_its_features_last() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 6), RMSNorm(6), nn.Linear(6, 3)).eval()
    tokens = torch.randint(0, 20, (7, 5))
    recorder = ActivationRecorder(tokens, batch_size=3, max_positions=10**6, seed=0)
    with ik.Exporter(model) as exporter:
        recorded = recorder.record(exporter)
    with torch.no_grad():
        normed = model[1](model[0](tokens))
    assert recorded["1"].shape == (7 * 5, 6)
    torch.testing.assert_close(recorded["1"], normed.reshape(-1, 6))


class ChannelScale(nn.Module):
    """A per-channel scale of the user's own over a (N, C, L) output: channels first."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None]


def test_a_custom_layer_whose_sequence_is_as_long_as_its_features_are_wide() -> None:
    """(N, 8, 8): the output alone cannot tell 8 positions of 8 features from 8 channels of
    length 8; the layer before it (of the same output shape) tells."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (7, 8))
    after_linear = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8), RMSNorm(8)).eval()
    after_conv = nn.Sequential(nn.Conv1d(8, 8, 1), ChannelScale(8)).eval()
    signals = torch.randn(7, 8, 8)
    first = RMSNorm(8).eval()  # nothing before it: a vector weight keeps its features last
    recorded = {}
    for key, model, x in (
        ("linear", after_linear, tokens),
        ("conv", after_conv, signals),
        ("first", nn.Sequential(first), signals),
    ):
        recorder = ActivationRecorder(x, batch_size=3, max_positions=10**6, seed=0)
        with ik.Exporter(model) as exporter:
            recorded[key] = recorder.record(exporter)
    with torch.no_grad():
        normed = after_linear(tokens)  # (N, T, D): one row per token
        scaled = after_conv(signals).transpose(1, 2)  # (N, C, L): one row per position
        alone = first(signals)
    torch.testing.assert_close(recorded["linear"]["2"], normed.reshape(-1, 8))
    torch.testing.assert_close(recorded["conv"]["1"], scaled.reshape(-1, 8))
    torch.testing.assert_close(recorded["first"]["0"], alone.reshape(-1, 8))


class LayerNorm2d(nn.LayerNorm):
    """A layer norm over the channels of an image: (N, C, H, W) -> channels last, normalised,
    and back (as timm and torchvision's ConvNeXt write it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, then a Linear over the channels in channels-last, back to (N, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_features_last_layers_that_put_the_channels_back_in_front_have_channel_columns() -> None:
    # a LayerNorm subclass and a block ending in a Linear both return (N, C, H, W): every
    # position of every point is a row, the C channels are the columns (they were folded with
    # the width as the columns: (N * C * H, W))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), LayerNorm2d(8), ConvNeXtBlock(8)).eval()
    images = torch.randn(5, 1, 7, 9)
    recorder = ActivationRecorder(images, batch_size=2, max_positions=10**6, seed=0)
    with ik.Exporter(model, depth=1) as exporter:
        recorded = recorder.record(exporter)
    with torch.no_grad():
        normed = model[1](model[0](images))
        block = model[2](normed)
    for name, out in (("1", normed), ("2", block)):
        assert out.shape == (5, 8, 5, 7)
        assert recorded[name].shape == (5 * 5 * 7, 8)
        torch.testing.assert_close(recorded[name], out.permute(0, 2, 3, 1).reshape(-1, 8))


class RelativeAttention(nn.Module):
    """A T5-style attention block: its relative position embedding (8 heads) is registered
    last, and its (N, T, D) output has T == 8 tokens here."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.q, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.relative_bias = nn.Embedding(32, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.tanh(self.q(x)))


def test_a_sequence_block_whose_length_matches_a_side_layer_keeps_its_features_last() -> None:
    from ikkuna_tune.subscribers.probe import activation_layout

    assert activation_layout(RelativeAttention(32, 8), (4, 8, 32)) == (True, False)
    router = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))  # 8 experts, 8 tokens
    assert activation_layout(router, (4, 8, 32)) == (True, False)
    # a LayerNorm2d whose channels equal the width (32 on a 32x32 map) still has channel
    # columns: its own forward puts them back in front; a plain LayerNorm over the width not
    assert activation_layout(LayerNorm2d(32), (2, 32, 32, 32)) == (False, False)
    assert activation_layout(nn.LayerNorm(32), (2, 32, 32, 32)) == (True, False)
    # torch's own recurrent layers whose hidden size equals the sequence length: features last
    assert activation_layout(nn.LSTM(8, 8, batch_first=True), (4, 8, 8)) == (True, False)
    assert activation_layout(nn.GRU(8, 8, batch_first=True), (4, 8, 8)) == (True, False)


class ScaledLinear(nn.Linear):
    """A Linear of the user's own forward (as LoRA or quantised layers are written)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


def test_a_linear_of_the_users_own_forward_keeps_its_features_last() -> None:
    from ikkuna_tune.subscribers.probe import activation_layout

    # 8 tokens, 8 features: nothing but its class would say channels first, and it does not
    assert activation_layout(ScaledLinear(4, 8), (2, 8, 8)) == (True, False)
    # its output with another size last is read channels-first
    assert activation_layout(ScaledLinear(4, 8), (2, 8, 5)) == (False, False)


def test_a_layer_norm_over_a_feature_map_has_its_channels_as_features() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.LayerNorm([8, 6, 6]), nn.Flatten(), nn.Linear(288, 3)
    )
    x = torch.randn(5, 1, 8, 8)
    recorder = ActivationRecorder(x, batch_size=2, max_positions=10**6, seed=0)
    with ik.Exporter(model) as exporter:
        recorded = recorder.record(exporter)
    with torch.no_grad():
        conv = model[0](x)
        norm = model[1](conv)
    # as a convolution's: a row per point and position, the 8 channels as columns
    by_hand = {"0": conv, "1": norm}
    for name, out in by_hand.items():
        torch.testing.assert_close(recorded[name], out.permute(0, 2, 3, 1).reshape(-1, 8))


class NoisyNet(nn.Module):
    """Adds noise to its input in every mode (a stochastic layer, as a VAE's sampling)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + torch.randn_like(x))


def test_pushing_the_probe_through_leaves_the_random_state_alone() -> None:
    model = NoisyNet()
    x = torch.randn(6, 4)
    recorder = ActivationRecorder(x, batch_size=4, max_positions=10**6, seed=0)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with ik.Exporter(model) as exporter:
        first = recorder.record(exporter)["fc"]
        second = recorder.record(exporter)["fc"]
    torch.testing.assert_close(torch.rand(3), expected)
    # the model did draw noise (its rows are not the noise-free ones), from a copy of the
    # state: the same noise at every checkpoint
    with torch.no_grad():
        assert not torch.allclose(first.sum(0), model.fc(x).sum(0), atol=1e-3)
    torch.testing.assert_close(first, second)


class _Trimming(nn.Module):
    """An embedding of (N, L) token ids whose output is cut to the batch's longest sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x[:, : int((x != 0).sum(1).max())])


def test_a_layer_whose_positions_differ_between_probe_batches_is_left_out(caplog) -> None:
    lengths = torch.tensor([3, 3, 5, 5])  # batches of 2: 3 positions, then 5
    x = torch.randint(1, 20, (4, 6)) * (torch.arange(6) < lengths[:, None])
    recorder = ActivationRecorder(x, batch_size=2, max_positions=10**6, seed=0)
    with caplog.at_level(logging.WARNING), ik.Exporter(_Trimming()) as exporter:
        assert recorder.record(exporter) == {}  # no matrix with rows never written
    (told,) = [
        r.getMessage() for r in caplog.records if "positions per probe point" in r.getMessage()
    ]
    assert "'emb'" in told and "3 positions" in told and "and 5 in another" in told

"""Train and test accuracy of a sequence model whose logits are (N, T, V), against a count by
hand: the loss reads them as (N * T, V), the accuracy must read them the same way."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus

VOCAB, T = 7, 5


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))  # (N, T, V)


def _by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    hits = total = 0
    for row_logits, row_targets in zip(logits.tolist(), targets.tolist()):
        for scores, target in zip(row_logits, row_targets):
            if target < 0:  # padding
                continue
            total += 1
            hits += max(range(VOCAB), key=lambda c: scores[c]) == target
    return hits / total


def test_sequence_logits_are_read_with_their_classes_last() -> None:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (12, T), generator=g)
    targets = torch.randint(0, VOCAB, (12, T), generator=g)
    targets[:, -2:] = -100  # padded ends
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.TestAccuracySubscriber(
        TensorDataset(tokens, targets), frequency="epoch", message_bus=bus, backend=None
    )
    seen: dict[str, list[float]] = {"train_accuracy": [], "test_accuracy": []}
    ik.CallbackSubscriber(list(seen), lambda m: seen[m.kind].append(float(m.data)), bus, tag=None)
    expected_train, expected_test = [], []
    with exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(3):
            for i in range(0, 12, 4):
                x, y = tokens[i : i + 4], targets[i : i + 4]
                with torch.no_grad():
                    expected_train.append(_by_hand(model(x), y))
                opt.zero_grad()
                loss_fn(model(x).reshape(-1, VOCAB), y.reshape(-1)).backward()
                opt.step()
            with torch.no_grad():
                expected_test.append(_by_hand(model(tokens), targets))
            exporter.epoch_finished()
    assert seen["train_accuracy"] == torch.tensor(expected_train).tolist()
    assert seen["test_accuracy"] == torch.tensor(expected_test).tolist()

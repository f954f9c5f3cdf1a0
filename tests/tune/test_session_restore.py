"""A trial restored with an edited list of subscribers: each subscriber gets the state saved
for its type, the others start afresh with a warning, and the rest of the trial's state (its
frozen layers) is restored all the same. No Ray session."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ikkuna_tune.tune.session import TrialSession
from tests.conftest import TinyNet
from tests.tune.trainables import StepCount, WeightCosine, WeightSum, data


def _session(subscribers: list) -> tuple[TrialSession, torch.nn.Module]:
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = TrialSession(subscribers, {"lr": 0.1})
    exporter = session.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    x, y = data()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return session, model


def test_an_edited_subscriber_list_restores_by_type_and_starts_the_rest_afresh(caplog) -> None:
    session, _ = _session([WeightSum(), StepCount()])
    session.apply([{"freeze": ["conv"], "reasons": {"conv": "freeze conv: converged"}}])
    state = session.state_dict()
    session.close()

    # reordered, one dropped, one added
    count, cosine = StepCount(), WeightCosine()
    restored, _ = _session([count, cosine])
    count.count = 0
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        restored.load_state_dict(state)
    assert count.count == 3  # the StepCount's saved state, though it moved
    assert restored.exporter is not None and restored.exporter.frozen == ("conv",)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "tests.tune.trainables.WeightCosine starts afresh: the checkpoint holds no state for "
        "it (the subscribers changed since)"
    ]
    restored.close()


def test_a_state_a_subscriber_refuses_starts_it_afresh(caplog) -> None:
    session, _ = _session([StepCount()])
    state = session.state_dict()
    session.close()
    state["subscribers"][0] = {"not": "a StepCount state"}
    count = StepCount()
    restored, _ = _session([count])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        restored.load_state_dict(state)
    assert count.count == 3  # its own count from the steps above, not a loaded one
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("tests.tune.trainables.StepCount starts afresh: its saved state")
    restored.close()


def test_a_state_saved_without_types_is_matched_by_position() -> None:
    session, _ = _session([WeightSum(), StepCount()])
    state = session.state_dict()
    session.close()
    del state["subscriber_types"]  # as saved before the types were
    count = StepCount()
    restored, _ = _session([WeightSum(), count])
    count.count = 0
    restored.load_state_dict(state)
    assert count.count == 3
    restored.close()


class _Strict(StepCount):
    """A StepCount that refuses a state saved with another ``limit`` after loading part of it
    (the way a subscriber that sets its state key by key fails half way)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def state_dict(self) -> dict:
        return {**super().state_dict(), "limit": self.limit}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]  # loaded before the check below refuses the state
        if state["limit"] != self.limit:
            raise ValueError(f"saved with limit {state['limit']}, not {self.limit}")


def test_a_refused_state_is_undone_and_the_next_of_its_type_is_tried(caplog) -> None:
    session, _ = _session([_Strict(8)])
    saved_8 = session.state_dict()
    session.close()
    session, _ = _session([_Strict(16)])
    session.close()
    # a checkpoint of two subscribers of one type, restored into one of them
    state = {
        **saved_8,
        "subscribers": [
            dict(saved_8["subscribers"][0], count=7, limit=8),
            dict(saved_8["subscribers"][0], count=5, limit=16),
        ],
    }
    state["subscriber_types"] = [state["subscriber_types"][0]] * 2
    sixteen = _Strict(16)
    restored, _ = _session([sixteen])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        restored.load_state_dict(state)
    assert sixteen.count == 5 and not caplog.records  # its own, the second one
    restored.close()
    # refusing every state of its type: its fresh state, not the half-loaded one
    thirty_two = _Strict(32)
    restored, _ = _session([thirty_two])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        restored.load_state_dict(state)
    assert thirty_two.count == 3  # the steps it saw itself
    assert "starts afresh: its saved state does not fit it (ValueError" in caplog.text
    restored.close()


def test_a_job_checkpoints_pending_unfreezes_are_carried_out_in_one_process() -> None:
    """A Ray Train job's rank 0 saves, with a report's checkpoint, the unfreezes past a layer
    the training code trains again that it carries out after that report; a single process
    that loads such a state carries them out too, once (the list was never cleared: saved
    again with every later checkpoint, the layer frozen for good)."""
    session, _ = _session([WeightSum()])
    exporter = session.exporter
    exporter.freeze("conv")
    state = session.state_dict()
    assert state["retrained_releases"] == []  # (a single process carries them out at once)
    state["retrained_releases"] = [["conv", "layer 'x' before it trains again"]]
    session.load_state_dict(state)
    assert list(exporter.frozen) == ["conv"]
    session._as_rank_0_decides([], release=False)  # as at a restore
    assert not exporter.frozen
    assert session.unfreeze_reasons == {"conv": "layer 'x' before it trains again"}
    assert session.state_dict()["retrained_releases"] == []
    session.close()

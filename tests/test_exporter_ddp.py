"""Data parallelism: an Exporter on a DistributedDataParallel model (2 processes, gloo, CPU) names
the layers as the user does and publishes, on every rank, the gradient norms, weight norms and
update ratios of a single process training on the same global batch, also once a layer is frozen
on every rank at the same step (which needs DDP's find_unused_parameters; without it the freeze
is refused with a clear error instead of DDP failing at the next step); the freeze also takes the
frozen layer out of DDP's gradient all-reduce.

DDP averages the gradients over the ranks during backward, so at ``optimizer.step()`` every rank
holds the gradient of the mean loss over the global batch, which is the single process's.
"""

from __future__ import annotations

import gc
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from experiments.processes import in_gloo_group, run_ranks
from ikkuna_tune.bus import MessageBus

WORLD = 2
STEPS = 4
FREEZE_STEP = 2  # layer "0" is frozen before this step
KINDS = ("weight_gradients_norm2", "weights_norm2", "weight_updates_weights_ratio")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(model: nn.Module, rank: int, world: int) -> tuple[list, dict, torch.Tensor, bool, Any]:
    """Train STEPS steps on this rank's share of each global batch, freezing layer "0" before
    FREEZE_STEP; the tracked layer names, the published values by (kind, layer, step), the
    frozen layer's weight when it was frozen, whether it is bit-identical at the end, and the
    bytes DDP all-reduced in the last step (None without DDP)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict = {}
    ik.CallbackSubscriber(
        list(KINDS), lambda m: got.__setitem__((m.kind, m.key, m.global_step), m.data), bus
    )
    with ik.Exporter(model, opt, bus) as exporter:
        layer = exporter.modules["0"].module
        for step in range(STEPS):
            if step == FREEZE_STEP:
                exporter.freeze("0")
                frozen = layer.weight.detach().clone()
            x, y = _global_batch(step)
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            opt.zero_grad()
            F.cross_entropy(model(x[share]), y[share]).backward()
            opt.step()
        names = list(exporter.modules)
        sync = exporter.ddp_sync
    unchanged = torch.equal(layer.weight.detach(), frozen)
    sync_bytes = sync.last_step_bytes if sync is not None else None
    return names, {k: v.item() for k, v in got.items()}, frozen, unchanged, sync_bytes


def _refusals() -> str:
    """What freezing a layer of a DDP model says where it is refused: built without
    find_unused_parameters, and with a static graph."""
    strict = nn.parallel.DistributedDataParallel(_model())
    refused = ""
    with ik.Exporter(strict, None, MessageBus()) as exporter:
        try:
            exporter.freeze("0")
        except ValueError as error:
            refused = str(error)
    # a static graph: DDP looks for unused parameters in the first iteration only, so a frozen
    # layer's missing gradients would leave the next step's reduction unfinished (the ranks
    # stepped apart, then failed); refused, the layer trains on
    static = nn.parallel.DistributedDataParallel(
        _model(), find_unused_parameters=True, static_graph=True
    )
    with ik.Exporter(static, None, MessageBus()) as exporter:
        try:
            exporter.freeze("0")
        except ValueError as error:
            refused += "\n" + str(error)
        assert not exporter.frozen and all(p.requires_grad for p in static.parameters())
    return refused


def _rank_work(rank: int, out: str) -> None:
    refused = _refusals()
    # the refused models' reducers are freed now, while the process group is alive: one freed
    # later can abort the process ("terminate called without an active exception")
    gc.collect()
    ddp = nn.parallel.DistributedDataParallel(_model(), find_unused_parameters=True)
    torch.save((*_train(ddp, rank, WORLD), refused), f"{out}.{rank}")


def _worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, WORLD, store, partial(_rank_work, rank, out))


def test_ddp_ranks_publish_the_single_process_values_under_the_users_names(tmp_path) -> None:
    names, reference, frozen, unchanged, no_sync = _train(_model(), 0, 1)
    out = str(tmp_path / "values")
    run_ranks(
        _worker, (str(tmp_path / "store"), out), WORLD, seconds=240
    )  # no hang: killed past it
    assert names == ["0", "2"] and unchanged and no_sync is None
    # a frozen layer publishes no gradient (its weights and its zero update still come)
    assert len(reference) == len(KINDS) * 2 * STEPS - (STEPS - FREEZE_STEP)
    frozen_on_ranks = []
    for rank in range(WORLD):
        saved = torch.load(f"{out}.{rank}")
        rank_names, values, rank_frozen, rank_unchanged, sync_bytes, refused = saved
        assert rank_names == names  # no 'module.' prefix
        assert "find_unused_parameters=True" in refused
        assert "static_graph=True" in refused
        assert rank_unchanged  # the frozen weights did not move after the freeze
        # the freeze took layer "0" out of DDP's all-reduce: only layer "2" (8x3 + 3 float32)
        assert sync_bytes == (8 * 3 + 3) * 4
        frozen_on_ranks.append(rank_frozen)
        torch.testing.assert_close(rank_frozen, frozen, rtol=1e-5, atol=1e-7)
        assert values.keys() == reference.keys()
        for key, value in reference.items():
            assert abs(values[key] - value) <= 1e-5 * abs(value) + 1e-7, (rank, key)
    assert torch.equal(frozen_on_ranks[0], frozen_on_ranks[1])  # bit-identical on every rank


def _svcca_rank_work(rank: int, out: str) -> None:
    """Attach an SVCCASubscriber that freezes (on rank 0 alone, then on every rank) to a DDP
    model; what each attempt raised."""
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(_model(), find_unused_parameters=True)
    probe = torch.randn(40, 6, generator=torch.Generator().manual_seed(7))
    said = []
    for everywhere in (False, True):
        with ik.Exporter(model, None, MessageBus()) as exporter:
            if everywhere or rank == 0:
                try:
                    ik.SVCCASubscriber(
                        probe, 40, message_bus=exporter.message_bus, freeze_at=0.5,
                        backend=None,
                    )  # fmt: skip
                    said.append("")
                except ValueError as error:
                    said.append(str(error))
    # freezing off is no decision: attached as usual
    with ik.Exporter(model, None, MessageBus()) as exporter:
        ik.SVCCASubscriber(probe, 40, message_bus=exporter.message_bus, backend=None)
    # a model sharded over the ranks (FSDP's fully_shard) is trained by both as well
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    sharded = _model()
    fully_shard(sharded[0], mesh=init_device_mesh("cpu", (WORLD,)))
    with ik.Exporter(sharded, None, MessageBus()) as exporter:
        try:
            ik.SVCCASubscriber(
                probe, 40, message_bus=exporter.message_bus, freeze_at=0.5, backend=None
            )
            said.append("")
        except ValueError as error:
            said.append(str(error))
    torch.save(said, f"{out}.{rank}")


def _svcca_worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, WORLD, store, partial(_svcca_rank_work, rank, out))


def test_svcca_freeze_at_is_refused_under_ddp_where_it_is_given(tmp_path) -> None:
    """Ranks read a layer's self-similarity each on its own (their BatchNorm statistics, a
    probe on rank 0 alone): a subscriber's own freeze_at froze a layer on the ranks whose
    readings passed it only, and DDP's next step aborted the processes (gloo: sizes differ);
    a decision broadcast from rank 0 hangs where only rank 0 has the subscriber. It is
    refused as the subscriber attaches, on every rank that has one, naming the way to
    freeze; for a model FSDP shards over the ranks too (a freeze on one rank hung the next
    step)."""
    out = str(tmp_path / "svcca")
    run_ranks(_svcca_worker, (str(tmp_path / "store"), out), WORLD, seconds=240)
    said = [torch.load(f"{out}.{rank}") for rank in range(WORLD)]
    assert len(said[0]) == 3 and len(said[1]) == 2
    for message in [*said[0], *said[1]]:
        assert "Expected freeze_at=None for a model trained by 2 ranks" in message
        assert "exporter.freeze(name) on every rank" in message
    # one process: freezing at a threshold works as before (the reference run freezes)
    model = _model()
    with ik.Exporter(model, None, MessageBus()) as exporter:
        ik.SVCCASubscriber(
            torch.randn(40, 6), 40, message_bus=exporter.message_bus, freeze_at=0.5,
            backend=None,
        )  # fmt: skip

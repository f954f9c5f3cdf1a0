"""Trainable-only gradient synchronisation under DistributedDataParallel (2 processes, gloo, CPU).

With nothing frozen the hook gives the gradients of DDP's default all-reduce and of one process
on the whole global batch (plain autograd). Once a layer is frozen on both ranks before the same
step, every step all-reduces exactly that layer's bytes less, the trainable gradients still are
the single process's, and the frozen weights stay bit-identical on both ranks; a bucket of frozen
parameters only launches no collective at all.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from experiments.processes import in_gloo_group, run_ranks
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.ddp_sync import install_trainable_only_sync

WORLD = 2
STEPS = 4
FREEZE_STEP = 2  # layer "0" is frozen before this step
# the model's parameters, by hand: Linear(6, 8) 6*8 + 8 = 56, Linear(8, 8) 8*8 + 8 = 72,
# Linear(8, 3) 8*3 + 3 = 27; float32, 4 bytes each
BYTES_ALL = 4 * (56 + 72 + 27)  # 620
BYTES_FROZEN = 4 * 56  # layer "0": 224
#: (bucket_cap_mb, gradient_as_bucket_view): one bucket for all (the frozen gradients are left
#: out of a bucket that still trains), and about one bucket per parameter (buckets of frozen
#: parameters only are skipped), DDP's gradients as views of its buckets
CONFIGS = ((25.0, False), (1e-4, True))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _reference() -> tuple[list, list]:
    """One process, plain autograd on the whole global batch, layer "0" frozen by hand before
    FREEZE_STEP: the gradients after every backward, and the parameters at the end."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for step in range(STEPS):
        if step == FREEZE_STEP:
            for p in model[0].parameters():
                p.requires_grad_(False)
                p.grad = None
        x, y = _global_batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append(_grads(model))
        opt.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _share(x: torch.Tensor, rank: int) -> slice:
    return slice(rank * len(x) // WORLD, (rank + 1) * len(x) // WORLD)


def _plain_steps(ddp: nn.Module, rank: int, steps: int) -> list[list]:
    """``steps`` SGD steps on this rank's half of each global batch; gradients per step."""
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for step in range(steps):
        x, y = _global_batch(step)
        opt.zero_grad()
        F.cross_entropy(ddp(x[_share(x, rank)]), y[_share(x, rank)]).backward()
        grads.append(_grads(ddp))
        opt.step()
    return grads


def _freezing_run(rank: int, bucket_cap_mb: float, as_view: bool) -> dict:
    ddp = nn.parallel.DistributedDataParallel(
        _model(),
        find_unused_parameters=True,
        bucket_cap_mb=bucket_cap_mb,
        gradient_as_bucket_view=as_view,
    )
    sync = install_trainable_only_sync(ddp)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    out: dict = {"grads": [], "bytes": [], "skipped": []}
    with ik.Exporter(ddp, opt, MessageBus()) as exporter:
        for step in range(STEPS):
            if step == FREEZE_STEP:
                exporter.freeze("0")
                out["at_freeze"] = ddp.module[0].weight.detach().clone()
            x, y = _global_batch(step)
            opt.zero_grad()
            skipped = sync.skipped_buckets
            F.cross_entropy(ddp(x[_share(x, rank)]), y[_share(x, rank)]).backward()
            out["grads"].append(_grads(ddp))
            out["bytes"].append(sync.last_step_bytes)
            out["skipped"].append(sync.skipped_buckets - skipped)
            opt.step()
    out["params"] = [p.detach().clone() for p in ddp.parameters()]
    out["steps"], out["bytes_total"] = sync.steps, sync.bytes_total
    return out


def _refusals() -> list[str]:
    """What installing says on a DDP module that already has a hook (Python, built-in)."""
    said = []
    for builtin in (False, True):
        ddp = nn.parallel.DistributedDataParallel(_model())
        if builtin:
            ddp._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
        else:
            ddp.register_comm_hook(None, _noop_hook)
        try:
            install_trainable_only_sync(ddp)
            said.append("")
        except ValueError as error:
            said.append(str(error))
    return said


def _noop_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads no string annotation
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def _rank_work(rank: int, out: str) -> None:
    default = _plain_steps(nn.parallel.DistributedDataParallel(_model()), rank, 2)
    hooked = nn.parallel.DistributedDataParallel(_model())
    sync = install_trainable_only_sync(hooked)
    with_hook = _plain_steps(hooked, rank, 2)
    runs = [_freezing_run(rank, *config) for config in CONFIGS]
    result = {
        "default": default,
        "hook": with_hook,
        "hook_bytes": (sync.steps, sync.bytes_total, sync.last_step_bytes),
        "runs": runs,
        "refusals": _refusals(),
    }
    torch.save(result, f"{out}.{rank}")


def _worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, WORLD, store, partial(_rank_work, rank, out))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp_sync")
    out = str(tmp / "result")
    run_ranks(_worker, (str(tmp / "store"), out), WORLD, seconds=120)  # no hang: killed past it
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


def _assert_grads_close(got: list, want: list, where: str) -> None:
    assert [g is None for g in got] == [w is None for w in want], where
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7, msg=where)


def test_with_nothing_frozen_the_hook_gives_ddps_and_one_processs_gradients(ranks) -> None:
    reference, _ = _reference()  # its first FREEZE_STEP steps train every layer
    for rank, result in enumerate(ranks):
        for step, (default, hooked) in enumerate(zip(result["default"], result["hook"])):
            # the same division and sum as DDP's default all-reduce: the same bits
            assert all(torch.equal(d, h) for d, h in zip(default, hooked)), (rank, step)
            _assert_grads_close(hooked, reference[step], f"rank {rank} step {step}")
        assert result["hook_bytes"] == (2, 2 * BYTES_ALL, BYTES_ALL)


@pytest.mark.parametrize("config", range(len(CONFIGS)), ids=[str(c) for c in CONFIGS])
def test_a_frozen_layer_leaves_the_all_reduce(ranks, config: int) -> None:
    reference, params = _reference()
    runs = [result["runs"][config] for result in ranks]
    for rank, run in enumerate(runs):
        # exactly the frozen layer's bytes fewer, from the step it is frozen on
        per_step = [BYTES_ALL] * FREEZE_STEP + [BYTES_ALL - BYTES_FROZEN] * (STEPS - FREEZE_STEP)
        assert run["bytes"] == per_step, rank  # [620, 620, 396, 396]
        assert run["steps"] == STEPS and run["bytes_total"] == sum(per_step)
        for step in range(STEPS):
            _assert_grads_close(run["grads"][step], reference[step], f"rank {rank} step {step}")
        for got, want in zip(run["params"], params):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # the frozen weights did not move, and are the same bits on both ranks
        assert torch.equal(run["params"][0], run["at_freeze"])
        assert torch.equal(run["params"][0], runs[0]["params"][0])
        assert torch.equal(run["params"][1], runs[0]["params"][1])
    if CONFIGS[config][0] < 1:  # small buckets: those of the frozen layer launch nothing
        assert runs[0]["skipped"][:FREEZE_STEP] == [0] * FREEZE_STEP
        assert all(n >= 1 for n in runs[0]["skipped"][FREEZE_STEP:]), runs[0]["skipped"]
    else:  # one bucket: it still trains
        assert runs[0]["skipped"] == [0] * STEPS


def test_a_model_with_a_hook_already_is_refused(ranks) -> None:
    python_hook, builtin_hook = ranks[0]["refusals"]
    assert "already has ['_noop_hook']" in python_hook
    assert "without a communication hook" in builtin_hook and "only be called once" in builtin_hook


def test_only_ddp_is_accepted() -> None:
    with pytest.raises(TypeError, match=r"DistributedDataParallel .* but got Sequential$"):
        install_trainable_only_sync(_model())
    with pytest.raises(TypeError, match=r"but got OptimizedModule \(wrapping Sequential\)"):
        install_trainable_only_sync(torch.compile(_model()))


def test_installing_after_a_forward_pass_warns_a_caller_but_not_a_freeze(tmp_path, caplog) -> None:
    """A user installing the hook once training began is warned (the steps before went through
    DDP's own all-reduce); the Exporter's install at the first freeze, which always comes
    after forward passes and loses nothing by it, is said at debug level only."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    said: dict[str, list[int]] = {}
    try:
        for who in ("caller", "freeze"):
            ddp = nn.parallel.DistributedDataParallel(_model(), find_unused_parameters=True)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            x, y = _global_batch(0)
            F.cross_entropy(ddp(x), y).backward()  # the first forward pass ran
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="ikkuna_tune.ddp_sync"):
                if who == "caller":
                    install_trainable_only_sync(ddp)
                else:
                    with ik.Exporter(ddp, opt, MessageBus()) as exporter:
                        exporter.freeze("0")
                        assert exporter.ddp_sync is not None  # installed by the freeze
            said[who] = [r.levelno for r in caplog.records if "first forward" in r.getMessage()]
    finally:
        dist.destroy_process_group()
    assert said == {"caller": [logging.WARNING], "freeze": [logging.DEBUG]}

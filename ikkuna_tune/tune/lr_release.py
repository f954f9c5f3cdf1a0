"""Releasing, in the trial, the layers the scheduler froze once their learning rate has changed.

SVCCAScheduler judges a layer converged at the learning rate it trains with. After a step
decay, a reduction on a plateau or a warm restart, that judgement no longer holds: a layer that
has settled at a large learning rate goes on learning at a small one, and a trial whose layers
stay frozen through the drop ends lower than it would have (the scheduler would have changed
how the good trials compare). So a trial records, for each layer it freezes on the scheduler's
order, the learning rates of the optimizer parameter groups that hold the layer's parameters,
and unfreezes the layer once one of them has moved by ``factor`` or more (either way) from its
value at the freeze. The trial reports why under ``unfreeze_reason/<layer>``; the scheduler logs
the unfreeze and judges the layer again, only on the reports made after it.

The rates are those of the groups that hold the layer's parameters now: after a hand-over to
other optimizers (``exporter.set_optimizers``), a layer is compared with the group of the new
optimizers that holds its parameters, and a layer no optimizer holds any more is not released
(nothing trains it, whatever the learning rates do).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    >>> release = LearningRateRelease()
    >>> release.track("fc", 2.0, [optimizer], list(layer.parameters()), step=5)
    >>> release.due([optimizer])  # the learning rate is as it was
    []
    >>> optimizer.param_groups[0]["lr"] = 0.01  # a tenfold decay
    >>> [(name, change.reason()) for name, change in release.due([optimizer])]
    [('fc', 'learning rate changed (lr_at_freeze=0.1, lr=0.01, factor=2, frozen_at_step=5)')]
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LearningRateRelease", "LrChange", "base_rates", "snapshot"]

logger = logging.getLogger(__name__)

#: The rule of an unfreeze on a learning-rate change (the scheduler's decision log names it).
RULE = "learning rate changed"


@dataclass(frozen=True)
class LrChange:
    """A learning rate of a frozen layer that moved by the layer's factor or more.

    Examples:
        >>> LrChange(before=0.1, now=0.05, factor=2.0, frozen_at_step=12).reason()
        'learning rate changed (lr_at_freeze=0.1, lr=0.05, factor=2, frozen_at_step=12)'
    """

    before: float
    now: float
    factor: float
    frozen_at_step: int

    def reason(self, upstream: str | None = None) -> str:
        """What the trial reports under ``unfreeze_reason/<layer>``: the rule and its values,
        as the scheduler's decisions describe theirs; ``upstream``: the layer before it whose
        learning rate changed (the values are that layer's).

        Examples:
            >>> rule, values = LrChange(0.1, 0.01, 2.0, 11717).reason(upstream="c1").split(" (")
            >>> print(rule); print(values)
            learning rate changed in c1
            lr_at_freeze=0.1, lr=0.01, factor=2, frozen_at_step=11717)
        """
        values = {"lr_at_freeze": self.before, "lr": self.now, "factor": self.factor}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        rule = RULE if upstream is None else f"{RULE} in {upstream}"
        return f"{rule} ({shown}, frozen_at_step={self.frozen_at_step})"


def snapshot(
    optimizers: Sequence[torch.optim.Optimizer], on_device: bool = False
) -> dict[tuple[int, int], float]:
    """The learning rate of each parameter group, by (optimizer, group) index (see
    :func:`_lr` for ``on_device``).

    Examples:
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.5)
        >>> snapshot([optimizer])
        {(0, 0): 0.5}
    """
    rates = {}
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            lr = _lr(group, on_device)
            if lr is not None:
                rates[(i, j)] = lr
    return rates


def base_rates(optimizers: Sequence[torch.optim.Optimizer]) -> dict[tuple[int, int], float]:
    """The rate each parameter group's learning-rate scheduler starts from, by (optimizer,
    group) index: ``initial_lr``, which every ``torch.optim.lr_scheduler`` scheduler sets, or
    ``max_lr`` where larger (OneCycleLR's peak); groups without one are left out.

    Examples:
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.5)
        >>> base_rates([optimizer])  # no scheduler
        {}
        >>> warm_up = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.01)
        >>> base_rates([optimizer]), snapshot([optimizer])
        ({(0, 0): 0.5}, {(0, 0): 0.005})
    """
    rates = {}
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            found = [_lr({"lr": group.get(key)}, False) for key in ("initial_lr", "max_lr")]
            known = [rate for rate in found if rate is not None]
            if known:
                rates[(i, j)] = max(known)
    return rates


#: What identifies the optimizers' parameter groups by position: each optimizer, and its
#: number of groups (a position means another group once either changes).
Layout = tuple[tuple[int, int], ...]


def layout(optimizers: Sequence[torch.optim.Optimizer]) -> Layout:
    """What :func:`snapshot`'s positions refer to (see :data:`Layout`).

    Examples:
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.5)
        >>> layout([optimizer]) == ((id(optimizer), 1),)
        True
    """
    return tuple([(id(o), len(o.param_groups)) for o in optimizers])


@dataclass
class _Tracked:
    """A layer the scheduler froze: its factor, the step it froze at, and the learning rates
    of the groups holding its parameters then, by position in ``at`` (``None``: restored from
    a checkpoint, the positions of the optimizers watched now) and by parameter."""

    factor: float
    step: int
    rates: dict[tuple[int, int], float]
    at: Layout | None = None
    by_param: dict[int, float] = field(default_factory=dict)


def _lr(group: Mapping[str, Any], on_device: bool) -> float | None:
    """A parameter group's learning rate as a float; None for a tensor on an accelerator
    when ``on_device`` is False (reading it would wait for the device)."""
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or (lr.device.type != "cpu" and not on_device):
            return None
        return float(lr)
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool):  # NumPy numbers too
        return float(lr)
    return None


class LearningRateRelease:
    """The learning rates each layer the scheduler froze was frozen at (see the module
    docstring). ``track`` at each freeze; ``due`` names the layers to unfreeze.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> release = LearningRateRelease()
        >>> release.track("fc", 2.0, [optimizer], layer.parameters(), step=3, rates={(0, 0): 0.4})
        >>> [name for name, _ in release.due([optimizer])]  # judged at 0.4, trains at 0.1 now
        ['fc']
        >>> release.forget("fc"); release.watching
        False

        A hand-over to a new optimizer that no longer holds the layer releases nothing:

        >>> release.track("fc", 2.0, [optimizer], layer.parameters(), step=3)
        >>> head = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.001)
        >>> release.due([head], parameters_of=lambda name: layer.parameters())
        []
    """

    def __init__(self) -> None:
        self._tracked: dict[str, _Tracked] = {}
        self._told_no_optimizer = False

    @property
    def watching(self) -> bool:
        """Whether some layer is tracked (the per-step check has work to do)."""
        return bool(self._tracked)

    def track(
        self,
        name: str,
        factor: float | None,
        optimizers: Sequence[torch.optim.Optimizer],
        parameters: Iterable[nn.Parameter],
        step: int,
        rates: Mapping[tuple[int, int], float] | None = None,
    ) -> None:
        """Record layer ``name``'s learning rates at its freeze (nothing with ``factor`` None:
        the scheduler asked for no release). ``rates`` (from :func:`snapshot`) are those the
        layer was judged at, if they differ from the optimizers' current ones (a learning rate
        decayed between the report the scheduler judged and the freeze)."""
        if factor is None:
            self._tracked.pop(name, None)
            return
        held = {id(p) for p in parameters}
        current = snapshot(optimizers, on_device=True)  # once per freeze
        judged: dict[tuple[int, int], float] = {}
        by_param: dict[int, float] = {}
        for (i, j), lr in current.items():
            mine = [id(p) for p in optimizers[i].param_groups[j]["params"] if id(p) in held]
            if mine:
                judged[(i, j)] = rates.get((i, j), lr) if rates is not None else lr
                by_param.update(dict.fromkeys(mine, judged[(i, j)]))
        if not judged:
            if not self._told_no_optimizer:
                self._told_no_optimizer = True
                logger.info(
                    "Layer %r is frozen on the scheduler's order but no optimizer given to "
                    "ik.watch holds its parameters: it is not unfrozen when the learning rate "
                    "changes (pass the optimizer to ik.watch)",
                    name,
                )
            return
        self._tracked[name] = _Tracked(factor, step, judged, layout(optimizers), by_param)

    def forget(self, name: str) -> None:
        """Stop tracking layer ``name`` (it was unfrozen)."""
        self._tracked.pop(name, None)

    @property
    def tracked(self) -> list[str]:
        """The layers tracked, in the order they were frozen."""
        return list(self._tracked)

    def keep_only(self, frozen: Iterable[str]) -> None:
        """Stop tracking the layers not in ``frozen`` (unfrozen some other way: a freeze the
        training code makes again later is its own, not the scheduler's)."""
        if any(name not in frozen for name in self._tracked):
            kept = set(frozen)
            self._tracked = {n: t for n, t in self._tracked.items() if n in kept}

    def due(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        on_device: bool = True,
        parameters_of: Callable[[str], Iterable[nn.Parameter]] | None = None,
    ) -> list[tuple[str, LrChange]]:
        """The tracked layers one of whose learning rates has moved by their factor or more
        since their freeze, with the first such change; ``on_device`` False skips learning
        rates held as tensors on an accelerator (checked at the next report instead).

        ``parameters_of(name)``, the parameters of layer ``name``, places a layer again in
        optimizers other than those it was frozen under (handed over, or a parameter group
        added): each of its groups is compared with the rate its parameters had at the freeze.
        Without it, positions are taken to mean the same groups as at the freeze."""
        found = []
        now = layout(optimizers) if parameters_of is not None else None
        for name, entry in self._tracked.items():
            if now is not None and entry.at != now:
                self._place(entry, optimizers, now, parameters_of(name))  # type: ignore[misc]
            factor, step = entry.factor, entry.step
            for (i, j), before in entry.rates.items():
                try:
                    group = optimizers[i].param_groups[j]
                except IndexError:  # the optimizer lost the group: nothing to compare with
                    continue
                now = _lr(group, on_device)
                if now is not None and _moved(before, now, factor):
                    found.append((name, LrChange(before, now, factor, step)))
                    break
        return found

    @staticmethod
    def _place(
        entry: _Tracked,
        optimizers: Sequence[torch.optim.Optimizer],
        now: Layout,
        parameters: Iterable[nn.Parameter],
    ) -> None:
        """Key ``entry``'s rates by the positions of the groups that hold the layer's
        parameters in ``optimizers`` (laid out as ``now``), each at the rate its parameters
        had at the freeze; a layer restored from a checkpoint first learns that rate from the
        positions it was saved with."""
        held = [id(p) for p in parameters]
        if entry.at is None:  # restored: the saved positions are those of these optimizers
            for (i, j), lr in entry.rates.items():
                try:
                    ids = {id(p) for p in optimizers[i].param_groups[j]["params"]}
                except IndexError:
                    continue
                entry.by_param.update((pid, lr) for pid in held if pid in ids)
        rates: dict[tuple[int, int], float] = {}
        for i, optimizer in enumerate(optimizers):
            for j, group in enumerate(optimizer.param_groups):
                ids = {id(p) for p in group["params"]}
                before = [
                    entry.by_param[pid] for pid in held if pid in ids and pid in entry.by_param
                ]
                if before:
                    rates[(i, j)] = before[0]
        entry.rates, entry.at = rates, now

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (plain lists and numbers)."""
        return {
            name: {"factor": e.factor, "step": e.step, "rates": _listed(e.rates)}
            for name, e in self._tracked.items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._tracked = {}
        for name, entry in dict(state).items():
            try:
                rates = {(int(i), int(j)): float(lr) for i, j, lr in entry["rates"]}
                self._tracked[str(name)] = _Tracked(
                    float(entry["factor"]), int(entry["step"]), rates
                )
            except (KeyError, TypeError, ValueError) as error:
                logger.warning("Skipping the saved learning rates of %r: %s", name, error)


def _listed(rates: Mapping[tuple[int, int], float]) -> list[list[float]]:
    return [[i, j, lr] for (i, j), lr in rates.items()]


def _moved(before: float, now: float, factor: float) -> bool:
    """Whether ``now`` differs from ``before`` by ``factor`` or more, either way (a rate that
    goes to or comes from zero has moved by any factor).

    Examples:
        >>> _moved(0.1, 0.05, 2.0), _moved(0.1, 0.06, 2.0), _moved(0.1, 0.2, 2.0), _moved(0.1, 0, 2)
        (True, False, True, True)
    """
    if before == now:
        return False
    low, high = sorted((abs(before), abs(now)))
    if low == 0:
        return True
    return high / low >= factor * (1 - 1e-9)  # 0.1 halved is exactly a factor 2

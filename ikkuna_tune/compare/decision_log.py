"""The scheduler's decisions on a trial, read from the ``ikkuna_decisions.jsonl`` in its
directory and from the ``freeze_reason/<layer>`` its results carry, as decision rows."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ikkuna_tune import keys
from ikkuna_tune.compare.trials import _read_json_lines, _Trial

__all__ = ["DECISIONS_FILE", "FREEZE_REASON"]

#: Where SVCCAScheduler writes its decisions in each trial directory, one JSON object a line.
DECISIONS_FILE = keys.DECISIONS_FILE
#: Tune's flattened key of the reason a trial reports for each frozen layer.
FREEZE_REASON = keys.FREEZE_REASON
#: ``Decision.describe()``: "freeze conv1 at report 3: converged (similarity=0.995, ...)".
_DESCRIBED = re.compile(
    r"^(?P<action>\w+) (?P<layer>.+?) at report (?P<iteration>\d+): (?P<rule>.+?)"
    r"(?: \((?P<values>[^()]*)\))?$"
)


def _trial_decisions(trial: _Trial) -> list[dict[str, Any]]:
    """The scheduler's decisions on one trial: its ``ikkuna_decisions.jsonl``, then the
    ``freeze_reason/<layer>`` its results carry for layers that file has no freeze for; in
    report order (file order within a report; reasons whose report is unknown last).

    Each row says whether it is ``in_force``: what the trial's results end with, where a trial
    restored from an older checkpoint left the run that made some of the file's decisions. A
    layer's freeze is in force when the trial's last report gives the layer that decision's
    reason (the last written freeze of the layer when its results carry no reasons; one
    ordered at the last report when it ended with the layer trainable, since a later report
    is of a run it left; none when the trial froze the layer itself). An unfreeze is in force
    when the trial ended with the layer trainable, it is the layer's last change up to the
    last report and the run the trial ended in had the layer frozen before it (else it was
    made in a run the trial left). Without reasons in the results the last written change
    holds; a freeze unless the frozen flags say the layer ended trainable, an unfreeze only if
    the frozen flags say so (the layer trainable at the end and frozen before it; else the
    last freeze, if the layer ended frozen). A stop: the last written one.

    A freeze row also says whether it was ``carried_out``: the trial reported the layer frozen
    after it (before the layer's next change), or released it (an unfreeze follows); None
    where the results cannot tell.
    """
    rows: list[dict[str, Any]] = []
    path = Path(trial.path) / DECISIONS_FILE if trial.path else None
    if path is not None and path.exists():
        for raw in _read_json_lines(path, wanted=_is_decision) or []:
            rows.append({"trial_id": trial.trial_id, **_decision(raw), "in_force": False})
    prefix = FREEZE_REASON + "/"
    final = _final_reasons(trial, prefix)
    last = _last_iteration(trial)
    logged: dict[str, list[dict[str, Any]]] = {}
    changes: dict[str, list[dict[str, Any]]] = {}  # freezes and unfreezes, in file order
    for row in rows:
        if row["action"] in ("freeze", "unfreeze") and row["layer"] is not None:
            changes.setdefault(row["layer"], []).append(row)
            if row["action"] == "freeze":
                logged.setdefault(row["layer"], []).append(row)
    for layer, made in changes.items():
        if layer not in final:  # no reasons reported: the last written change holds,
            change = made[-1]  # a freeze (as before), unless the flags say the layer
            if change["action"] == "freeze" or change["iteration"] is None:  # ended trainable
                change["in_force"] = (
                    change["action"] != "freeze" or _frozen_at_end(trial, layer) is not False
                )
                continue
            # an unfreeze only if the flags reported say the trial ended under it (else the
            # last freeze, if the layer ended frozen)
            frozen = _frozen_at_end(trial, layer)
            freezes = [r for r in made if r["action"] == "freeze"]
            if frozen and freezes:
                freezes[-1]["in_force"] = True
            elif not frozen and _frozen_before(trial, layer, change["iteration"]):
                change["in_force"] = True
            continue
        if not final[layer]:
            # trainable at the last report: the layer's last change up to that report holds
            # if it is an unfreeze, or a freeze ordered at that report (in force from the
            # next); an earlier freeze with no unfreeze since, none (the trial refused it or
            # released the layer itself)
            reached = [r for r in made if r["iteration"] is None or r["iteration"] <= last]
            if not reached:
                continue
            change = reached[-1]
            if change["action"] == "freeze":
                change["in_force"] = change["iteration"] == last
            elif change["iteration"] is None or _frozen_before(trial, layer, change["iteration"]):
                change["in_force"] = True  # (else: released in a run the trial left)
    for layer, freezes in logged.items():
        if layer not in final or not final[layer]:
            continue  # (above)
        reason = final[layer]
        if reason == keys.FROZEN_BY_TRIAL:
            continue  # the trial's own freeze
        stated = _described(reason, layer)
        held = [
            r
            for r in freezes
            if (r["iteration"], r["rule"]) == (stated["iteration"], stated["rule"])
        ]
        if held:
            held[-1]["in_force"] = True
        else:  # a decision the file lacks (written by a driver since lost): as reported
            rows.append({"trial_id": trial.trial_id, **stated, "in_force": True})
    stops = [row for row in rows if row["action"] == "stop"]
    if stops:
        stops[-1]["in_force"] = True
    for column in trial.results.columns:
        layer = column[len(prefix) :]
        if not column.startswith(prefix) or layer in logged:
            continue
        # a layer the trial froze itself is no decision of the scheduler's
        reasons = [
            r
            for r in trial.results[column]
            if isinstance(r, str) and r.strip() and r != keys.FROZEN_BY_TRIAL
        ]
        if reasons:
            described = _described(reasons[-1], layer)
            in_force = final.get(layer, reasons[-1]) == reasons[-1]  # unknown: it holds
            # (a trial reports a reason for a layer it holds frozen)
            rows.append(
                {"trial_id": trial.trial_id, **described, "in_force": in_force, "carried_out": True}
            )
    for changes_of_layer in changes.values():
        for row, after in zip(changes_of_layer, [*changes_of_layer[1:], None]):
            if row["action"] == "freeze":
                until = after["iteration"] if after is not None else None
                seen = _carried_out(trial, row["layer"], row["iteration"], until)
                if after is not None and after["action"] == "unfreeze":
                    # released by the trial (its learning rate moved) before a report showed it
                    # frozen: a trial releases only a layer it holds frozen
                    seen = True
                # ordered again with no unfreeze between: lost, refused or made in a run the
                # trial left when it was restored; only a frozen flag tells there
                again = after is not None and after["action"] == "freeze"
                row["carried_out"] = None if again and seen is False else seen
    return sorted(rows, key=lambda r: (r["iteration"] is None, r["iteration"] or 0))


def _carried_out(
    trial: _Trial, layer: str, iteration: int | None, until: int | None
) -> bool | None:
    """Whether the trial reported ``layer`` frozen after a freeze ordered at report
    ``iteration`` (up to report ``until``, the layer's next change): False for a freeze it
    never carried out (it refused: a layer that shares a weight with one that trains, say);
    None where its results cannot tell (no frozen flags, or no report after the order)."""
    results = trial.results
    column = f"{keys.FROZEN}/{layer}"
    if (
        iteration is None
        or column not in results.columns
        or "training_iteration" not in results.columns
    ):
        return None
    at = pd.to_numeric(results["training_iteration"], errors="coerce")
    flags = pd.to_numeric(results[column], errors="coerce")
    window = at > iteration
    if until is not None and until > iteration:
        window &= at <= until
    if not window.any():
        return None
    return bool((flags[window] == 1).any())


def _frozen_at_end(trial: _Trial, layer: str) -> bool | None:
    """Whether the trial's last result has ``layer`` frozen (None: no flag there)."""
    column = f"{keys.FROZEN}/{layer}"
    results = trial.results
    if column not in results.columns or not len(results):
        return None
    flag = pd.to_numeric(results[column], errors="coerce").iloc[-1]
    return None if pd.isna(flag) else bool(flag)


def _frozen_before(trial: _Trial, layer: str, iteration: int) -> bool:
    """Whether the run the trial ended in (its results: each iteration's latest value, see
    ``_clean``) reported ``layer`` frozen before ``iteration`` (without frozen flags: True)."""
    results = trial.results
    column = f"{keys.FROZEN}/{layer}"
    if column not in results.columns or "training_iteration" not in results.columns:
        return True
    at = pd.to_numeric(results["training_iteration"], errors="coerce")
    flags = pd.to_numeric(results[column], errors="coerce")
    return bool(((at < iteration) & (flags == 1)).any())


def _last_iteration(trial: _Trial) -> int:
    """The ``training_iteration`` of the trial's last result (0 if unknown)."""
    column = trial.results.get("training_iteration")
    if column is None or not len(column):
        return 0
    last = pd.to_numeric(column, errors="coerce").iloc[-1]
    return int(last) if _is_whole(float(last)) else 0


def _final_reasons(trial: _Trial, prefix: str) -> dict[str, str]:
    """The ``freeze_reason/<layer>`` of the trial's last result, by layer (``""``: trainable
    then; a layer whose column is empty there is left out)."""
    results = trial.results
    if not len(results):
        return {}
    last = results.iloc[-1]
    return {
        column[len(prefix) :]: value.strip()
        for column in results.columns
        if column.startswith(prefix) and isinstance(value := last[column], str)
    }


def _is_decision(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("action"), str) and isinstance(raw.get("rule"), str)


def _decision(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A line of ``ikkuna_decisions.jsonl`` (``Decision.as_dict()``) as a decision row."""
    iteration = raw.get("iteration")
    layer = raw.get("layer")
    values = raw.get("values")
    return {
        "iteration": int(iteration) if _is_whole(iteration) else None,
        "action": str(raw["action"]),
        "layer": layer if isinstance(layer, str) and layer else None,
        "rule": str(raw["rule"]),
        "values": dict(values) if isinstance(values, Mapping) else {},
    }


def _described(reason: str, layer: str) -> dict[str, Any]:
    """A ``freeze_reason/<layer>`` a trial reported (``Decision.describe()``) as a decision
    row; a reason in another format is the row's rule, with no values and no report."""
    match = _DESCRIBED.match(reason.strip())
    if match and match["action"] == "freeze" and match["layer"] == layer:
        values: dict[str, Any] = {}
        for pair in (match["values"] or "").split(", "):
            key, equals, value = pair.partition("=")
            if not pair:
                continue
            if not equals or not key:
                break
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value
        else:
            return {
                "iteration": int(match["iteration"]),
                "action": "freeze",
                "layer": layer,
                "rule": match["rule"],
                "values": values,
            }
    return {"iteration": None, "action": "freeze", "layer": layer, "rule": reason, "values": {}}


def _is_whole(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value == int(value)
    )

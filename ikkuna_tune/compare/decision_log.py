"""The scheduler's decisions on a trial, read from the ``ikkuna_decisions.jsonl`` in its
directory and from the ``freeze_reason/<layer>`` its results carry, as decision rows."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    report order (file order within a report; reasons whose report is unknown last)."""
    rows: list[dict[str, Any]] = []
    path = Path(trial.path) / DECISIONS_FILE if trial.path else None
    if path is not None and path.exists():
        for raw in _read_json_lines(path, wanted=_is_decision) or []:
            rows.append({"trial_id": trial.trial_id, **_decision(raw)})
    frozen = {row["layer"] for row in rows if row["action"] == "freeze"}
    prefix = FREEZE_REASON + "/"
    for column in trial.results.columns:
        layer = column[len(prefix) :]
        if not column.startswith(prefix) or layer in frozen:
            continue
        # a layer the trial froze itself is no decision of the scheduler's
        reasons = [
            r
            for r in trial.results[column]
            if isinstance(r, str) and r.strip() and r != keys.FROZEN_BY_TRIAL
        ]
        if reasons:
            rows.append({"trial_id": trial.trial_id, **_described(reasons[-1], layer)})
    return sorted(rows, key=lambda r: (r["iteration"] is None, r["iteration"] or 0))


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

"""Argument checks, raised where the input enters, each saying what was expected and what was got.

>>> check_int("patience", 2)
2
>>> check_fraction("freeze_at", 1.5)
Traceback (most recent call last):
...
ValueError: Expected `freeze_at` to be a number in (0, 1] but got 1.5
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_bool",
    "check_factor_or_none",
    "check_finite_nonnegative",
    "check_fraction",
    "check_fraction_or_none",
    "check_int",
    "check_int_or_epoch",
    "check_nonnegative",
    "check_positive",
    "check_unit",
    "check_ylims",
]


def _is_number(value: object) -> bool:
    """A real number, NumPy's included (``tune.grid_search(np.linspace(...))``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    """An integer, NumPy's included (``tune.grid_search(np.arange(...))``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False (a string such as ``"False"`` is truthy: refused).

    Examples:
        >>> check_bool("stop", False)
        False
        >>> check_bool("stop", "False")
        Traceback (most recent call last):
        ...
        ValueError: Expected `stop` to be True or False but got 'False'
    """
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be True or False but got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer >= ``minimum`` (not a bool).

    Examples:
        >>> import numpy as np
        >>> check_int("batch_size", 32), check_int("batch_size", np.int64(32))
        (32, 32)
        >>> check_int("patience", 0, minimum=0)
        0
        >>> check_int("patience", True)
        Traceback (most recent call last):
        ...
        ValueError: Expected `patience` to be an integer >= 1 but got True
    """
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum} but got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float if it is a number in (0, 1].

    Examples:
        >>> check_fraction("freeze_at", 1)
        1.0
        >>> check_fraction("freeze_at", 0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `freeze_at` to be a number in (0, 1] but got 0
    """
    if not _is_number(value) or not 0 < value <= 1:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a number in (0, 1] but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_factor_or_none(name: str, value: object) -> float | None:
    """``value`` as a float if it is a finite number above 1, or None.

    Examples:
        >>> check_factor_or_none("unfreeze_lr_factor", 2), check_factor_or_none("f", None)
        (2.0, None)
        >>> check_factor_or_none("unfreeze_lr_factor", 1.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `unfreeze_lr_factor` to be a number above 1 or None but got 1.0
    """
    if value is None:
        return None
    if not _is_number(value) or not 1 < value < math.inf:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a number above 1 or None but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_fraction_or_none(name: str, value: object) -> float | None:
    """``value`` as a float if it is a number in (0, 1], or None.

    Examples:
        >>> check_fraction_or_none("threshold", 0.5), check_fraction_or_none("threshold", None)
        (0.5, None)
    """
    if value is None:
        return None
    if not _is_number(value) or not 0 < value <= 1:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a number in (0, 1] or None but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_nonnegative(name: str, value: object) -> float:
    """``value`` as a float if it is a number >= 0 (NaN is not).

    Examples:
        >>> check_nonnegative("tolerance", 0)
        0.0
        >>> check_nonnegative("tolerance", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: Expected `tolerance` to be a number >= 0 but got nan
    """
    if not _is_number(value) or not value >= 0:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a number >= 0 but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_finite_nonnegative(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number >= 0.

    Examples:
        >>> check_finite_nonnegative("min_delta", 0.005)
        0.005
        >>> check_finite_nonnegative("min_delta", float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: Expected `min_delta` to be a finite number >= 0 but got inf
    """
    if not _is_number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a finite number >= 0 but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_unit(name: str, value: object) -> float:
    """``value`` as a float if it is a number in [0, 1].

    Examples:
        >>> check_unit("min_travel", 0)
        0.0
        >>> check_unit("min_travel", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: Expected `min_travel` to be a number in [0, 1] but got 1.5
    """
    if not _is_number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a number in [0, 1] but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number > 0.

    Examples:
        >>> check_positive("metric_scale", 100)
        100.0
        >>> check_positive("metric_scale", 0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `metric_scale` to be a finite number > 0 but got 0
    """
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be a finite number > 0 but got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int_or_epoch(name: str, value: object) -> int | str:
    """``value`` if it is ``'epoch'`` or an integer >= 1.

    Examples:
        >>> check_int_or_epoch("frequency", "epoch"), check_int_or_epoch("frequency", 50)
        ('epoch', 50)
    """
    if value == "epoch":
        return "epoch"
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"Expected `{name}` to be an integer >= 1 or 'epoch' but got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_ylims(ylims: object) -> tuple[float, float] | None:
    """``ylims`` as a ``(low, high)`` pair of floats with ``low < high``, or None.

    Examples:
        >>> check_ylims([0, 1])
        (0.0, 1.0)
        >>> check_ylims((1, 0))
        Traceback (most recent call last):
        ...
        ValueError: Expected `ylims` to be None or a pair (low, high) with low < high but got (1, 0)
    """
    if ylims is None:
        return None
    if (
        not isinstance(ylims, (tuple, list))
        or len(ylims) != 2
        or not all(_is_number(v) for v in ylims)
        or not ylims[0] < ylims[1]
    ):
        raise ValueError(
            f"Expected `ylims` to be None or a pair (low, high) with low < high but got {ylims!r}"
        )
    return (float(ylims[0]), float(ylims[1]))

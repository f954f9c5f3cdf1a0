"""Errors from ``ik.watch`` that name the user's call: the call described briefly, and an
error of the same type that says so."""

from __future__ import annotations

__all__ = ["describe_watch_call", "renamed"]


def describe_watch_call(
    model: object,
    optimizer: object,
    depth: object,
    module_filter: object,
    log_dir: object,
    output_fn: object,
) -> str:
    """``ik.watch(...)`` with the arguments given, described briefly (types, not values).

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> describe_watch_call(model, None, 1, (nn.Linear, nn.Conv2d), None, None)
        'ik.watch(model=Sequential, depth=1, module_filter=(Linear, Conv2d))'
    """

    def name(thing: object) -> str:
        return getattr(thing, "__name__", None) or repr(thing)

    parts = [f"model={type(model).__name__}"]
    if optimizer is not None:
        if isinstance(optimizer, (list, tuple)):
            described = "[" + ", ".join(type(o).__name__ for o in optimizer) + "]"
        else:
            described = type(optimizer).__name__
        parts.append(f"optimizer={described}")
    if depth is not None:
        parts.append(f"depth={depth!r}")
    if module_filter is not None:
        if isinstance(module_filter, tuple):
            described = "(" + ", ".join(name(c) for c in module_filter) + ")"
        else:
            described = name(module_filter)
        parts.append(f"module_filter={described}")
    if log_dir is not None:
        parts.append(f"log_dir={str(log_dir)!r}")
    if output_fn is not None:
        parts.append(f"output_fn={name(output_fn)}")
    return f"ik.watch({', '.join(parts)})"


def renamed(error: Exception, text: str) -> Exception:
    """An exception of ``error``'s type saying ``text`` (a RuntimeError if that type cannot
    be made from one message); raise it ``from error``.

    Examples:
        >>> renamed(ValueError("bad depth"), "ik.watch(model=Net): bad depth")
        ValueError('ik.watch(model=Net): bad depth')
        >>> renamed(KeyError("fc"), "ik.watch(model=Net): 'fc'")  # a KeyError quotes its text
        RuntimeError("ik.watch(model=Net): 'fc'")
    """
    try:
        renamed = type(error)(text)
    except Exception:
        return RuntimeError(text)
    return renamed if str(renamed) == text else RuntimeError(text)

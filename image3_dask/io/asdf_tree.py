"""Plain Python values from an ASDF tree (parameter files of stpipe and CRDS)."""

from __future__ import annotations

from typing import Any

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """``value`` with every mapping made a ``dict`` with string keys and every sequence a ``list``.

    ASDF returns its own tagged mapping and sequence types; parameter values are compared and
    merged as plain Python.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

"""Scoped replacement of a library's internal function, for exact speed-ups.

Some libraries the pipeline calls spend most of their time in one slow internal helper whose
result can be had faster with the same outcome (photutils' check of ring peak candidates).
:class:`ScopedPatch` swaps such a helper in only while the pipeline's own code runs, and only
when the library still has it with the shape the replacement was written for; the original is
back as soon as the last user leaves, so other code in the process is not affected for longer.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ScopedPatch"]

log = logging.getLogger(__name__)


class ScopedPatch:
    """``module.name`` replaced while any ``with`` block on this object runs.

    Re-entrant and thread-safe: blocks may nest and overlap across threads; the first one in
    installs the replacement, the last one out restores the original.

    Parameters
    ----------
    module : str
        Dotted name of the module holding the function.
    name : str
        The attribute to replace.
    make : callable
        ``make(original) -> replacement``.
    compatible : callable
        ``compatible(original) -> bool``: whether the original is the function the
        replacement was written for. When it is not, nothing is replaced and the block
        yields `False`.
    """

    def __init__(
        self,
        module: str,
        name: str,
        make: Callable[[Any], Any],
        compatible: Callable[[Any], bool],
    ) -> None:
        self.module = module
        self.name = name
        self._make = make
        self._compatible = compatible
        self._lock = threading.Lock()
        self._users = 0
        self._original: Any = None
        self._installed = False

    def __enter__(self) -> bool:
        with self._lock:
            if self._users == 0:
                self._install()
            self._users += 1
            return self._installed

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._installed:
                setattr(importlib.import_module(self.module), self.name, self._original)
                self._original, self._installed = None, False

    def _install(self) -> None:
        try:
            mod = importlib.import_module(self.module)
            original = getattr(mod, self.name)
            if not self._compatible(original):
                log.debug(
                    "%s.%s is not the expected function: not replaced", self.module, self.name
                )
                return
            replacement = self._make(original)
        except Exception as exc:  # noqa: BLE001 - a speed-up must never break a run
            log.debug("%s.%s not replaced: %s", self.module, self.name, exc)
            return
        setattr(mod, self.name, replacement)
        self._original, self._installed = original, True

"""Arrays a worker process keeps between tasks, least recently used first out.

Tasks of one exposure often run on the same worker: a remote pixel map read whole, or the
block bounds cut from a pixel map, are made once per worker and kept under a key that changes
with the file's content (its ETag, or size and mtime), within a byte or item budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = ["ArrayCache"]


class ArrayCache:
    """A thread-safe, bounded, least-recently-used map from keys to arrays.

    Parameters
    ----------
    max_bytes : int, optional
        Most bytes kept (``nbytes`` of the arrays); the newest array is kept even if larger.
    max_items : int, optional
        Most arrays kept.
    """

    def __init__(self, max_bytes: int | None = None, max_items: int | None = None):
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays kept."""
        return self._nbytes

    def get(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The array kept under ``key``, else ``make()``, kept under it.

        ``make`` runs outside the lock: two threads missing the same key both make it, and
        the last one is kept.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._items[key] = value
            self._nbytes += value.nbytes
            while len(self._items) > 1 and self._over():
                _, dropped = self._items.popitem(last=False)
                self._nbytes -= dropped.nbytes
        return value

    def _over(self) -> bool:
        return (self.max_bytes is not None and self._nbytes > self.max_bytes) or (
            self.max_items is not None and len(self._items) > self.max_items
        )

    def clear(self) -> None:
        """Forget every array."""
        with self._lock:
            self._items.clear()
            self._nbytes = 0

"""Ctrl-C that stops the run even when it lands where Python cannot raise.

Python's SIGINT handler raises :class:`KeyboardInterrupt` at the next bytecode the main thread
runs. When that bytecode belongs to a garbage-collector callback (``distributed`` installs one),
a ``__del__`` method or a weakref callback, Python cannot propagate the exception: it prints
"Exception ignored in ..." and the run goes on to the end, exit code 0, as if nobody had pressed
Ctrl-C. :class:`InterruptGuard` raises such a lost interrupt again in the main thread's ordinary
code, so the command stops and exits with 130.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["REDELIVER_S", "InterruptGuard"]

#: Seconds after a lost interrupt that it is delivered again.
REDELIVER_S = 0.01


class InterruptGuard:
    """Context manager: a Ctrl-C swallowed in an "unraisable" context is raised again.

    Within the block, SIGINT (when it has Python's default handler) records that an interrupt
    is pending and raises :class:`KeyboardInterrupt` as usual. If Python reports that exception
    to :data:`sys.unraisablehook` instead of propagating it, the guard drops the report and
    re-delivers the interrupt a moment later (:data:`REDELIVER_S`) from a timer thread with
    :func:`_thread.interrupt_main`: the main thread then raises it in its ordinary code (were it
    lost again, the same happens again). Delivering it at once would raise it inside the hook
    itself, where it would be lost too. Other unraisable exceptions go to the previous hook.

    Attributes
    ----------
    interrupted : bool
        Whether SIGINT arrived inside the block.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._old_handler: Any = None
        self._old_hook = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> InterruptGuard:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if sys.unraisablehook == self._on_unraisable:
            sys.unraisablehook = self._old_hook
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            self._old_handler = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def _on_unraisable(self, unraisable: Any) -> None:
        if self.interrupted and isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._timer = threading.Timer(REDELIVER_S, _thread.interrupt_main, (signal.SIGINT,))
            self._timer.daemon = True
            self._timer.start()
            return
        self._old_hook(unraisable)

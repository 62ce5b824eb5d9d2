"""A Ctrl-C that lands where Python cannot raise still stops the command."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from image3_dask.cli.interrupt import InterruptGuard


class _InterruptedWhileCollected:
    """An object whose ``__del__`` receives SIGINT: Python cannot raise from there."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)
        total = 0
        for i in range(1000):  # the handler runs at one of these bytecodes, inside __del__
            total += i


def _work(seconds: float = 1.0) -> float:
    """Ordinary Python code, interruptible, for about ``seconds``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.001)
    return time.monotonic() - t0


def test_without_the_guard_the_interrupt_is_lost():
    """The failure the guard exists for (Python's own behaviour)."""
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        _InterruptedWhileCollected()
        assert _work() > 0  # the run would go on
    finally:
        sys.unraisablehook = old
    assert [type(u.exc_value) for u in seen] == [KeyboardInterrupt]


def test_interrupt_in_del_is_raised_again_in_ordinary_code():
    reached_end = False
    with pytest.raises(KeyboardInterrupt), InterruptGuard() as guard:
        _InterruptedWhileCollected()
        _work()
        reached_end = True
    assert guard.interrupted
    assert not reached_end


def test_guard_restores_handler_and_hook_and_passes_other_reports_on():
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with InterruptGuard() as guard:
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler

            class Failing:
                def __del__(self):
                    raise ValueError("in __del__")

            Failing()
        assert sys.unraisablehook == seen.append
    finally:
        sys.unraisablehook = old
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not guard.interrupted
    assert [type(u.exc_value) for u in seen] == [ValueError]


def test_an_ordinary_interrupt_is_raised_once():
    with pytest.raises(KeyboardInterrupt), InterruptGuard() as guard:
        signal.raise_signal(signal.SIGINT)
        _work()
    assert guard.interrupted
    assert _work(0.2) >= 0.2  # nothing pending after the block

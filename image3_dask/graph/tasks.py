"""Submitting named tasks and waiting for them with a progress line per step.

Task keys are tuples ``(step-action, name, token)``: Dask's dashboard groups tasks by the first
element (``resample-tile``, ``outlier-blot``, ...) and shows the name of the tile or exposure;
the token keeps the keys of two runs apart.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from image3_dask.errors import Image3Error

__all__ = ["TaskSpec", "StepFailed", "run_tasks", "submit_tasks", "wait_tasks", "watch_tasks"]

#: Run token -> callbacks ``(key, state)`` told when tasks are submitted and when they end.
_watchers: dict[str, list[Callable[[tuple, str], None]]] = {}


def watch_tasks(token: str, callback: Callable[[tuple, str], None]) -> Callable[[], None]:
    """Be told of the tasks of a run: ``callback(key, state)`` on submission and at the end.

    Parameters
    ----------
    token : str
        Run token (the last element of the keys).
    callback : callable
        Called with the task key and ``"waiting"`` when :func:`run_tasks` submits the task,
        then ``"done"``, ``"failed"`` or ``"cancelled"``; it must be quick and not raise.

    Returns
    -------
    callable
        Call it to stop watching.
    """
    _watchers.setdefault(token, []).append(callback)

    def unwatch() -> None:
        cbs = _watchers.get(token, [])
        if callback in cbs:
            cbs.remove(callback)
        if not cbs:
            _watchers.pop(token, None)

    return unwatch


def _tell(token: str, keys, state: str) -> None:
    for cb in list(_watchers.get(token, ())):
        for key in keys:
            try:
                cb(key, state)
            except Exception:  # a watcher never stops the run
                pass


class StepFailed(Image3Error):
    """A task of a step raised; the message names the step, the task and the cause."""


@dataclass
class TaskSpec:
    """One task: what to call, on what, and under which name."""

    action: str
    name: str
    func: Callable
    args: tuple = ()
    kwargs: dict | None = None


def _bar(label: str, done: int, total: int, t0: float, stream) -> None:
    width = 30
    frac = done / total if total else 1.0
    fill = int(round(width * frac))
    msg = f"\r[{label:<28}] |{'#' * fill}{'.' * (width - fill)}| {done}/{total} {time.perf_counter() - t0:6.1f}s"
    stream.write(msg)
    stream.flush()


def submit_tasks(client, tasks: Sequence[TaskSpec], token: str, retries: int = 1) -> list:
    """Submit tasks to the cluster without waiting; return their futures, in order.

    Parameters
    ----------
    client : distributed.Client
        Where the tasks run.
    tasks : sequence of TaskSpec
        The tasks; arguments should be small (paths, metadata, WCS objects) or futures of
        earlier tasks.
    token : str
        Run token, the last element of every key.
    retries : int
        Times a task is retried when its worker dies (tasks are idempotent).

    Returns
    -------
    list of distributed.Future
        One per task; wait for them with :func:`wait_tasks`.
    """
    futures = []
    for t in tasks:
        key = (t.action, t.name, token)
        futures.append(
            client.submit(t.func, *t.args, key=key, pure=False, retries=retries, **(t.kwargs or {}))
        )
    _tell(token, [f.key for f in futures], "waiting")
    return futures


def wait_tasks(
    client,
    futures: Sequence[Any],
    tasks: Sequence[TaskSpec],
    token: str,
    label: str | None = None,
    progress: bool = True,
    stream=None,
) -> list[Any]:
    """Wait for submitted tasks, show progress, and return their results in order.

    Parameters
    ----------
    client : distributed.Client
        Where the tasks run.
    futures : sequence of distributed.Future
        From :func:`submit_tasks`.
    tasks : sequence of TaskSpec
        The tasks behind ``futures`` (named in error messages).
    token : str
        Run token.
    label : str, optional
        Text of the progress line (default: the first task's action).
    progress : bool
        Draw a progress line on ``stream`` (standard error by default).

    Raises
    ------
    StepFailed
        When a task raises; the other tasks of the call are cancelled.
    """
    from distributed import as_completed

    if not futures:
        return []
    stream = stream or sys.stderr
    label = label or tasks[0].action
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    t0 = time.perf_counter()
    done = 0
    show = progress and stream is not None
    if show:
        _bar(label, 0, len(futures), t0, stream)
    try:
        for fut in as_completed(futures):
            i = index[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                spec = tasks[i]
                _tell(token, [fut.key], "failed")
                if isinstance(exc, Image3Error):
                    raise StepFailed(f"{spec.action} {spec.name}: {exc}") from None
                raise StepFailed(
                    f"{spec.action} {spec.name} failed: {type(exc).__name__}: {exc}"
                ) from exc
            results[i] = fut.result()
            _tell(token, [fut.key], "done")
            done += 1
            if show:
                _bar(label, done, len(futures), t0, stream)
    except BaseException:
        client.cancel(list(futures))
        _tell(token, [f.key for f in futures if f.status != "finished"], "cancelled")
        if show:
            stream.write("\n")
        raise
    if show:
        stream.write("\n")
        stream.flush()
    return results


def run_tasks(
    client,
    tasks: Sequence[TaskSpec],
    token: str,
    label: str | None = None,
    progress: bool = True,
    stream=None,
    retries: int = 1,
) -> list[Any]:
    """Submit tasks to the cluster, show progress, and return their results in order.

    :func:`submit_tasks` then :func:`wait_tasks`; see them for the parameters.

    Raises
    ------
    StepFailed
        When a task raises; the other tasks of the call are cancelled.
    """
    if not tasks:
        return []
    futures = submit_tasks(client, tasks, token, retries=retries)
    return wait_tasks(client, futures, tasks, token, label=label, progress=progress, stream=stream)

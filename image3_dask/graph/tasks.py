"""The run's tasks: submitted with their dependencies, awaited where needed, watched.

Task keys are tuples ``(step-action, name, token)``: Dask's dashboard groups tasks by the first
element (``resample-tile``, ``outlier-flag``, ...) and shows the name of the tile or exposure;
the token keeps the keys of two runs apart. :class:`TaskLedger` submits every task of a run
and tells its :class:`RunWatcher` (the mosaic page) of each one; :func:`resumable` is the one
resume mechanism of the tile and exposure tasks.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image3_dask.errors import Image3Error

log = logging.getLogger("image3_dask")

__all__ = [
    "StepFailed",
    "TaskLedger",
    "TaskSpec",
    "RunWatcher",
    "pickled",
    "resumable",
    "unpickle",
    "with_wcs",
]


class RunWatcher:
    """What a run tells whoever watches it (the mosaic page): override what you need.

    The run calls these from its client thread and from Dask's callback threads; a watcher
    must be quick and thread-safe. Whatever a watcher raises is logged and ignored: watching
    never fails a run (:meth:`TaskLedger.tell`).
    """

    def task_event(self, key: tuple, state: str) -> None:
        """A task was submitted (``waiting``) or ended (``done``, ``failed``, ``cancelled``)."""

    def add_plan(self, plan, exposures, stage: str) -> None:
        """A mosaic plan (output grid, tiles, pixel maps) was made for ``stage``."""

    def add_tiles(self, stage: str, tiles, shape: tuple[int, int]) -> None:
        """``stage`` works on these tiles of a grid of ``shape`` (e.g. the tiled catalog)."""


class StepFailed(Image3Error):
    """A task of a step raised; the message names the step, the task and the cause."""


@dataclass
class TaskSpec:
    """One task: what to call, on what, and under which name.

    Attributes
    ----------
    action : str
        What the task does, as the dashboard groups it (``resample-tile``).
    name : str
        Which tile, exposure or product it does it for.
    func : callable
        The task.
    kwargs : dict
        Keyword arguments of ``func``; small values (paths, metadata, WCS objects) or futures
        of earlier tasks, which Dask replaces by their results.
    after : sequence of Future
        Tasks that must have finished first although ``func`` does not read their results
        (e.g. the tasks writing the files it reads).
    priority : int
        Dask priority: a task whose result the client waits for can pass the tasks queued
        before it.
    """

    action: str
    name: str
    func: Callable
    args: tuple = ()
    kwargs: dict | None = None
    after: Sequence[Any] = ()
    priority: int = 0


def _call_after(func: Callable, _after: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func``; ``_after`` (the results of the tasks it waits for) is not used."""
    return func(*args, **kwargs)


def resumable(
    *,
    manifest: Path,
    stage: str,
    name: str,
    fp: str,
    work: Callable[..., dict],
    outputs: Sequence[Path] = (),
    **kwargs: Any,
) -> dict:
    """Run ``work(**kwargs)`` unless the manifest of store ``manifest`` has ``stage/name`` done.

    The one resume mechanism of the tile and exposure tasks: a task is done when the manifest
    of the Zarr store it writes (:meth:`MosaicStore.mark_done`) holds its fingerprint (what its
    result was made from: inputs, parameters). ``work`` returns a small JSON-able summary,
    recorded with the fingerprint and returned again when the task is reused.

    Parameters
    ----------
    outputs : sequence of Path
        Files ``work`` writes outside the store (a ``_crf`` file). Their size and modification
        time (an object's ETag) are recorded; the task is done only while each is still there,
        unchanged.

    Returns
    -------
    dict
        ``work``'s summary plus ``reused`` (whether it came from the manifest).
    """
    from image3_dask.io.mosaic_store import MosaicStore

    store = MosaicStore(manifest)
    if store.is_done(stage, name, fp):
        done = store.done_info(stage, name)
        done.pop("fingerprint", None)
        written = done.pop("outputs", {})
        if all(written.get(str(p)) == _file_state(p) for p in outputs):
            return {**done, "reused": True}
    info = work(**kwargs)
    record = dict(info)
    if outputs:
        record["outputs"] = {str(p): _file_state(p) for p in outputs}
    store.mark_done(stage, name, fp, record)
    return {**info, "reused": False}


def pickled(obj: Any) -> bytes:
    """``obj`` pickled in one piece, for :func:`unpickle` (cloudpickle when pickle cannot).

    Dask pickles task arguments with their numpy arrays out of band, one message frame per
    array: a gwcs has about 180 of them. 16 tasks holding a gwcs, sent as one graph, took
    0.37-0.45 s until done with the objects as arguments, 0.10-0.24 s with them in one piece.
    """
    import pickle

    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpickle(blob: bytes) -> Any:
    """Task: the object :func:`pickled` made (kept on the cluster as the task's result)."""
    import pickle

    return pickle.loads(blob)  # noqa: S301 - made by this run's client (pickled)


def with_wcs(*, task: Callable[..., Any], info: Any, wcs: Any, **kwargs: Any) -> Any:
    """Task: ``task(info=info.evolve(wcs=wcs), **kwargs)``.

    An exposure reaches a task as a copy without its WCS (``info``) and the future of its
    WCS (``wcs``, see :meth:`~image3_dask.pipeline.context.RunContext.exposure_kwargs`),
    so that its gwcs is serialised once per run rather than once per task.
    """
    return task(info=info.evolve(wcs=wcs), **kwargs)


def _file_state(path: Path) -> list | None:
    """What identifies a file's content (size and mtime, or an object's size and ETag), ``None``
    when it is missing (:func:`~image3_dask.io.storage.stat_token`)."""
    from image3_dask.io.storage import location, stat_token

    try:
        return stat_token(location(path))
    except OSError:
        return None


def _bar(label: str, done: int, total: int, t0: float, stream) -> None:
    width = 30
    frac = done / total if total else 1.0
    fill = int(round(width * frac))
    msg = f"\r[{label:<28}] |{'#' * fill}{'.' * (width - fill)}| {done}/{total} {time.perf_counter() - t0:6.1f}s"
    stream.write(msg)
    stream.flush()


def _submit(client, tasks: Sequence[TaskSpec], token: str, retries: int = 1) -> list:
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
        One per task.
    """
    from dask import delayed

    by_priority: dict[int, list[tuple[int, Any]]] = {}
    for i, t in enumerate(tasks):
        key = (t.action, t.name, token)
        func, args = (
            (_call_after, (t.func, list(t.after), *t.args)) if t.after else (t.func, t.args)
        )
        call = delayed(func, pure=False)(*args, dask_key_name=key, **(t.kwargs or {}))
        by_priority.setdefault(t.priority, []).append((i, call))
    # one graph per priority: a message to the scheduler for all the tasks, not one per task
    futures: list = [None] * len(tasks)
    for priority, calls in by_priority.items():
        done = client.compute(
            [c for _, c in calls], optimize_graph=False, retries=retries, priority=priority
        )
        for (i, _), f in zip(calls, done, strict=True):
            futures[i] = f
    return futures


class TaskLedger:
    """Every task of a run, submitted as soon as it can be and awaited only where needed.

    Steps submit their tasks with futures of earlier tasks as arguments or in
    :attr:`TaskSpec.after`, so that a tile starts as soon as what it reads is written, whatever
    step that belongs to; the client waits (:meth:`wait`) only for results it must look at
    (an alignment to plan the output grid, a background mesh to finish), and for everything
    at the end of the run (:meth:`finish`). When a task fails, the tasks that depend on it fail
    with it; :meth:`wait` then names the first task that failed, in submission order.

    Parameters
    ----------
    client : distributed.Client
        Where the tasks run.
    token : str
        Run token, the last element of every key.
    progress : bool
        Draw progress lines while waiting.
    watcher : RunWatcher, optional
        Told of every task's submission and end, and of the plans (:meth:`tell`).
    """

    def __init__(
        self, client, token: str, progress: bool = True, watcher: RunWatcher | None = None
    ):
        self.client = client
        self.token = token
        self.progress = progress
        self.watcher = watcher or RunWatcher()
        self._entries: list[tuple[TaskSpec, Any]] = []
        self._told: set = set()
        self._lock = threading.Lock()
        #: Name given to the tasks submitted from now on (the pipeline sets the step's name).
        self.step = ""
        self._step_of: dict[Any, str] = {}
        self._done_at: dict[Any, float] = {}

    def submit(self, tasks: Sequence[TaskSpec], retries: int = 1) -> list:
        """Submit ``tasks`` now; return their futures, in order (nothing is awaited)."""
        futures = _submit(self.client, tasks, self.token, retries=retries)
        for f in futures:
            self.tell("task_event", f.key, "waiting")
        with self._lock:
            self._entries.extend(zip(tasks, futures, strict=True))
            self._step_of.update((f.key, self.step) for f in futures)
        for f in futures:
            f.add_done_callback(self._on_done)
        return futures

    def submit_one(self, task: TaskSpec, retries: int = 1):
        """:meth:`submit` for one task; returns its future."""
        return self.submit([task], retries=retries)[0]

    def _on_done(self, fut) -> None:
        state = {"finished": "done", "error": "failed", "cancelled": "cancelled"}.get(
            fut.status, fut.status
        )
        with self._lock:
            if fut.key in self._told:
                return
            self._told.add(fut.key)
            self._done_at[fut.key] = time.perf_counter()
        self.tell("task_event", fut.key, state)

    def tell(self, event: str, *args: Any) -> None:
        """Call the watcher's ``event`` method (:class:`RunWatcher`); never raises."""
        try:
            getattr(self.watcher, event)(*args)
        except Exception as exc:  # watching never fails a run
            log.debug("watcher %s failed: %s", event, exc)

    def last_done(self, step: str) -> float | None:
        """When the last task of ``step`` that has finished ended (``time.perf_counter``)."""
        with self._lock:
            times = [t for k, t in self._done_at.items() if self._step_of.get(k) == step]
        return max(times) if times else None

    def outstanding(self) -> list[tuple[TaskSpec, Any]]:
        """Tasks submitted and not yet known to be finished."""
        with self._lock:
            return [(t, f) for t, f in self._entries if f.status not in ("finished", "cancelled")]

    def _first_failure(self) -> StepFailed | None:
        with self._lock:
            entries = list(self._entries)
        for spec, fut in entries:
            if fut.status == "error":
                exc = fut.exception()
                if isinstance(exc, Image3Error):
                    return StepFailed(f"{spec.action} {spec.name}: {exc}")
                err = StepFailed(f"{spec.action} {spec.name} failed: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                return err
        return None

    def wait(self, futures: Sequence[Any], label: str) -> list[Any]:
        """Wait for ``futures`` (of this ledger) with a progress line; return their results.

        Raises
        ------
        StepFailed
            Naming the first task of the run that failed (the cause when the awaited tasks
            failed because a task they depend on did).
        """
        from distributed import as_completed

        if not futures:
            return []
        specs = {f.key: t for t, f in self._entries_for(futures)}
        t0 = time.perf_counter()
        stream = sys.stderr if self.progress else None
        try:  # the first bar inside too: Ctrl-C may come while it is drawn
            if stream is not None:
                _bar(label, 0, len(futures), t0, stream)
            for done, fut in enumerate(as_completed(futures), start=1):
                if fut.status != "finished":
                    break
                if stream is not None:
                    _bar(label, done, len(futures), t0, stream)
        finally:  # the bar's line is ended also when Ctrl-C interrupts the wait
            if stream is not None:
                stream.write("\n")
                stream.flush()
        if any(f.status == "error" for f in futures):
            failure = self._first_failure()
            if failure is None:  # pragma: no cover - an erred future is in the ledger
                bad = next(f for f in futures if f.status == "error")
                failure = StepFailed(f"{specs[bad.key].action} {specs[bad.key].name} failed")
            raise failure
        if any(f.status == "cancelled" for f in futures):
            raise StepFailed(f"{label}: tasks were cancelled")
        return self.client.gather(list(futures))

    def forget(self, futures: Sequence[Any]) -> None:
        """Drop finished ``futures`` whose results the caller holds (Dask may free them)."""
        keys = {f.key for f in futures}
        with self._lock:
            self._entries = [(t, f) for t, f in self._entries if f.key not in keys]

    def results(self, futures: Sequence[Any]) -> list[Any]:
        """The results of finished ``futures`` (after :meth:`finish`)."""
        return self.client.gather(list(futures)) if futures else []

    def _entries_for(self, futures: Sequence[Any]) -> list[tuple[TaskSpec, Any]]:
        keys = {f.key for f in futures}
        with self._lock:
            return [(t, f) for t, f in self._entries if f.key in keys]

    def finish(self, label: str = "finishing") -> None:
        """Wait for every task submitted so far (and those they submit meanwhile)."""
        while True:
            pending = [f for _, f in self.outstanding()]
            if not pending:
                return
            self.wait(pending, label)

    def cancel(self) -> None:
        """Cancel every task not finished (the run failed); never raises."""
        pending = [f for _, f in self.outstanding()]
        if pending:
            try:
                self.client.cancel(pending)
            except Exception:  # the cluster may be gone already
                pass

"""A live picture of a run: the mosaic's tiles coloured by state, with the exposures over them.

:class:`MosaicPage` serves, from the process that holds the Dask client (the machine where
``image3-dask run`` was typed, also when the scheduler is remote), a small web page on
``127.0.0.1``: the output grid drawn as its tiles, each coloured by the state of its latest task
(``resample-tile``, ``outlier-median``, ``catalog-detect``...), and the exposures' footprints
coloured by the state of their latest per-exposure task (``tweakreg-catalog``,
``outlier-flag``...). The page polls ``/state.json`` every second.

Where the states come from:

- the run's :class:`~image3_dask.graph.tasks.TaskLedger` tells the :class:`MosaicMonitor` (its
  :class:`~image3_dask.graph.tasks.RunWatcher`) when tasks are submitted (``waiting``) and when
  they end (``done``, ``failed``, ``cancelled``); this is kept client-side, so a tile stays done
  after the scheduler has forgotten its task;
- ``running`` comes from the scheduler (:meth:`distributed.Client.processing`, a built-in
  scheduler call, so nothing of image3-dask need be installed where the scheduler runs), asked
  at most every half second and only while someone watches the page;
- the tiles and the output grid come from :func:`image3_dask.graph.plan.make_plan`, which hands
  each plan to the watcher (and the tiles of the tiled source catalog likewise); the
  footprints are the exposures' edges mapped through their WCS and the grid's WCS.

The page itself (HTML, CSS and JavaScript) is the package data file ``mosaic_page.html`` beside
this module, read with :mod:`importlib.resources`.

Access (:mod:`image3_dask.service.local_web`, shared with the jobs page): the page listens on
``127.0.0.1`` and answers only requests that carry the run's random token (``?token=...`` in the
URL the run prints, then a cookie) and whose ``Host`` header names this machine; others get
``403``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from image3_dask.graph.tasks import RunWatcher
from image3_dask.service.local_web import LOCAL_HOSTS, TokenPage, host_name

log = logging.getLogger("image3_dask")

__all__ = [
    "LOCAL_HOSTS",
    "STATES",
    "MosaicMonitor",
    "MosaicPage",
    "footprint_polygon",
    "host_name",
    "scheduler_state",
    "start_mosaic_page",
]

#: States drawn on the page, in legend order. ``idle``: no task for this tile yet.
STATES = ("idle", "waiting", "running", "done", "failed", "cancelled")

#: Scheduler task states (``TaskState.state``) -> page state.
_SCHEDULER_STATES = {
    "released": "waiting",
    "waiting": "waiting",
    "no-worker": "waiting",
    "queued": "waiting",
    "processing": "running",
    "memory": "done",
    "forgotten": "done",
    "erred": "failed",
}

#: make_plan's ``stage`` -> first word of the actions of the tile tasks on that plan's tiles.
_STAGE_PREFIX = {
    "outlier_detection": "outlier-",
    "resample": "resample-",
    "source_catalog": "catalog-",
}


_PART_OF = re.compile(r"(\S+?)(?:-s\d+)?(?:\s.*)?$")


def subject(name: str) -> str:
    """The tile or exposure a task works on, from its name.

    A task name is the tile's or exposure's name, or that name followed by its piece
    (``r000c000 2/7``, ``jw..._mirimage overlaps 1/3``) or by the segment it measures alone
    (``r000c000-s12``).
    """
    m = _PART_OF.match(name)
    return m.group(1) if m else name


def scheduler_state(state: str | None) -> str:
    """The page state of a scheduler task state (``processing`` -> ``running``, ...).

    Parameters
    ----------
    state : str or None
        A :class:`distributed.scheduler.TaskState` state, or a client future status
        (``pending``, ``finished``, ``error``, ``cancelled``, ``lost``); `None` for no task.

    Returns
    -------
    str
        One of :data:`STATES`.
    """
    if state is None:
        return "idle"
    if state in _SCHEDULER_STATES:
        return _SCHEDULER_STATES[state]
    return {
        "pending": "waiting",
        "lost": "waiting",
        "finished": "done",
        "error": "failed",
        "cancelled": "cancelled",
    }.get(state, "waiting")


def footprint_polygon(
    in_wcs, in_shape: Sequence[int], grid_wcs, *, points_per_side: int = 8
) -> list[list[float]]:
    """An exposure's outline on the output grid: its pixel edges mapped through both WCS.

    Parameters
    ----------
    in_wcs : gwcs.WCS
        Exposure WCS (pixel -> world).
    in_shape : (int, int)
        ``(ny, nx)`` of the exposure.
    grid_wcs : gwcs.WCS
        Output grid WCS.
    points_per_side : int, optional
        Points along each edge (distortion bends the edges).

    Returns
    -------
    list of [float, float]
        ``[x, y]`` output pixel coordinates around the exposure (points that do not map are
        left out), rounded to 0.01 pixel.
    """
    ny, nx = int(in_shape[0]), int(in_shape[1])
    t = np.linspace(0.0, 1.0, points_per_side, endpoint=False)
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    xs = np.r_[x0 + t * (x1 - x0), np.full(t.size, x1), x1 - t * (x1 - x0), np.full(t.size, x0)]
    ys = np.r_[np.full(t.size, y0), y0 + t * (y1 - y0), np.full(t.size, y1), y1 - t * (y1 - y0)]
    world = in_wcs(xs, ys, with_bounding_box=False)
    ox, oy = grid_wcs.invert(*world[:2], with_bounding_box=False)
    ox = np.asarray(ox, dtype=float)
    oy = np.asarray(oy, dtype=float)
    ok = np.isfinite(ox) & np.isfinite(oy)
    return [[round(float(a), 2), round(float(b), 2)] for a, b in zip(ox[ok], oy[ok], strict=True)]


class MosaicMonitor(RunWatcher):
    """What the page shows of one run: layouts of tiles, footprints, and every task's state.

    Parameters
    ----------
    token : str
        The run token (last element of the run's task keys).

    Notes
    -----
    Thread-safe: the pipeline (main thread), the Dask client's callbacks and the page's
    request threads call it.
    """

    def __init__(self, token: str):
        self.token = token
        self.status = "running"
        self.message = ""
        self.t0 = time.time()
        self._lock = threading.Lock()
        self._tasks: dict[tuple[str, str], str] = {}
        self._order: dict[tuple[str, str], int] = {}
        self._actions: list[str] = []
        self._running: set[tuple[str, str]] = set()
        self._layouts: dict[str, dict[str, Any]] = {}
        self._layout_seq = 0
        self._seq = 0

    # -- notifications --------------------------------------------------------------------

    def task_event(self, key: tuple, state: str) -> None:
        """Record a task's state (``waiting``, ``done``, ``failed``, ``cancelled``).

        Parameters
        ----------
        key : tuple
            ``(action, name, token)``; keys of other runs are ignored.
        state : str
            One of :data:`STATES` (or a scheduler/future state, mapped).
        """
        if len(key) < 3 or key[-1] != self.token:
            return
        state = state if state in STATES else scheduler_state(state)
        k = (str(key[0]), str(key[1]))
        with self._lock:
            if k[0] not in self._actions:
                self._actions.append(k[0])
            if state == "waiting" or k not in self._order:
                self._seq += 1
                self._order[k] = self._seq
            if state == "cancelled" and self._tasks.get(k) in ("done", "failed"):
                return
            self._tasks[k] = state

    def set_running(self, keys: Iterable) -> None:
        """Replace the set of this run's tasks that the scheduler is processing.

        Parameters
        ----------
        keys : iterable
            Task keys (tuples or lists) of any run; others than this run's are ignored.
        """
        running = set()
        for key in keys:
            if isinstance(key, (tuple, list)) and len(key) >= 3 and key[-1] == self.token:
                running.add((str(key[0]), str(key[1])))
        with self._lock:
            self._running = running

    def add_plan(self, plan, exposures: Sequence, stage: str) -> None:
        """Show a plan's output grid and tiles, with the exposures' footprints on that grid.

        Parameters
        ----------
        plan : MosaicPlan
            From :func:`image3_dask.graph.plan.make_plan`.
        exposures : sequence of ExposureInfo
            The exposures (their WCS give the footprints).
        stage : str
            ``outlier_detection`` or ``resample``: names the layout and the tasks drawn on it.
        """
        footprints = []
        for e in exposures:
            try:
                points = footprint_polygon(e.wcs, e.shape, plan.grid.wcs)
            except Exception as exc:  # a WCS that does not invert: no outline, no failure
                log.debug("mosaic page: no footprint for %s (%s)", e.name, exc)
                points = []
            footprints.append({"name": e.name, "points": points})
        self.add_tiles(stage, plan.tiles, plan.grid.shape, footprints=footprints)

    def add_tiles(
        self,
        stage: str,
        tiles: Sequence,
        grid_shape: Sequence[int],
        *,
        footprints: list[dict] | None = None,
        prefix: str | None = None,
    ) -> None:
        """Show a set of tiles on a grid (replacing an earlier layout of the same stage).

        Parameters
        ----------
        stage : str
            Step name; the layout's title.
        tiles : sequence of Tile
            Tiles with ``name``, ``y0``, ``y1``, ``x0``, ``x1``.
        grid_shape : (int, int)
            ``(ny, nx)`` of the grid.
        footprints : list of dict, optional
            ``{"name", "points"}`` per exposure; by default those of the latest layout on a
            grid of the same shape.
        prefix : str, optional
            First word of the actions of the tasks run on these tiles (default from ``stage``:
            ``resample-``, ``outlier-``, ``catalog-``).
        """
        shape = [int(grid_shape[0]), int(grid_shape[1])]
        with self._lock:
            if footprints is None:
                same = [lay for lay in self._layouts.values() if lay["grid"] == shape]
                footprints = max(same, key=lambda lay: lay["seq"])["footprints"] if same else []
            self._layout_seq += 1
            self._layouts[stage] = {
                "id": stage,
                "seq": self._layout_seq,
                "prefix": prefix or _STAGE_PREFIX.get(stage, stage.split("_")[0] + "-"),
                "grid": shape,
                "tiles": [
                    {"name": t.name, "y0": t.y0, "y1": t.y1, "x0": t.x0, "x1": t.x1} for t in tiles
                ],
                "footprints": footprints,
            }

    def finish(self, status: str, message: str = "") -> None:
        """Mark the run ended (``done`` or ``failed``).

        Parameters
        ----------
        status : str
            ``done`` or ``failed``.
        message : str, optional
            Shown on the page (the error of a failed run).
        """
        with self._lock:
            self.status = status
            self.message = message
            self._running = set()

    # -- the page's view ------------------------------------------------------------------

    def _state_of(self, k: tuple[str, str]) -> str:
        s = self._tasks.get(k)
        if s is None:
            return "idle"
        if s == "waiting" and k in self._running:
            return "running"
        return s

    def _latest(self, actions: Iterable[tuple[str, str]]) -> tuple[str | None, str]:
        best, order = None, -1
        for k in actions:
            o = self._order.get(k, -1)
            if o > order:
                best, order = k, o
        if best is None:
            return None, "idle"
        return best[0], self._state_of(best)

    def state(self) -> dict[str, Any]:
        """The JSON document of ``/state.json``.

        Returns
        -------
        dict
            ``status``, ``elapsed``, ``actions`` (counts per state and action, in the order
            the actions first ran), ``layouts`` (grid shape, tiles and footprints, each with
            its latest action and state) and ``current`` (the layout of the latest tile task).
        """
        with self._lock:
            by_name: dict[str, list[tuple[str, str]]] = {}
            for k in self._tasks:
                by_name.setdefault(subject(k[1]), []).append(k)
            counts = {a: dict.fromkeys(STATES[1:], 0) for a in self._actions}
            for k in self._tasks:
                counts[k[0]][self._state_of(k)] += 1
            layouts = []
            current, current_order = None, -1
            for lay in sorted(self._layouts.values(), key=lambda x: x["seq"]):
                pre = lay["prefix"]
                tiles = []
                for t in lay["tiles"]:
                    mine = [k for k in by_name.get(t["name"], ()) if k[0].startswith(pre)]
                    action, st = self._latest(mine)
                    tiles.append({**t, "state": st, "action": action})
                    for k in mine:
                        if self._order[k] > current_order:
                            current, current_order = lay["id"], self._order[k]
                fps = []
                for f in lay["footprints"]:
                    action, st = self._latest(by_name.get(f["name"], ()))
                    fps.append({**f, "state": st, "action": action})
                layouts.append(
                    {
                        "id": lay["id"],
                        "grid": lay["grid"],
                        "prefix": pre,
                        "tiles": tiles,
                        "footprints": fps,
                    }
                )
            if current is None and layouts:
                current = layouts[-1]["id"]
            return {
                "token": self.token,
                "status": self.status,
                "message": self.message,
                "elapsed": round(time.time() - self.t0, 1),
                "states": list(STATES),
                "actions": counts,
                "layouts": layouts,
                "current": current,
            }


@functools.cache
def _page_html() -> bytes:
    """The page's HTML (the package data file ``mosaic_page.html``), UTF-8 encoded."""
    return importlib.resources.files(__package__).joinpath("mosaic_page.html").read_bytes()


class MosaicPage(TokenPage):
    """The web page of one run, served from a thread of this process.

    Parameters
    ----------
    monitor : MosaicMonitor
        The run's states.
    client : distributed.Client, optional
        Asked which tasks are running (:meth:`distributed.Client.processing`).
    host : str
        Interface to listen on (default: this machine only).
    port : int
        Port; 0 picks a free one.
    poll_interval : float
        Least seconds between two questions to the scheduler.
    token : str, optional
        The secret every request must carry (default: 32 random bytes, URL-safe).

    Notes
    -----
    The token, its cookie and the ``Host`` check are :class:`~image3_dask.service.local_web.
    TokenPage`'s.
    """

    title = "Mosaic page"
    cookie_prefix = "image3_mosaic_token"

    def __init__(
        self,
        monitor: MosaicMonitor,
        client=None,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_interval: float = 0.5,
        token: str | None = None,
    ):
        super().__init__(host=host, port=port, token=token)
        self.monitor = monitor
        self.client = client
        self.poll_interval = poll_interval
        self._last_poll = 0.0
        self._poll_lock = threading.Lock()
        #: Disconnects the monitor from the run's tasks (set by :func:`start_mosaic_page`).
        self._watched = threading.Event()
        self._final_served = threading.Event()

    def respond(self, path: str) -> tuple[bytes, str] | None:
        """``/``: the page; ``/state.json``: :meth:`state`; anything else: `None` (404)."""
        if path in ("/", "/index.html"):
            return _page_html(), "text/html; charset=utf-8"
        if path == "/state.json":
            return json.dumps(self.state()).encode(), "application/json"
        return None

    def stop(self, linger: float = 0.0) -> None:
        """Stop serving, free the port, and stop listening to the run's tasks.

        Parameters
        ----------
        linger : float
            When the page is being watched, wait up to this many seconds for it to fetch the
            final state (after :meth:`MosaicMonitor.finish`), so that the picture left in the
            browser is the last one.
        """
        if linger > 0 and self._watched.is_set() and self.monitor.status != "running":
            self._final_served.wait(linger)
        super().stop()

    def poll(self) -> None:
        """Ask the scheduler which tasks are running (at most every ``poll_interval``)."""
        if self.client is None or self.monitor.status != "running":
            return
        if time.monotonic() - self._last_poll < self.poll_interval:
            return
        if not self._poll_lock.acquire(blocking=False):
            return  # another request is asking; it will update the monitor
        try:
            processing = self.client.processing()
            self.monitor.set_running(k for keys in processing.values() for k in keys)
        except Exception as exc:  # scheduler gone or busy: keep the last picture
            log.debug("mosaic page: cannot ask the scheduler (%s)", exc)
        finally:
            self._last_poll = time.monotonic()
            self._poll_lock.release()

    def state(self) -> dict[str, Any]:
        """The monitor's state after a poll of the scheduler."""
        self.poll()
        state = self.monitor.state()
        self._watched.set()
        if state["status"] != "running":
            self._final_served.set()
        return state


def start_mosaic_page(client, token: str, port: int = 0, host: str = "127.0.0.1") -> MosaicPage:
    """Start the page of a run and connect its monitor to the run's tasks.

    Parameters
    ----------
    client : distributed.Client
        The run's client.
    token : str
        The run token.
    port : int
        Port to listen on; 0 picks a free one.
    host : str
        Interface to listen on.

    Returns
    -------
    MosaicPage
        Started; call :meth:`MosaicPage.stop` at the end of the run.
    """
    monitor = MosaicMonitor(token)
    return MosaicPage(monitor, client, host=host, port=port).start()

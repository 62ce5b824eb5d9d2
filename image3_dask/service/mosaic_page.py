"""A live picture of a run: the mosaic's tiles coloured by state, with the exposures over them.

:class:`MosaicPage` serves, from the process that holds the Dask client (the machine where
``image3-dask run`` was typed, also when the scheduler is remote), a small web page on
``127.0.0.1``: the output grid drawn as its tiles, each coloured by the state of its latest task
(``resample-tile``, ``outlier-median``, ``catalog-detect``...), and the exposures' footprints
coloured by the state of their latest per-exposure task (``tweakreg-catalog``,
``outlier-flag``...). The page polls ``/state.json`` every second.

Where the states come from:

- :func:`image3_dask.graph.tasks.run_tasks` tells the :class:`MosaicMonitor` of the run (through
  :func:`~image3_dask.graph.tasks.watch_tasks`) when tasks are submitted (``waiting``) and when
  they end (``done``, ``failed``, ``cancelled``); this is kept client-side, so a tile stays done
  after the scheduler has forgotten its task;
- ``running`` comes from the scheduler (:meth:`distributed.Client.processing`, a built-in
  scheduler call, so nothing of image3-dask need be installed where the scheduler runs), asked
  at most every half second and only while someone watches the page;
- the tiles and the output grid come from :func:`image3_dask.graph.plan.make_plan`, which hands
  each plan to ``ctx.monitor`` (and the tiles of the tiled source catalog likewise); the
  footprints are the exposures' edges mapped through their WCS and the grid's WCS.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

log = logging.getLogger("image3_dask")

__all__ = [
    "STATES",
    "MosaicMonitor",
    "MosaicPage",
    "footprint_polygon",
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


class MosaicMonitor:
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
                by_name.setdefault(k[1], []).append(k)
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


class _Handler(BaseHTTPRequestHandler):
    page: MosaicPage  # set on the subclass made per server

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            body, ctype = _HTML.encode(), "text/html; charset=utf-8"
        elif path == "/state.json":
            body, ctype = json.dumps(self.page.state()).encode(), "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("mosaic page: " + format, *args)


class MosaicPage:
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
    """

    def __init__(
        self,
        monitor: MosaicMonitor,
        client=None,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_interval: float = 0.5,
    ):
        self.monitor = monitor
        self.client = client
        self.poll_interval = poll_interval
        self._last_poll = 0.0
        self._poll_lock = threading.Lock()
        handler = type("MosaicPageHandler", (_Handler,), {"page": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        #: Disconnects the monitor from the run's tasks (set by :func:`start_mosaic_page`).
        self.unwatch: Callable[[], None] | None = None
        self._watched = threading.Event()
        self._final_served = threading.Event()

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` of the page."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> MosaicPage:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="image3-dask-mosaic-page", daemon=True
        )
        self._thread.start()
        return self

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
        if self.unwatch is not None:
            self.unwatch()
            self.unwatch = None
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MosaicPage:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

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
    from image3_dask.graph.tasks import watch_tasks

    monitor = MosaicMonitor(token)
    page = MosaicPage(monitor, client, host=host, port=port).start()
    page.unwatch = watch_tasks(token, monitor.task_event)
    return page


_HTML = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>image3-dask mosaic</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 0; background: #1d1f21; color: #ddd; }
 header { padding: 8px 14px; display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
 h1 { font-size: 16px; margin: 0; }
 #status.done { color: #6c6; } #status.failed { color: #f66; }
 #layouts button { background: #333; color: #ddd; border: 1px solid #555; padding: 3px 9px;
   margin-right: 4px; border-radius: 3px; cursor: pointer; }
 #layouts button.on { background: #4a6fa5; border-color: #8ab; color: #fff; }
 main { display: flex; gap: 14px; padding: 0 14px 14px; }
 #view { flex: 1; min-width: 0; }
 svg { width: 100%; height: calc(100vh - 70px); background: #111; display: block; }
 rect.tile { stroke: #000; vector-effect: non-scaling-stroke; stroke-width: 1; }
 polygon.footprint { fill-opacity: 0.06; stroke-width: 2; vector-effect: non-scaling-stroke; }
 aside { flex: 0 0 330px; font-size: 12px; overflow: hidden; }
 td:first-child { white-space: nowrap; }
 table { border-collapse: collapse; width: 100%; }
 td, th { padding: 2px 4px; text-align: right; } td:first-child, th:first-child { text-align: left; }
 .sw { display: inline-block; width: 11px; height: 11px; margin: 0 4px 0 10px; vertical-align: -1px; }
 #legend { margin: 6px 0 12px; }
</style></head>
<body>
<header><h1>image3-dask mosaic</h1><span id="status">connecting...</span>
 <span id="layouts"></span><span id="current"></span></header>
<main><div id="view"><svg id="mosaic" xmlns="http://www.w3.org/2000/svg"></svg></div>
<aside><div id="legend"></div><table id="actions"></table><p id="message"></p></aside></main>
<script>
"use strict";
// running: on a worker (executing, or the next in its queue: the scheduler's "processing")
const COLORS = {idle: "#3a3d41", waiting: "#7d8590", running: "#e8a33c", done: "#3fa45b",
                failed: "#d9453d", cancelled: "#6b4f7a"};
const FOOT = {idle: "#9ecbff", waiting: "#9ecbff", running: "#ffd24d", done: "#7fd6ff",
              failed: "#ff6b6b", cancelled: "#c9a0dc"};
const SVGNS = "http://www.w3.org/2000/svg";
let chosen = null, drawn = null, failures = 0;
const svg = document.getElementById("mosaic");
document.getElementById("legend").innerHTML = Object.entries(COLORS).map(
  ([s, c]) => `<span class="sw" style="background:${c}"></span>${s}`).join("");

function el(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function build(lay) {
  const [ny, nx] = lay.grid, pad = Math.max(nx, ny) * 0.03;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `${-pad} ${-pad} ${nx + 2 * pad} ${ny + 2 * pad}`);
  // y grows upwards, as the mosaic is shown by astronomers (origin lower left)
  const g = el("g", {transform: `translate(0 ${ny}) scale(1 -1)`, id: "grid"}, svg);
  for (const t of lay.tiles) {
    const r = el("rect", {class: "tile", "data-name": t.name, x: t.x0, y: t.y0,
                          width: t.x1 - t.x0, height: t.y1 - t.y0}, g);
    el("title", {}, r);
  }
  for (const f of lay.footprints) {
    if (!f.points.length) continue;
    const p = el("polygon", {class: "footprint", "data-name": f.name,
      points: f.points.map(([x, y]) => `${x},${y}`).join(" ")}, g);
    el("title", {}, p);
  }
  drawn = lay.id + ":" + lay.tiles.length + ":" + lay.grid.join("x");
}

function paint(lay) {
  const tiles = new Map(lay.tiles.map(t => [t.name, t]));
  for (const r of svg.querySelectorAll("rect.tile")) {
    const t = tiles.get(r.dataset.name);
    r.setAttribute("data-state", t.state);
    r.setAttribute("fill", COLORS[t.state]);
    r.firstChild.textContent = `${t.name} [${t.y0}:${t.y1}, ${t.x0}:${t.x1}] ` +
      (t.action ? `${t.action}: ${t.state}` : "no task yet");
  }
  const fps = new Map(lay.footprints.map(f => [f.name, f]));
  for (const p of svg.querySelectorAll("polygon.footprint")) {
    const f = fps.get(p.dataset.name);
    p.setAttribute("data-state", f.state);
    p.setAttribute("stroke", FOOT[f.state]);
    p.setAttribute("fill", FOOT[f.state]);
    p.firstChild.textContent = f.name + (f.action ? ` (${f.action}: ${f.state})` : "");
  }
}

function render(s) {
  const st = document.getElementById("status");
  st.textContent = (s.status === "running" ? "running" : "run " + s.status) + `, ${s.elapsed} s`;
  st.className = s.status;
  document.getElementById("message").textContent = s.message || "";
  const ids = s.layouts.map(l => l.id);
  const want = chosen && ids.includes(chosen) ? chosen : s.current;
  document.getElementById("layouts").innerHTML = s.layouts.map(l =>
    `<button data-id="${l.id}" class="${l.id === want ? "on" : ""}">${l.id}</button>`).join("");
  for (const b of document.querySelectorAll("#layouts button"))
    b.onclick = () => { chosen = b.dataset.id === s.current ? null : b.dataset.id; render(s); };
  // one row per kind of task; the cancelled column only when there are some
  const counts = Object.values(s.actions);
  const cols = s.states.slice(1).filter(k => k !== "cancelled" || counts.some(c => c[k]));
  const rows = Object.entries(s.actions).map(([a, c]) =>
    `<tr><td>${a}</td>` + cols.map(k => `<td>${c[k] || ""}</td>`).join("") + "</tr>");
  document.getElementById("actions").innerHTML =
    "<tr><th>task</th>" + cols.map(k => `<th>${k}</th>`).join("") + "</tr>" + rows.join("");
  const lay = s.layouts.find(l => l.id === want);
  if (!lay) {
    document.getElementById("current").textContent = "waiting for the output grid...";
    return;
  }
  const n = lay.tiles.filter(t => t.state === "done").length;
  document.getElementById("current").textContent =
    `${lay.grid[1]} x ${lay.grid[0]} px, ${lay.tiles.length} tiles, ${n} done`;
  const key = lay.id + ":" + lay.tiles.length + ":" + lay.grid.join("x");
  if (key !== drawn) build(lay);
  paint(lay);
}

async function tick() {
  try {
    const r = await fetch("state.json", {cache: "no-store"});
    if (!r.ok) throw new Error(r.status);
    const s = await r.json();
    failures = 0;
    render(s);
    document.body.dataset.status = s.status;
  } catch (e) {
    if (++failures > 1) {
      document.getElementById("status").textContent =
        "disconnected: the run has ended or its client stopped (last picture kept)";
    }
  }
  setTimeout(tick, 1000);
}
tick();
</script></body></html>
"""

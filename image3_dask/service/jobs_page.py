"""A web page listing the jobs of a scheduler: ``image3-dask serve``.

:class:`JobsPage` serves, from the process that runs ``image3-dask serve --scheduler ...``, a
page with one row per job the scheduler knows (the records of
:mod:`image3_dask.service.status`, published by submitted jobs): state, step, progress,
start and end, products, error, and links to the Dask dashboard and to a job's mosaic page when
its record names one (``mosaic_page``: a submitted job's driver serves the run's mosaic page
on its worker's loopback interface and records the address, so the link opens from that host,
or through ``ssh -L``). The page fetches ``/jobs.json`` every two
seconds; the scheduler is asked at most once per ``poll_interval`` whatever the number of
viewers.

Access is the mosaic page's (:mod:`image3_dask.service.local_web`): ``127.0.0.1`` unless told
otherwise, a random token in the printed URL then a cookie, and ``Host`` headers naming another
machine refused. The page itself is the package data file ``jobs_page.html``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from image3_dask.service.local_web import TokenPage
from image3_dask.service.status import STATES, get_jobs, job_progress

log = logging.getLogger("image3_dask")

__all__ = ["JobsPage", "job_rows"]


@functools.cache
def _page_html() -> bytes:
    """The page's HTML (the package data file ``jobs_page.html``), UTF-8 encoded."""
    return importlib.resources.files(__package__).joinpath("jobs_page.html").read_bytes()


def _http_url(value: Any) -> str | None:
    """``value`` when it is an ``http(s)://`` URL (the only links the page draws), else `None`."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return value
    return None


def job_rows(jobs: dict[str, dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """The jobs as the page shows them: newest first, each with its progress and elapsed time.

    Parameters
    ----------
    jobs : dict
        Job records by id (:func:`image3_dask.service.status.get_jobs`).
    now : float, optional
        Unix time the elapsed time of running jobs is counted to (default: now).

    Returns
    -------
    list of dict
        Per job: ``job``, ``state``, ``step``, ``progress`` (text, as ``image3-dask status``
        prints it), ``steps``, ``steps_done``, ``tasks``, ``attempt``, ``submitted``,
        ``started``, ``finished`` (Unix times or `None`), ``elapsed`` (seconds or `None`),
        ``product``, ``output_dir``, ``products`` (kind -> path), ``error``, ``worker`` and
        ``mosaic_page`` (an ``http(s)://`` URL or `None`).
    """
    now = time.time() if now is None else now
    rows = []
    for job_id, rec in jobs.items():
        start = rec.get("started")
        end = rec.get("finished") or (now if rec.get("state") == "running" else None)
        rows.append(
            {
                "job": str(rec.get("job", job_id)),
                "state": rec.get("state", "?"),
                "step": rec.get("step"),
                "progress": job_progress(rec),
                "steps": list(rec.get("steps") or []),
                "steps_done": list(rec.get("steps_done") or []),
                "tasks": dict(rec.get("tasks") or {}),
                "attempt": rec.get("attempt"),
                "submitted": rec.get("submitted"),
                "started": start,
                "finished": rec.get("finished"),
                "elapsed": round(end - start, 1) if start and end else None,
                "product": rec.get("product"),
                "output_dir": rec.get("output_dir"),
                "products": dict(rec.get("products") or {}),
                "error": rec.get("error") or "",
                "worker": rec.get("worker"),
                "mosaic_page": _http_url(rec.get("mosaic_page")),
            }
        )
    rows.sort(key=lambda r: (r["submitted"] or 0, r["job"]), reverse=True)
    return rows


class JobsPage(TokenPage):
    """The page of a scheduler's jobs, served from a thread of this process.

    Parameters
    ----------
    client : distributed.Client
        Client of the scheduler whose jobs are shown (:func:`~image3_dask.service.status.
        get_jobs`).
    host : str
        Interface to listen on (default: this machine only).
    port : int
        Port; 0 picks a free one.
    token : str, optional
        The secret every request must carry (default: 32 random bytes, URL-safe).
    allow_hosts : iterable of str
        More names accepted in the ``Host`` header (besides ``127.0.0.1``, ``localhost``,
        ``::1`` and ``host``).
    poll_interval : float
        Least seconds between two questions to the scheduler.
    dashboard : str, optional
        Link to the Dask dashboard (default: the scheduler's, when it has one).
    """

    title = "Jobs page"
    cookie_prefix = "image3_jobs_token"

    def __init__(
        self,
        client,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_hosts: Iterable[str] = (),
        poll_interval: float = 1.0,
        dashboard: str | None = None,
    ):
        super().__init__(host=host, port=port, token=token, allow_hosts=allow_hosts)
        self.client = client
        self.poll_interval = poll_interval
        self.scheduler = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
        if dashboard is None:
            try:
                dashboard = client.dashboard_link
            except Exception as exc:  # no dashboard on that scheduler (KeyError), or gone
                log.debug("jobs page: no dashboard link (%s)", exc)
        self.dashboard = _http_url(dashboard)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._error = ""
        self._asked = 0.0
        self._answered: float | None = None

    def respond(self, path: str) -> tuple[bytes, str] | None:
        """``/``: the page; ``/jobs.json``: :meth:`state`; anything else: `None` (404)."""
        if path in ("/", "/index.html"):
            return _page_html(), "text/html; charset=utf-8"
        if path == "/jobs.json":
            return json.dumps(self.state(), default=str).encode(), "application/json"
        return None

    def _poll(self) -> None:
        with self._lock:
            if time.monotonic() - self._asked < self.poll_interval:
                return
            try:
                self._jobs = get_jobs(self.client)
                self._error = ""
                self._answered = time.time()
            except Exception as exc:  # scheduler gone or busy: keep the last list, say so
                self._error = (
                    f"cannot ask the scheduler {self.scheduler or ''} for its jobs "
                    f"({type(exc).__name__}: {exc}); showing the last list"
                )
                log.debug("jobs page: %s", self._error)
            finally:
                self._asked = time.monotonic()

    def state(self) -> dict[str, Any]:
        """The JSON document of ``/jobs.json``.

        Returns
        -------
        dict
            ``scheduler`` (address), ``dashboard`` (URL or `None`), ``states`` (job states in
            order), ``counts`` (jobs per state), ``jobs`` (:func:`job_rows`), ``updated``
            (Unix time of the scheduler's latest answer, `None` before the first) and
            ``error`` (why the scheduler did not answer, else empty).
        """
        self._poll()
        with self._lock:
            rows = job_rows(self._jobs)
            error, updated = self._error, self._answered
        counts = dict.fromkeys(STATES, 0)
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        return {
            "scheduler": self.scheduler,
            "dashboard": self.dashboard,
            "states": list(STATES),
            "counts": counts,
            "jobs": rows,
            "updated": updated,
            "error": error,
        }

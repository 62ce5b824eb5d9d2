"""Submitting a pipeline run to a cluster as a job that outlives the submitting client.

``image3-dask submit`` validates the inputs and parameters on the submitting machine, then hands
the run to the scheduler as one long-lived task, :func:`run_job`, and returns at once. That task
is the pipeline's driver: on the worker that picks it up it opens the worker's client
(:func:`distributed.worker_client`, which *secedes* the task from the worker's thread pool, so
the worker keeps running tile tasks meanwhile, even with ``--nthreads 1``), runs the steps, and
publishes the job's record (:mod:`image3_dask.service.status`) as it goes. The task is
:func:`distributed.fire_and_forget`: the scheduler keeps it after the submitting client leaves.

When the worker running a driver dies, the scheduler starts the driver again on another worker
(up to ``distributed.scheduler.allowed-failures`` times); the record's ``attempt`` goes up and
the rerun reuses the tiles already finished (manifest of the mosaic store).

To keep drivers off some workers, start the workers that may run them with
``dask worker ... --resources image3-driver=1`` and submit with ``--driver-resource
image3-driver``: each of those workers then runs at most one driver at a time.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from image3_dask.errors import ConfigError, Image3Error, StepNotAvailableError
from image3_dask.io.storage import location
from image3_dask.service.status import JOBS_KEY, TERMINAL, get_jobs, publish

log = logging.getLogger("image3_dask")

__all__ = ["CANCEL_KEY", "cancel_job", "run_job", "submit_job"]

#: Scheduler metadata key of cancellation requests.
CANCEL_KEY = "image3-dask-cancel"
#: Seconds between a running job's task counts published (and cancellation requests read):
#: short enough that ``status --wait`` sees the tasks of a step lasting a second or two.
HEARTBEAT_S = 0.5
_STEP_LINE = re.compile(r"^Step (\w+) (running|done|skipped)")


def _check_free(client, output_dir: Path, product: str) -> None:
    from image3_dask.pipeline.output_lock import OutputLockedError, check_free

    for job_id, rec in get_jobs(client).items():
        if (
            rec.get("state") not in TERMINAL
            and rec.get("product") == product
            and str(rec.get("output_dir", "")) == str(output_dir)
        ):
            raise OutputLockedError(
                f"{output_dir}: job {job_id} ({rec.get('state')}) is already writing product "
                f"{product} here; wait for it (image3-dask status {job_id}) or use another "
                "--output-dir"
            )
    check_free(output_dir, product)


def submit_job(
    client,
    inputs: str | os.PathLike | list,
    output_dir: str | os.PathLike,
    config=None,
    *,
    product_name: str | None = None,
    keep_work: bool = False,
    resources: dict[str, float] | None = None,
    job_id: str | None = None,
    storage_options: dict[str, Any] | None = None,
    mosaic_page: bool = True,
) -> dict[str, Any]:
    """Validate a run, hand it to the cluster as a fire-and-forget job, and return its record.

    Parameters
    ----------
    client : distributed.Client
        Client of the scheduler; it may close right after this returns.
    inputs : path-like or list
        Association JSON, exposure files, or glob patterns; the workers must see them under
        the same paths (shared storage).
    output_dir : path-like
        Folder of the products, seen by the workers under the same path.
    config : PipelineConfig, optional
        Step parameters (defaults of jwst 3.0 when omitted).
    product_name : str, optional
        Product name when the inputs are files rather than an association.
    keep_work : bool
        Keep the intermediate work folder.
    resources : dict, optional
        Worker resources the driver task needs (e.g. ``{"image3-driver": 1}``).
    job_id : str, optional
        Job id (default: ``<product>-<8 hex digits>``).
    storage_options : dict, optional
        fsspec options for inputs or ``output_dir`` on an object store (``s3://...``); they
        travel in the job's task, never in its record.
    mosaic_page : bool
        The job's driver serves the run's mosaic page (:mod:`image3_dask.service.mosaic_page`)
        on a free port of its worker's loopback interface while the job runs; the record's
        ``mosaic_page`` holds its address (token included), which ``image3-dask serve`` links.
        It opens from the worker's host (e.g. through ``ssh -L``).

    Returns
    -------
    dict
        The job's record, state ``queued``.

    Raises
    ------
    Image3Error
        For bad inputs or parameters, an unavailable step, or another job writing the same
        product in ``output_dir``; nothing is submitted then.
    """
    from distributed import fire_and_forget

    from image3_dask.io.asn import resolve_inputs
    from image3_dask.io.crds_refs import resolve_references
    from image3_dask.io.exposures import read_exposures
    from image3_dask.io.precheck import check_output_dir
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import step_available
    from image3_dask.pipeline.step_specs import STEP_ORDER

    config = config or PipelineConfig()
    asn = resolve_inputs(inputs, product_name, storage_options)
    steps = [s for s in STEP_ORDER if not config[s].skip]
    for step in steps:
        if not step_available(step):
            raise StepNotAvailableError(
                f"step {step} is not available in this version of image3-dask; "
                f"skip it with --steps.{step}.skip=true"
            )
    read_exposures(asn.members)  # every input problem, reported before anything is submitted
    # CRDS is asked here, once, by the submitting client (the driver task may not reach it)
    config = copy.deepcopy(config)
    references = resolve_references(asn.members, config)
    output_dir = check_output_dir(output_dir, storage_options)
    if job_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", job_id):
        raise ConfigError(f"--job-id {job_id!r}: use letters, digits, '.', '_' and '-' only")
    job_id = job_id or f"{asn.product_name}-{uuid.uuid4().hex[:8]}"
    if job_id in get_jobs(client):
        raise ConfigError(f"job {job_id} already exists on this scheduler")
    _check_free(client, output_dir, asn.product_name)
    record = {
        "job": job_id,
        "state": "queued",
        "product": asn.product_name,
        "output_dir": str(output_dir),
        "inputs": str(asn.path.resolve()) if asn.path else [str(m) for m in asn.members],
        "n_exposures": len(asn.members),
        "steps": steps,
        "steps_done": [],
        "submitted": time.time(),
        "attempt": 0,
    }
    spec = {
        "record": record,
        "config": config.to_dict(),
        "references": references,
        "product_name": asn.product_name if asn.path is None else product_name,
        "keep_work": keep_work,
        "storage_options": storage_options,
        "mosaic_page": bool(mosaic_page),
    }
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        publish(client, record, storage_options=storage_options)
    except OSError as exc:
        raise ConfigError(f"{output_dir}: cannot write the job record ({exc.strerror})") from None
    fut = client.submit(
        run_job,
        spec,
        key=("image3-job", asn.product_name, job_id),
        pure=False,
        resources=resources,
    )
    fire_and_forget(fut)
    return record


def cancel_job(client, job_id: str) -> dict[str, Any]:
    """Ask a job to stop: its running tasks are cancelled, its record says ``failed``.

    Returns
    -------
    dict
        The job's record at the time of the request.
    """
    from distributed import Future

    from image3_dask.service.status import get_job

    rec = get_job(client, job_id)
    if rec.get("state") in TERMINAL:
        return rec
    client.set_metadata([CANCEL_KEY, job_id], time.time())
    if rec.get("state") == "queued":
        # Not started (no worker free or none with the driver resource): drop the task.
        client.cancel([Future(("image3-job", rec["product"], job_id), client)], force=True)
        rec = dict(rec, state="failed", finished=time.time(), error="cancelled before it started")
        publish(client, rec)
    return rec


class _StepLog(logging.Handler):
    """Follows the pipeline's ``Step ... running/done/skipped`` log lines of one thread."""

    def __init__(self, driver: _Driver):
        super().__init__(logging.INFO)
        self.driver = driver
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        m = _STEP_LINE.match(record.getMessage())
        if not m:
            return
        step, what = m.groups()
        with self.driver.lock:
            rec = self.driver.record
            if what == "running":
                rec["step"] = step
                rec["tasks"] = {}
            elif what == "done":
                rec["steps_done"] = [*rec.get("steps_done", []), step]
                rec["step"] = None
                rec["tasks"] = {}
        self.driver.push()


class _Driver:
    """The pipeline run inside :func:`run_job`, with its record and heartbeat."""

    def __init__(self, client, spec: dict[str, Any], worker: str):
        self.client = client
        self.spec = spec
        self.lock = threading.Lock()
        self.record = dict(spec["record"])
        self.worker = worker
        self.stop = threading.Event()
        self.cancelled = False
        self._tokens_before: set[str] = set()

    def push(self) -> None:
        with self.lock:
            rec = dict(self.record)
        try:
            publish(self.client, rec, storage_options=self.spec.get("storage_options"))
        except Exception as exc:  # a record that cannot be written must not stop the run
            log.warning("job %s: cannot publish status: %s", rec["job"], exc)

    def _our_futures(self) -> list:
        for _ in range(5):
            try:
                items = list(self.client.futures.items())
                break
            except RuntimeError:  # changed size during iteration
                continue
        else:
            return []
        return [
            (k, st)
            for k, st in items
            if isinstance(k, tuple)
            and len(k) == 3
            and k[0] != "image3-job"
            and k[2] not in self._tokens_before
        ]

    def _heartbeat(self) -> None:
        last = None
        while not self.stop.wait(HEARTBEAT_S):
            counts: dict[str, list[int]] = {}
            ours = self._our_futures()
            for k, st in ours:
                c = counts.setdefault(k[0], [0, 0])
                c[1] += 1
                c[0] += getattr(st, "status", "") == "finished"
            if not self.cancelled and self.client.get_metadata(
                [CANCEL_KEY, self.record["job"]], default=None
            ):
                self.cancelled = True
                self._cancel(ours)
            with self.lock:
                self.record["tasks"] = counts
            if counts != last:
                last = counts
                self.push()

    def _cancel(self, ours) -> None:
        from distributed import Future

        futures = [Future(k, self.client) for k, _ in ours]
        if futures:
            self.client.cancel(futures)

    def _page_started(self, url: str) -> None:
        """Record the address of the run's mosaic page (a new one for each attempt)."""
        with self.lock:
            self.record["mosaic_page"] = url
        self.push()

    def _clear_lock_of_previous_attempt(self, prev: dict[str, Any]) -> None:
        from image3_dask.pipeline.output_lock import release_locks_of

        if prev.get("state") == "running" and prev.get("host"):
            # left by this job's driver on a dead worker
            out = location(prev["output_dir"], self.spec.get("storage_options"))
            release_locks_of(out, prev["host"], prev["pid"])

    def run(self) -> dict[str, Any]:
        from image3_dask.pipeline.config import PipelineConfig
        from image3_dask.pipeline.image3 import Image3Pipeline

        job = self.record["job"]
        prev = self.client.get_metadata([JOBS_KEY, job], default=None) or self.record
        if prev.get("state") in TERMINAL:
            return prev
        self._clear_lock_of_previous_attempt(prev)
        with self.lock:
            self.record.update(
                state="running",
                attempt=int(prev.get("attempt") or 0) + 1,
                started=time.time(),
                worker=self.worker,
                host=socket.gethostname(),
                pid=os.getpid(),
                steps_done=[],
                step=None,
                tasks={},
            )
        self._tokens_before = {
            k[2] for k in list(self.client.futures) if isinstance(k, tuple) and len(k) == 3
        }
        if self.client.get_metadata([CANCEL_KEY, job], default=None):
            return self._finish("failed", error="cancelled before it started")
        self.push()
        logger = logging.getLogger("image3_dask")
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        handler = _StepLog(self)
        logger.addHandler(handler)
        beat = threading.Thread(target=self._heartbeat, name=f"image3-job-{job}", daemon=True)
        beat.start()
        try:
            products = Image3Pipeline(PipelineConfig(self.spec["config"])).run(
                self.record["inputs"],
                self.record["output_dir"],
                product_name=self.spec.get("product_name"),
                client=self.client,
                progress=False,
                keep_work=self.spec.get("keep_work", False),
                references=self.spec.get("references"),
                storage_options=self.spec.get("storage_options"),
                mosaic_page=0 if self.spec.get("mosaic_page", True) else None,
                on_page=self._page_started,
            )
        except Image3Error as exc:
            return self._finish("failed", error=str(exc))
        except BaseException as exc:  # noqa: B036 - a cancelled future raises CancelledError
            if self.cancelled:
                return self._finish("failed", error="cancelled on request")
            return self._finish("failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.stop.set()
            beat.join(timeout=5)
            logger.removeHandler(handler)
        if self.cancelled:
            return self._finish("failed", error="cancelled on request")
        out = {
            k: (str(v) if not isinstance(v, list) else [str(x) for x in v])
            for k, v in products.items()
            if k not in ("exposures", "dashboard", "timings") and v is not None
        }
        with self.lock:
            self.record["timings"] = products.get("timings", {})
        return self._finish("done", products=out)

    def _finish(self, state: str, **fields: Any) -> dict[str, Any]:
        with self.lock:
            self.record.update(state=state, finished=time.time(), step=None, tasks={}, **fields)
            if state == "done":
                self.record["steps_done"] = list(self.record.get("steps", []))
            rec = dict(self.record)
        self.push()
        if state == "failed":
            log.warning("job %s failed: %s", rec["job"], rec.get("error"))
        return rec


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Task: drive one submitted pipeline run from a worker and keep its record up to date.

    Parameters
    ----------
    spec : dict
        ``record`` (the queued record), ``config`` (``{step: {param: value}}``),
        ``product_name`` and ``keep_work``.

    Returns
    -------
    dict
        The final record (``done`` or ``failed``); failures are reported in the record rather
        than raised, so that the scheduler does not retry a run that cannot succeed.
    """
    from distributed import get_worker, worker_client

    address = get_worker().address
    with worker_client() as client:  # secedes: the worker's thread is free for tile tasks
        return _Driver(client, spec, address).run()

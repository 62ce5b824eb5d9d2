"""Job records: published on the scheduler and mirrored in the output folder.

A submitted job (``image3-dask submit``) keeps one small record, a JSON-serialisable dict, up to
date while it runs:

* on the scheduler, under the metadata key ``["image3-dask-jobs", <job id>]``
  (:meth:`distributed.Client.set_metadata`), so that ``image3-dask status --scheduler ...``
  lists every job the scheduler knows, from any machine;
* in the output folder, as ``.image3-dask-jobs/<job id>.json`` (written atomically), so that
  the outcome survives a scheduler restart: ``image3-dask status --output-dir OUT``.

Record fields: ``job``, ``state`` (one of :data:`STATES`), ``product``, ``output_dir``,
``inputs``, ``submitted``/``started``/``finished`` (Unix times), ``attempt`` (1, then 2... when
the worker running the job died and the scheduler restarted it), ``worker``, ``host``, ``pid``,
``steps`` (those not skipped), ``step`` (the running one), ``steps_done``, ``tasks``
(``{action: [finished, total]}`` of the running step), ``products`` (kind -> path),
``error`` (one line, for ``failed``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from image3_dask.errors import Image3Error
from image3_dask.io.mosaic_store import atomic_write_text
from image3_dask.io.storage import Location, location

__all__ = [
    "JOBS_KEY",
    "STATES",
    "TERMINAL",
    "job_progress",
    "JobNotFoundError",
    "format_job",
    "format_table",
    "get_job",
    "get_jobs",
    "job_file",
    "publish",
    "read_job_files",
]

#: Scheduler metadata key under which job records live.
JOBS_KEY = "image3-dask-jobs"
#: Job states, in order.
STATES = ("queued", "running", "done", "failed")
#: States after which a job no longer changes.
TERMINAL = ("done", "failed")


class JobNotFoundError(Image3Error):
    """No job of that id is known to the scheduler or the output folder."""


def job_file(
    output_dir: str | os.PathLike, job_id: str, storage_options: dict | None = None
) -> Location:
    """Path of a job's record in its output folder (local or on an object store)."""
    return location(output_dir, storage_options) / ".image3-dask-jobs" / f"{job_id}.json"


def publish(
    client, record: dict[str, Any], write_file: bool = True, storage_options: dict | None = None
) -> None:
    """Store ``record`` on the scheduler (and in the output folder).

    Parameters
    ----------
    client : distributed.Client or None
        Client of the scheduler; only the file is written when ``None``.
    record : dict
        The job record; ``job`` and ``output_dir`` are required.
    write_file : bool
        Also write ``<output_dir>/.image3-dask-jobs/<job>.json``.
    storage_options : dict, optional
        fsspec options when ``output_dir`` is on an object store.
    """
    record = dict(record, updated=time.time())
    if client is not None:
        client.set_metadata([JOBS_KEY, record["job"]], record)
    if write_file:
        atomic_write_text(
            job_file(record["output_dir"], record["job"], storage_options),
            json.dumps(record, indent=1),
        )


def get_jobs(client) -> dict[str, dict[str, Any]]:
    """Every job record the scheduler holds, by job id."""
    jobs = client.get_metadata([JOBS_KEY], default=None)
    return dict(jobs or {})


def get_job(client, job_id: str) -> dict[str, Any]:
    """One job's record from the scheduler.

    Raises
    ------
    JobNotFoundError
        When the scheduler does not know the job.
    """
    record = client.get_metadata([JOBS_KEY, job_id], default=None)
    if record is None:
        known = sorted(get_jobs(client))
        hint = f"; known jobs: {', '.join(known[-10:])}" if known else "; it knows no job"
        raise JobNotFoundError(f"the scheduler does not know job {job_id!r}{hint}")
    return record


def read_job_files(output_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Job records kept in an output folder, by job id.

    Raises
    ------
    JobNotFoundError
        When the folder holds no job record.
    """
    folder = location(output_dir) / ".image3-dask-jobs"
    jobs = {}
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        jobs[rec.get("job", p.stem)] = rec
    if not jobs:
        raise JobNotFoundError(f"{output_dir}: no image3-dask job record here")
    return jobs


def job_progress(rec: dict[str, Any]) -> str:
    """One line of a job's progress (steps done, the step running), from its record."""
    steps = rec.get("steps") or []
    done = len(rec.get("steps_done") or [])
    if rec.get("state") == "done":
        return f"{len(steps)}/{len(steps)} steps"
    text = f"{done}/{len(steps)} steps"
    if rec.get("step"):
        text += f", {rec['step']}"
        tasks = rec.get("tasks") or {}
        if tasks:
            text += " (" + ", ".join(f"{a} {d}/{t}" for a, (d, t) in tasks.items()) + ")"
    return text


def _elapsed(rec: dict[str, Any]) -> str:
    start = rec.get("started") or rec.get("submitted")
    if not start:
        return "-"
    end = rec.get("finished") or time.time()
    return f"{end - start:.1f}s"


def format_table(jobs: dict[str, dict[str, Any]]) -> str:
    """One line per job: id, state, progress, elapsed time, product and folder."""
    rows = [("JOB", "STATE", "PROGRESS", "ELAPSED", "PRODUCT")]
    for job_id, rec in sorted(jobs.items(), key=lambda kv: kv[1].get("submitted") or 0):
        rows.append(
            (
                job_id,
                str(rec.get("state", "?")),
                job_progress(rec),
                _elapsed(rec),
                f"{rec.get('product', '?')} in {rec.get('output_dir', '?')}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)


def format_job(rec: dict[str, Any]) -> str:
    """A job's record as ``name: value`` lines."""
    lines = [
        f"job:      {rec.get('job')}",
        f"state:    {rec.get('state')}"
        + (f" (attempt {rec['attempt']})" if (rec.get("attempt") or 1) > 1 else ""),
        f"product:  {rec.get('product')} in {rec.get('output_dir')}",
        f"progress: {job_progress(rec)}",
        f"elapsed:  {_elapsed(rec)}",
    ]
    if rec.get("worker"):
        lines.append(f"worker:   {rec['worker']} (pid {rec.get('pid')} on {rec.get('host')})")
    for kind, path in (rec.get("products") or {}).items():
        lines.append(f"{kind}: {path}")
    if rec.get("error"):
        lines.append(f"error:    {rec['error']}")
    return "\n".join(lines)

"""``image3-dask submit``, ``status``, ``cancel``, ``serve`` and ``certs``: jobs on a running
cluster."""

from __future__ import annotations

import sys

from image3_dask.cli.options import load_config, remote_client, storage_options
from image3_dask.errors import ConfigError

__all__ = ["cmd_cancel", "cmd_certs", "cmd_serve", "cmd_status", "cmd_submit"]


def cmd_submit(args) -> int:
    from image3_dask.service.status import format_job
    from image3_dask.service.submit import submit_job

    config = load_config(args)
    resources = {args.driver_resource: 1} if args.driver_resource else None
    with remote_client(args) as client:
        rec = submit_job(
            client,
            args.inputs,
            args.output_dir,
            config,
            product_name=args.product_name,
            keep_work=args.keep_work,
            resources=resources,
            job_id=args.job_id,
            storage_options=storage_options(args),
            mosaic_page=not args.no_mosaic_page,
        )
        print(f"submitted job {rec['job']}: product {rec['product']} in {rec['output_dir']}")
        if not args.wait:
            where = (
                f"--scheduler {args.scheduler}"
                if args.scheduler
                else (f"--scheduler-file {args.scheduler_file}")
            )
            print(f"follow it with: image3-dask status {rec['job']} {where}")
            return 0
        rec = _wait(client, rec["job"], interval=1.0, quiet=args.quiet)
    print(format_job(rec))
    return 0 if rec.get("state") == "done" else 1


def _wait(client, job_id: str, interval: float, quiet: bool = False) -> dict:
    import time

    from image3_dask.service.status import TERMINAL, get_job, job_progress

    last = None
    while True:
        rec = get_job(client, job_id)
        line = f"{rec.get('state')}: {job_progress(rec)}"
        if not quiet and line != last:
            print(f"[{job_id}] {line}", file=sys.stderr, flush=True)
            last = line
        if rec.get("state") in TERMINAL:
            return rec
        time.sleep(interval)


def cmd_status(args) -> int:
    import json

    from image3_dask.service.status import (
        JobNotFoundError,
        format_job,
        format_table,
        get_job,
        get_jobs,
        read_job_files,
    )

    if not args.interval > 0:  # also nan
        raise ConfigError(f"--interval {args.interval}: give a positive number of seconds")
    if args.wait and not args.job:
        raise ConfigError("--wait needs a JOB")
    if args.output_dir and not (args.scheduler or args.scheduler_file):
        if args.wait:
            raise ConfigError("--wait asks the scheduler: give --scheduler")
        jobs = read_job_files(args.output_dir)
        if args.job and args.job not in jobs:
            raise JobNotFoundError(
                f"{args.output_dir}: no record of job {args.job!r}; "
                f"known: {', '.join(sorted(jobs))}"
            )
    else:
        with remote_client(args) as client:
            if args.wait:
                jobs = {args.job: _wait(client, args.job, args.interval, quiet=args.quiet)}
            elif args.job:
                jobs = {args.job: get_job(client, args.job)}
            else:
                jobs = get_jobs(client)
    if args.job:
        jobs = {args.job: jobs[args.job]}
    if args.json:
        print(json.dumps(jobs if not args.job else jobs[args.job], indent=1))
    elif args.job:
        print(format_job(jobs[args.job]))
    elif jobs:
        print(format_table(jobs))
    else:
        print("no job")
    if args.wait:
        return 0 if jobs[args.job].get("state") == "done" else 1
    return 0


def cmd_cancel(args) -> int:
    from image3_dask.service.submit import cancel_job

    with remote_client(args) as client:
        rec = cancel_job(client, args.job)
    if rec.get("state") in ("done", "failed"):
        print(f"job {args.job} already ended ({rec['state']})")
    else:
        print(f"asked job {args.job} to stop; `image3-dask status {args.job}` shows when it has")
    return 0


def cmd_serve(args, stop=None) -> int:
    """``image3-dask serve``: the jobs page of a scheduler, until Ctrl-C (or ``stop`` is set).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments (``--host``, ``--port``, ``--allow-host``, ``--dashboard`` and the
        scheduler's).
    stop : threading.Event, optional
        Ends the command when set (for tests); by default it runs until interrupted.

    Returns
    -------
    int
        0 once stopped.
    """
    import threading

    from image3_dask.service.jobs_page import JobsPage

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: give 0 (a free port) to 65535")
    if args.dashboard and not args.dashboard.lower().startswith(("http://", "https://")):
        raise ConfigError(f"--dashboard {args.dashboard}: give an http:// or https:// URL")
    stop = stop or threading.Event()
    with remote_client(args) as client:
        try:
            page = JobsPage(
                client,
                host=args.host,
                port=args.port,
                allow_hosts=args.allow_host,
                dashboard=args.dashboard,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})"
            ) from None
        with page:
            print(f"Jobs page: {page.url}", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    return 0


def cmd_certs(args) -> int:
    from image3_dask.service.security import make_certificates

    if args.days < 1:
        raise ConfigError(f"--days {args.days}: give at least 1")
    paths = make_certificates(
        args.out, hosts=args.host or ["127.0.0.1", "localhost"], days=args.days
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0

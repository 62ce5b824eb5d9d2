"""The ``image3-dask`` command: run, submit, status, cancel, certs, simulate, asn, config, demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from image3_dask import __version__
from image3_dask.errors import ConfigError, Image3Error

log = logging.getLogger("image3_dask")

__all__ = ["COMMANDS", "STEP_OVERRIDE_COMMANDS", "main"]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("distributed", "stpipe", "asdf", "gwcs", "tweakwcs", "stcal", "jwst", "bokeh"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _add_remote_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("scheduler")
    g.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (tcp://HOST:PORT or tls://HOST:PORT)",
    )
    g.add_argument(
        "--scheduler-file",
        help="JSON file written by `dask scheduler --scheduler-file` (instead of --scheduler)",
    )
    g.add_argument(
        "--tls-ca-file", help="PEM file of the CA that signed the cluster's certificates"
    )
    g.add_argument("--tls-cert", help="PEM certificate of this client (tls:// schedulers)")
    g.add_argument("--tls-key", help="PEM private key of --tls-cert")
    g.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the scheduler to answer (default: 20)",
    )
    return g


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    _add_remote_args(p)
    g = p.add_argument_group("cluster started by image3-dask (when no --scheduler is given)")
    g.add_argument(
        "--cluster",
        choices=["local", "slurm"],
        default="local",
        help="local worker processes (default), or Slurm jobs through dask-jobqueue",
    )
    g.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: one per core)"
    )
    g.add_argument(
        "--memory-limit",
        default="auto",
        help="memory limit per local worker, e.g. 2GB (default: auto)",
    )
    g.add_argument(
        "--dashboard-address",
        default="127.0.0.1:8787",
        help="where the local dashboard listens (default: 127.0.0.1:8787, localhost only)",
    )
    g.add_argument(
        "--jobqueue-config",
        metavar="FILE.yaml",
        help="dask-jobqueue settings for --cluster slurm (see deploy/slurm/jobqueue.yaml)",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="Slurm jobs to submit for --cluster slurm (default 1)",
    )
    g.add_argument(
        "--report", metavar="FILE.html", help="save Dask's performance report of the run"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image3-dask",
        description="JWST level-3 imaging (calwebb_image3) as a distributed Dask pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"image3-dask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run the pipeline on an association",
        description="Run tweakreg, skymatch, outlier_detection, resample and "
        "source_catalog. Step parameters: --steps.<step>.<name>=<value> (jwst names).",
    )
    p.add_argument("inputs", nargs="+", help="association JSON, exposure files, or glob patterns")
    p.add_argument("-o", "--output-dir", default=".", help="folder for the products (default: .)")
    p.add_argument("--config", help="TOML parameter file (see `image3-dask config`)")
    p.add_argument(
        "--product-name", help="product name when inputs are files rather than an association"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the intermediate work folder")
    p.add_argument(
        "--mosaic-page-port",
        type=int,
        default=0,
        metavar="PORT",
        help="port of the live mosaic page on http://127.0.0.1:PORT/, the tiles coloured by "
        "state (default: a free port, printed next to the dashboard's)",
    )
    p.add_argument("--no-mosaic-page", action="store_true", help="do not serve the mosaic page")
    _add_cluster_args(p)

    p = sub.add_parser("simulate", help="write simulated JWST cal files and an association")
    p.add_argument("--instrument", choices=["miri", "nircam"], default="miri")
    p.add_argument("--n", type=int, default=4, help="number of exposures")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pattern",
        choices=["dither", "mosaic"],
        default=None,
        help="4-point dither or mosaic grid (default: dither for n<=4, mosaic otherwise)",
    )
    p.add_argument(
        "--shape", type=int, nargs=2, metavar=("NY", "NX"), help="detector shape override"
    )

    p = sub.add_parser("asn", help="write an image3 association from a list of exposures")
    p.add_argument("files", nargs="+")
    p.add_argument("--product-name", required=True)
    p.add_argument("-o", "--output", default="asn.json")
    p.add_argument("--asn-id", default="a3001")

    p = sub.add_parser("config", help="write every step's parameters with defaults and help (TOML)")
    p.add_argument("-o", "--output", default="image3.toml")

    p = sub.add_parser(
        "demo", help="simulate a 4-point MIRI dither, run the pipeline, show the results"
    )
    p.add_argument(
        "--out", default="demo_output", help="folder for data and products (default: demo_output)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--shape", type=int, nargs=2, metavar=("NY", "NX"), help="detector shape override (faster)"
    )
    _add_cluster_args(p)

    p = sub.add_parser(
        "submit",
        help="hand a run to a running Dask cluster and return at once",
        description="Validate the inputs here, then run the pipeline as a job on the cluster: "
        "it goes on after this command returns. Follow it with `image3-dask status`. "
        "The workers must see the inputs and the output folder under the same paths.",
    )
    p.add_argument("inputs", nargs="+", help="association JSON, exposure files, or glob patterns")
    p.add_argument("-o", "--output-dir", default=".", help="folder for the products (default: .)")
    p.add_argument("--config", help="TOML parameter file (see `image3-dask config`)")
    p.add_argument(
        "--product-name", help="product name when inputs are files rather than an association"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the intermediate work folder")
    p.add_argument("--job-id", help="job id (default: <product>-<8 hex digits>)")
    p.add_argument(
        "--driver-resource",
        metavar="NAME",
        help="run the job's driver only on workers started with --resources NAME=1",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the job to end and print its record"
    )
    _add_remote_args(p)

    p = sub.add_parser(
        "status",
        help="state and progress of submitted jobs",
        description="Without JOB, list the jobs the scheduler (or the output folder) knows.",
    )
    p.add_argument("job", nargs="?", help="job id (as printed by `image3-dask submit`)")
    p.add_argument(
        "--output-dir",
        help="read the job records kept in this output folder instead of asking the scheduler",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until JOB ends; exit 0 when it succeeded, 1 when it failed",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (--wait)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    _add_remote_args(p)

    p = sub.add_parser("cancel", help="stop a submitted job")
    p.add_argument("job")
    _add_remote_args(p)

    p = sub.add_parser(
        "certs",
        help="write a private CA and a TLS certificate for tls:// clusters",
        description="Writes ca.pem, cert.pem and key.pem (mode 0600). One certificate for the "
        "scheduler, the workers and the clients; valid for the given host names/addresses.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--host",
        action="append",
        help="host name or IP address the certificate is valid for (repeat; "
        "default: 127.0.0.1 and localhost)",
    )
    p.add_argument("--days", type=int, default=365)
    return parser


def _split_step_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.lstrip("-").startswith("steps.") else rest).append(a)
    return rest, overrides


def _security(args):
    from image3_dask.service.security import security_from_files

    return security_from_files(args.tls_ca_file, args.tls_cert, args.tls_key)


def _cluster_kwargs(args) -> dict:
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give at least 1")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout}: give a positive number of seconds")
    remote = args.scheduler or args.scheduler_file
    if remote and args.cluster != "local":
        raise ConfigError("--cluster starts a cluster: do not combine it with --scheduler")
    if args.cluster == "slurm" and args.jobqueue_config is None:
        log.info("--cluster slurm without --jobqueue-config: using dask's jobqueue.slurm config")
    return {
        "scheduler": args.scheduler,
        "scheduler_file": args.scheduler_file,
        "n_workers": args.workers,
        "memory_limit": args.memory_limit,
        "dashboard_address": args.dashboard_address,
        "security": _security(args),
        "timeout": args.timeout,
        "cluster": args.cluster,
        "jobqueue_config": args.jobqueue_config,
        "jobs": args.jobs,
    }


@contextlib.contextmanager
def _remote_client(args):
    """A client of the scheduler given by --scheduler/--scheduler-file (required)."""
    from image3_dask.pipeline.cluster import connect

    if not (args.scheduler or args.scheduler_file):
        raise ConfigError(
            f"`image3-dask {args.command}` needs the cluster: give --scheduler tcp://HOST:PORT "
            "or --scheduler-file FILE"
        )
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout}: give a positive number of seconds")
    with connect(
        args.scheduler,
        security=_security(args),
        timeout=args.timeout,
        scheduler_file=args.scheduler_file,
    ) as client:
        yield client


def cmd_run(args) -> int:
    from image3_dask.pipeline.image3 import Image3Pipeline

    products = _execute(Image3Pipeline(_load_config(args)), args)
    _print_products(products)
    return 0


def _execute(pipeline, args) -> dict:
    """Run ``pipeline`` on the inputs of ``image3-dask run``, on the cluster its options name."""
    inputs, output_dir = args.inputs, args.output_dir
    kwargs = dict(
        product_name=args.product_name,
        keep_work=args.keep_work,
        progress=not args.quiet,
        mosaic_page=None if args.no_mosaic_page else args.mosaic_page_port,
    )
    cluster = _cluster_kwargs(args)
    remote = cluster["scheduler"] or cluster["scheduler_file"] or cluster["cluster"] != "local"
    if not (args.report or remote):
        # Local cluster: the inputs are validated before the cluster is started.
        return pipeline.run(
            inputs,
            output_dir,
            scheduler=None,
            n_workers=cluster["n_workers"],
            memory_limit=cluster["memory_limit"],
            dashboard_address=cluster["dashboard_address"],
            security=cluster["security"],
            **kwargs,
        )
    from image3_dask.pipeline.cluster import connect

    # A remote scheduler is reached before anything is written in the output folder.
    with connect(**cluster) as client:
        log.info("Dask dashboard: %s", client.dashboard_link)
        if not args.report:
            return pipeline.run(inputs, output_dir, client=client, **kwargs)
        from distributed import performance_report

        with performance_report(filename=args.report):
            products = pipeline.run(inputs, output_dir, client=client, **kwargs)
    log.info("Performance report: %s", args.report)
    return products


def _print_products(products: dict) -> None:
    for kind, value in products.items():
        if (
            kind in ("timings", "exposures", "dashboard")
            or value is None
            or isinstance(value, dict)
        ):
            continue
        if isinstance(value, list):
            print(f"{kind}: {len(value)} files" + (f", e.g. {value[0]}" if value else ""))
        else:
            print(f"{kind}: {value}")
    t = products.get("timings", {})
    if t:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))


def cmd_simulate(args) -> int:
    from image3_dask.simulate import simulate

    pattern = args.pattern or ("dither" if args.n <= 4 else "mosaic")
    kw = {"shape": tuple(args.shape)} if args.shape else {}
    res = simulate(
        instrument=args.instrument,
        n=args.n,
        out_dir=args.out,
        seed=args.seed,
        pattern=pattern,
        **kw,
    )
    print(f"association: {res.asn_path}")
    print(f"exposures:   {len(res.cal_paths)} in {Path(args.out).resolve()}")
    print(f"truth:       {res.truth_path}")
    return 0


def cmd_asn(args) -> int:
    from image3_dask.io.asn import make_association, write_association

    out = Path(args.output)
    asn = make_association(
        args.files, args.product_name, args.asn_id, relative_to=out.resolve().parent
    )
    write_association(asn, out)
    print(f"wrote {out} ({len(args.files)} members, product {args.product_name})")
    return 0


def cmd_config(args) -> int:
    from image3_dask.pipeline.config import PipelineConfig

    path = PipelineConfig().write_toml(args.output)
    print(f"wrote {path}")
    return 0


def _demo_cluster(args) -> dict:
    kw = _cluster_kwargs(args)
    if kw["scheduler_file"] or kw["cluster"] != "local":
        raise ConfigError("`image3-dask demo` runs on a local cluster or a --scheduler address")
    keep = ("scheduler", "n_workers", "memory_limit", "dashboard_address", "security")
    return {k: kw[k] for k in keep if k != "security" or kw[k] is not None}


def cmd_demo(args) -> int:
    from image3_dask.demo import run_demo

    run_demo(
        out=Path(args.out),
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
        cluster=_demo_cluster(args),
        report=args.report,
        quiet=args.quiet,
    )
    return 0


def _load_config(args):
    """The step parameters of ``run``/``submit``: defaults, ``--config``, ``--steps.*``."""
    from image3_dask.pipeline.config import PipelineConfig

    config = PipelineConfig.from_toml(args.config) if args.config else PipelineConfig()
    config.apply_overrides(args.step_overrides)
    return config


def cmd_submit(args) -> int:
    from image3_dask.service.status import format_job
    from image3_dask.service.submit import submit_job

    config = _load_config(args)
    resources = {args.driver_resource: 1} if args.driver_resource else None
    with _remote_client(args) as client:
        rec = submit_job(
            client,
            args.inputs,
            args.output_dir,
            config,
            product_name=args.product_name,
            keep_work=args.keep_work,
            resources=resources,
            job_id=args.job_id,
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

    from image3_dask.service.status import TERMINAL, _progress, get_job

    last = None
    while True:
        rec = get_job(client, job_id)
        line = f"{rec.get('state')}: {_progress(rec)}"
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

    if args.interval <= 0:
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
        with _remote_client(args) as client:
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

    with _remote_client(args) as client:
        rec = cancel_job(client, args.job)
    if rec.get("state") in ("done", "failed"):
        print(f"job {args.job} already ended ({rec['state']})")
    else:
        print(f"asked job {args.job} to stop; `image3-dask status {args.job}` shows when it has")
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


#: Subcommand -> handler; a handler takes the parsed arguments and returns the exit code.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "simulate": cmd_simulate,
    "asn": cmd_asn,
    "config": cmd_config,
    "demo": cmd_demo,
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "certs": cmd_certs,
}

#: Subcommands that take ``--steps.<step>.<name>=<value>`` options (``args.step_overrides``).
STEP_OVERRIDE_COMMANDS = frozenset({"run", "submit"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``image3-dask`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Worker tracebacks are reported once, as one message, by the step that failed.
    verbose = any(a in ("-v", "-vv", "--verbose") for a in argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error" if verbose else "critical")
    argv, overrides = _split_step_overrides(argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if overrides and args.command not in STEP_OVERRIDE_COMMANDS:
        parser.error("--steps.<step>.<name>=<value> options only go with `run` and `submit`")
    args.step_overrides = overrides
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except Image3Error as exc:
        print(f"image3-dask: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, full disk...: one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"image3-dask: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("image3-dask: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

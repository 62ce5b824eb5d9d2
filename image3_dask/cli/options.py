"""Options shared by the subcommands: logging, cluster and TLS options, step parameters.

Everything here is checked before a cluster starts or a file is written; a bad value is a
:class:`~image3_dask.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from image3_dask.errors import ConfigError

log = logging.getLogger("image3_dask")

__all__ = [
    "cluster_kwargs",
    "load_config",
    "output_path",
    "remote_client",
    "setup_logging",
    "strun_config",
    "tls_security",
]


def setup_logging(
    verbose: int,
    quiet: bool,
    level_name: str | None = None,
    log_file: str | None = None,
    log_stream: str | None = None,
) -> None:
    """Configure logging: ``-q``/``-v``/``-vv``, or strun's ``--log-level``/``--log-file``/
    ``--log-stream``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if level_name:
        named = logging.getLevelName(level_name.upper())
        if not isinstance(named, int):
            raise ConfigError(f"--log-level {level_name}: give DEBUG, INFO, WARNING or ERROR")
        level = named
    handlers: list[logging.Handler] = []
    if log_stream is None or log_stream.lower() == "stderr":
        handlers.append(logging.StreamHandler(sys.stderr))
    elif log_stream.lower() == "stdout":
        handlers.append(logging.StreamHandler(sys.stdout))
    elif log_stream.lower() not in ("null", "none"):
        raise ConfigError(f"--log-stream {log_stream}: give stdout, stderr or null")
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    if not handlers:
        handlers.append(logging.NullHandler())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    for noisy in ("distributed", "stpipe", "asdf", "gwcs", "tweakwcs", "stcal", "jwst", "bokeh"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def tls_security(args: argparse.Namespace):
    """The :class:`distributed.Security` of ``--tls-ca-file/--tls-cert/--tls-key`` (or None)."""
    from image3_dask.service.security import security_from_files

    return security_from_files(args.tls_ca_file, args.tls_cert, args.tls_key)


def cluster_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`~image3_dask.pipeline.cluster.connect` arguments of the cluster options.

    Every option is checked here, before a cluster starts.

    Raises
    ------
    ConfigError, ClusterError
        For a bad ``--workers``, ``--jobs``, ``--timeout``, ``--memory-limit`` or
        ``--dashboard-address``, options that do not go together, or TLS files that are
        missing or do not match; the message names the option.
    """
    from image3_dask.pipeline.cluster import check_memory_limit

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give at least 1")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout}: give a positive number of seconds")
    remote = args.scheduler or args.scheduler_file
    if remote and args.cluster != "local":
        raise ConfigError("--cluster starts a cluster: do not combine it with --scheduler")
    if not remote and args.cluster == "local":
        check_memory_limit(args.memory_limit, args.workers)
    check_address(args.dashboard_address, "--dashboard-address")
    if args.cluster == "slurm" and args.jobqueue_config is None:
        log.info("--cluster slurm without --jobqueue-config: using dask's jobqueue.slurm config")
    return {
        "scheduler": args.scheduler,
        "scheduler_file": args.scheduler_file,
        "n_workers": args.workers,
        "memory_limit": args.memory_limit,
        "dashboard_address": args.dashboard_address,
        "security": tls_security(args),
        "timeout": args.timeout,
        "cluster": args.cluster,
        "jobqueue_config": args.jobqueue_config,
        "jobs": args.jobs,
    }


def check_address(address: str | None, option: str) -> None:
    """Refuse a ``HOST:PORT`` (or ``:PORT``) address whose port is not a port number.

    Raises
    ------
    ConfigError
        Naming ``option`` and the address.
    """
    if address is None:
        return
    port = str(address).rpartition(":")[2]
    if not (port.isdigit() and 0 <= int(port) <= 65535):
        raise ConfigError(
            f"{option} {address}: expected HOST:PORT with a port from 0 to 65535 "
            "(e.g. 127.0.0.1:8787; port 0 picks a free one)"
        )


@contextlib.contextmanager
def remote_client(args):
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
        security=tls_security(args),
        timeout=args.timeout,
        scheduler_file=args.scheduler_file,
    ) as client:
        yield client


def _bool_option(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    s = value.strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"--{name} {value}: give true or false")


def strun_config(args):
    """The configuration and pipeline options of ``image3-dask strun``, as jwst's strun.

    Precedence: defaults < the parameter file given as first argument < the command line.
    ``save_results`` is true (strun always saves the products of the pipeline it runs).
    """
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import check_runnable
    from image3_dask.pipeline.jwst_params import (
        PipelineOptions,
        classify,
        load_parameter_file,
        read_class,
        split_pipeline_parameters,
    )

    if args.debug:
        raise ConfigError("--debug (pdb on error) is not available in image3-dask strun")
    if args.logcfg:
        raise ConfigError(
            "--logcfg: stpipe's deprecated logging file is not read; use --log-level, "
            "--log-file or --log-stream"
        )
    config, options = PipelineConfig(), PipelineOptions()
    first = args.pipeline
    looks_like_file = (
        Path(first).suffix.lower() in (".cfg", ".asdf", ".toml") or Path(first).is_file()
    )
    if looks_like_file:
        cls = read_class(first)
        if cls is not None and classify(cls) != "pipeline":
            raise ConfigError(
                f"{first} is a parameter file of step {classify(cls)}: image3-dask runs the whole "
                f"calwebb_image3 pipeline; give it as --config, or as a pipeline file's "
                f"[[{classify(cls)}]] config_file"
            )
        steps, options = load_parameter_file(first)
        config.update(steps, source=first)
    elif classify(first) != "pipeline":
        raise ConfigError(
            f"{first}: image3-dask runs the whole calwebb_image3 pipeline, not a step alone; "
            f"skip the other steps with --steps.<step>.skip=true"
        )
    if args.save_results is not None and _bool_option(args.save_results, "save_results") is False:
        raise ConfigError(
            "--save_results false: image3-dask always writes its products (as strun does)"
        )
    options.update(
        split_pipeline_parameters(
            {
                "output_dir": args.output_dir,
                "output_file": args.output_file,
                "input_dir": args.input_dir,
                "in_memory": args.in_memory,
            },
            "",
        )
    )
    config.apply_overrides(args.step_overrides)
    options.save_results = True
    config.update(
        {s: {"save_results": True} for s in ("outlier_detection", "resample", "source_catalog")}
    )
    check_runnable(config)
    return config, options


def output_path(args, default_name: str) -> Path:
    """``-o DIR`` (a folder, as for ``run``) joined with ``--output FILE``."""
    folder = Path(args.output_dir)
    if folder.suffix.lower() in (".json", ".toml", ".asdf", ".cfg") and not folder.is_dir():
        raise ConfigError(
            f"-o {args.output_dir}: -o names a folder (as for `run`); give the file name "
            f"with --output {folder.name}"
        )
    return folder / (args.output or default_name)


def storage_options(args) -> dict | None:
    """``--storage-options JSON`` as a dictionary (None when not given).

    The value is never repeated in a message: it may hold credentials.
    """
    import json

    text = getattr(args, "storage_options", None)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--storage-options: not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); give an object such as '{{\"endpoint_url\": \"http://...\"}}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--storage-options: a JSON object is expected, not a {type(value).__name__}"
        )
    return value


def load_config(args):
    """The step parameters of ``run``/``submit``: defaults, ``--config``, ``--steps.*``.

    A jwst parameter file may also set the output folder and the product name
    (``output_dir``, ``output_file``); the command line's win.
    """
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import check_runnable
    from image3_dask.pipeline.jwst_params import PipelineOptions, load_parameter_file

    config, options = PipelineConfig(), PipelineOptions()
    if args.config:
        steps, options = load_parameter_file(args.config)
        config.update(steps, source=args.config)
    config.apply_overrides(args.step_overrides)
    check_runnable(config)
    if args.output_dir is None:
        args.output_dir = options.output_dir or "."
    if args.product_name is None:
        args.product_name = options.product_name
    return config

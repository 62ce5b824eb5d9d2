"""The ``image3-dask`` command: run, strun, submit, status, cancel, certs, simulate, asn, config,
demo.

Options are spelled with dashes (``--output-dir``); jwst's underscore spellings
(``--output_dir``) are accepted too, and ``--steps.<step>.<name>`` takes its value after ``=``
or a space, as ``strun`` does.
"""

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


def _setup_logging(
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
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more messages: Dask's errors too (-vv: debug messages)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run the pipeline on an association",
        description="Run tweakreg, skymatch, outlier_detection, resample and "
        "source_catalog. Step parameters: --steps.<step>.<name>=<value> (jwst names).",
    )
    p.add_argument("inputs", nargs="+", help="association JSON, exposure files, or glob patterns")
    p.add_argument("-o", "--output-dir", default=None, help="folder for the products (default: .)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument(
        "--product-name", help="product name when inputs are files rather than an association"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the intermediate work folder")
    _add_page_args(p)
    _add_cluster_args(p)

    p = sub.add_parser(
        "strun",
        help="run calwebb_image3 as jwst's strun does (same arguments)",
        description="As `strun calwebb_image3 ASN`: the first argument is calwebb_image3, "
        "jwst.pipeline.Image3Pipeline, a .cfg file (collect_pipeline_cfgs) or an ASDF "
        "parameter file (strun --save-parameters, CRDS pars-image3pipeline); parameters from "
        "the file, then from the command line (--steps.<step>.<name>=<value> or a space).",
    )
    p.add_argument(
        "pipeline", help="calwebb_image3, jwst.pipeline.Image3Pipeline, FILE.cfg or FILE.asdf"
    )
    p.add_argument("input", nargs="?", help="association JSON (or an exposure file)")
    g = p.add_argument_group("strun's options (also spelled --output_dir...)")
    g.add_argument("--output-dir", help="folder for the products (default: .)")
    g.add_argument(
        "--output-file", help="product name: <output_file>_i2d.fits... (default: association's)"
    )
    g.add_argument("--save-results", help="true (products are always written)")
    g.add_argument("--input-dir", help="folder of a relative INPUT")
    g.add_argument("--in-memory", help="accepted; memory is bounded by tiles either way")
    g.add_argument(
        "--save-parameters", metavar="FILE.asdf", help="write the parameters (jwst's ASDF)"
    )
    g.add_argument(
        "--disable-crds-steppars",
        action="store_true",
        help="accepted; image3-dask never reads parameters from CRDS",
    )
    g.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    g.add_argument("--log-file", help="also write the messages to this file")
    g.add_argument("--log-stream", help="stdout, stderr (default) or null")
    g.add_argument("--logcfg", help="refused: stpipe's deprecated logging file")
    g.add_argument("--debug", action="store_true", help="refused: no pdb on error")
    g.add_argument(
        "-v", "--verbose", dest="strun_verbose", action="store_true", help="debug messages"
    )
    _add_page_args(p)
    _add_cluster_args(p)

    p = sub.add_parser("simulate", help="write simulated JWST cal files and an association")
    p.add_argument(
        "--instrument", choices=["miri", "nircam"], default="miri", help="(default: miri)"
    )
    p.add_argument("--n", type=int, default=4, help="number of exposures (default: 4)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--pattern",
        choices=["dither", "mosaic"],
        default=None,
        help="4-point dither or mosaic grid (default: dither for n<=4, mosaic otherwise)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        help="detector shape override (default: the instrument's, 1024x1032 for MIRI)",
    )

    p = sub.add_parser(
        "asn",
        help="write an image3 association from a list of exposures",
        description="Writes DIR/FILE (default ./asn.json) with member paths relative to it.",
    )
    p.add_argument("files", nargs="+", help="exposure files (*_cal.fits)")
    p.add_argument("--product-name", required=True, help="name of the products (<name>_i2d.fits)")
    p.add_argument(
        "-o", "--output-dir", default=".", help="folder to write the association in (default: .)"
    )
    p.add_argument("--output", default="asn.json", help="file name (default: asn.json)")
    p.add_argument("--asn-id", default="a3001", help="association id (default: a3001)")

    p = sub.add_parser(
        "config",
        help="write every step's parameters with defaults and help (TOML or jwst's ASDF)",
        description="Writes DIR/FILE (default ./image3.toml): TOML with the help of every "
        "parameter, or jwst's ASDF parameter file when FILE ends in .asdf (jwst reads it: "
        "`strun FILE.asdf ASN`). --from reads a parameter file (ours, .cfg or ASDF) and "
        "--steps.<step>.<name>=<value> changes values, so a file converts both ways.",
    )
    p.add_argument(
        "-o", "--output-dir", default=".", help="folder to write the file in (default: .)"
    )
    p.add_argument(
        "--output", default="image3.toml", help="file name, .toml or .asdf (default: image3.toml)"
    )
    p.add_argument("--from", dest="source", metavar="FILE", help="start from this parameter file")

    p = sub.add_parser(
        "demo", help="simulate a 4-point MIRI dither, run the pipeline, show the results"
    )
    p.add_argument(
        "--out", default="demo_output", help="folder for data and products (default: demo_output)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument(
        "--shape", type=int, nargs=2, metavar=("NY", "NX"), help="detector shape override (faster)"
    )
    _add_cluster_args(p)
    return _build_service_parsers(parser, sub)


def _add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mosaic-page-port",
        type=int,
        default=0,
        metavar="PORT",
        help="port of the live mosaic page on http://127.0.0.1:PORT/, the tiles coloured by "
        "state (default: a free port, printed next to the dashboard's)",
    )
    p.add_argument("--no-mosaic-page", action="store_true", help="do not serve the mosaic page")


def _build_service_parsers(parser, sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "submit",
        help="hand a run to a running Dask cluster and return at once",
        description="Validate the inputs here, then run the pipeline as a job on the cluster: "
        "it goes on after this command returns. Follow it with `image3-dask status`. "
        "The workers must see the inputs and the output folder under the same paths.",
    )
    p.add_argument("inputs", nargs="+", help="association JSON, exposure files, or glob patterns")
    p.add_argument("-o", "--output-dir", default=None, help="folder for the products (default: .)")
    p.add_argument("--config", help=CONFIG_HELP)
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


CONFIG_HELP = (
    "parameter file: ours (TOML, see `image3-dask config`), or jwst's .cfg or ASDF "
    "(strun --save-parameters, CRDS pars-*); --steps.* options override it"
)

#: Short flags that never are the value of a ``--steps.<step>.<name> VALUE`` option.
_FLAGS = frozenset({"-v", "-vv", "-q", "-o"})


def _split_step_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take out ``--steps.<step>.<name>=<value>`` (or ``... <value>``, as strun) options.

    Returns the other arguments and the overrides as ``steps.<step>.<name>=<value>`` strings.

    Raises
    ------
    ConfigError
        When a ``--steps`` option has no value.
    """
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.lstrip("-").startswith("steps."):
            if "=" not in a:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if nxt is None or nxt.startswith("--") or nxt in _FLAGS:
                    raise ConfigError(f"{a}: give a value ({a}=VALUE or {a} VALUE)")
                a = f"{a}={nxt}"
                i += 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _dashed(argv: list[str]) -> list[str]:
    """jwst's underscore spellings of long options (``--output_dir``) as ours (``--output-dir``)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--steps."):
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


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


def cmd_strun(args) -> int:
    from image3_dask.pipeline.image3 import Image3Pipeline
    from image3_dask.pipeline.jwst_params import write_asdf

    config, options = strun_config(args)
    if args.save_parameters:
        path = write_asdf(config, args.save_parameters, options)
        log.info("Step/Pipeline parameters saved to %s", path)
        if args.input is None:
            return 0
    if args.input is None:
        raise ConfigError("give the association to run (strun PIPELINE ASN.json)")
    source = Path(args.input)
    if options.input_dir and not source.is_absolute():
        source = Path(options.input_dir) / source
    args.inputs = [str(source)]
    args.output_dir = options.output_dir or "."
    args.product_name = options.product_name
    args.keep_work = False
    products = _execute(Image3Pipeline(config), args)
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
    # (run() logs the dashboard's address, once)
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


def _output_path(args, default_name: str) -> Path:
    """``-o DIR`` (a folder, as for ``run``) joined with ``--output FILE``."""
    folder = Path(args.output_dir)
    if folder.suffix.lower() in (".json", ".toml", ".asdf", ".cfg") and not folder.is_dir():
        raise ConfigError(
            f"-o {args.output_dir}: -o names a folder (as for `run`); give the file name "
            f"with --output {folder.name}"
        )
    return folder / (args.output or default_name)


def cmd_asn(args) -> int:
    from image3_dask.io.asn import make_association, write_association

    out = _output_path(args, "asn.json")
    asn = make_association(
        args.files, args.product_name, args.asn_id, relative_to=out.resolve().parent
    )
    write_association(asn, out)
    print(f"wrote {out} ({len(args.files)} members, product {args.product_name})")
    return 0


def cmd_config(args) -> int:
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.jwst_params import PipelineOptions, load_parameter_file, write_asdf

    config, options = PipelineConfig(), PipelineOptions()
    if args.source:
        steps, options = load_parameter_file(args.source)
        config.update(steps, source=args.source)
    config.apply_overrides(args.step_overrides)
    out = _output_path(args, "image3.toml")
    if out.suffix.lower() == ".asdf":
        path = write_asdf(config, out, options)
    elif out.suffix.lower() == ".toml":
        path = config.write_toml(out)
    else:
        raise ConfigError(f"--output {out.name}: give a .toml or .asdf file name")
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
    "strun": cmd_strun,
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
STEP_OVERRIDE_COMMANDS = frozenset({"run", "strun", "submit", "config"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``image3-dask`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Worker tracebacks are reported once, as one message, by the step that failed.
    verbose = any(a in ("-v", "-vv", "--verbose") for a in argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error" if verbose else "critical")
    parser = _build_parser()
    try:
        argv, overrides = _split_step_overrides(_dashed(argv))
    except ConfigError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    if overrides and args.command not in STEP_OVERRIDE_COMMANDS:
        parser.error(
            "--steps.<step>.<name>=<value> options only go with "
            + ", ".join(f"`{c}`" for c in sorted(STEP_OVERRIDE_COMMANDS))
        )
    args.step_overrides = overrides
    try:
        if args.command == "strun":
            _setup_logging(
                2 if args.strun_verbose else args.verbose,
                args.quiet,
                args.log_level,
                args.log_file,
                args.log_stream,
            )
        else:
            _setup_logging(args.verbose, args.quiet)
    except ConfigError as exc:
        parser.error(str(exc))
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

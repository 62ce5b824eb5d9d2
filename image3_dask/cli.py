"""The ``image3-dask`` command: run, simulate, asn, config, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from image3_dask import __version__
from image3_dask.errors import Image3Error

log = logging.getLogger("image3_dask")

__all__ = ["main"]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("distributed", "stpipe", "asdf", "gwcs", "tweakwcs", "stcal", "jwst", "bokeh"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (tcp://HOST:PORT); "
        "a local cluster of worker processes is started when omitted",
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
    return parser


def _split_step_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.lstrip("-").startswith("steps.") else rest).append(a)
    return rest, overrides


def _cluster_kwargs(args) -> dict:
    return {
        "scheduler": args.scheduler,
        "n_workers": args.workers,
        "memory_limit": args.memory_limit,
        "dashboard_address": args.dashboard_address,
    }


def cmd_run(args, overrides: list[str]) -> int:
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import Image3Pipeline

    config = PipelineConfig.from_toml(args.config) if args.config else PipelineConfig()
    config.apply_overrides(overrides)
    products = _execute(
        Image3Pipeline(config), args.inputs, args.output_dir, args, args.product_name
    )
    _print_products(products)
    return 0


def _execute(pipeline, inputs, output_dir, args, product_name=None):
    kwargs = dict(
        product_name=product_name,
        keep_work=getattr(args, "keep_work", False),
        progress=not args.quiet,
    )
    cluster = _cluster_kwargs(args)
    if args.report:
        from distributed import performance_report

        from image3_dask.pipeline.cluster import connect

        with connect(**cluster) as client:
            log.info("Dask dashboard: %s", client.dashboard_link)
            with performance_report(filename=args.report):
                products = pipeline.run(inputs, output_dir, client=client, **kwargs)
        log.info("Performance report: %s", args.report)
        return products
    return pipeline.run(inputs, output_dir, **cluster, **kwargs)


def _print_products(products: dict) -> None:
    for kind, value in products.items():
        if kind in ("timings", "exposures", "dashboard") or value is None:
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


def cmd_demo(args) -> int:
    from image3_dask.demo import run_demo

    run_demo(
        out=Path(args.out),
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
        cluster=_cluster_kwargs(args),
        report=args.report,
        quiet=args.quiet,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``image3-dask`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Worker tracebacks are reported once, as one message, by the step that failed.
    verbose = any(a in ("-v", "-vv", "--verbose") for a in argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error" if verbose else "critical")
    argv, overrides = _split_step_overrides(argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if overrides and args.command != "run":
        parser.error("--steps.<step>.<name>=<value> options only go with `run`")
    _setup_logging(args.verbose, args.quiet)
    try:
        if args.command == "run":
            return cmd_run(args, overrides)
        if args.command == "simulate":
            return cmd_simulate(args)
        if args.command == "asn":
            return cmd_asn(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "demo":
            return cmd_demo(args)
    except Image3Error as exc:
        print(f"image3-dask: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("image3-dask: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

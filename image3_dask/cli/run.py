"""``image3-dask run``, ``strun`` and ``demo``: the pipeline on a cluster started or reached here."""

from __future__ import annotations

import logging
from pathlib import Path

from image3_dask.cli.options import cluster_kwargs, load_config, storage_options, strun_config
from image3_dask.errors import ConfigError

log = logging.getLogger("image3_dask")

__all__ = ["cmd_demo", "cmd_run", "cmd_strun"]


def cmd_run(args) -> int:
    from image3_dask.pipeline.image3 import Image3Pipeline

    products = _execute(Image3Pipeline(load_config(args)), args)
    _print_products(products)
    return 0


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
        disable_crds_steppars=getattr(args, "disable_crds_steppars", False) or None,
    )
    if getattr(args, "storage_options", None):
        kwargs["storage_options"] = storage_options(args)
    cluster = cluster_kwargs(args)
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


def _demo_cluster(args) -> dict:
    kw = cluster_kwargs(args)
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

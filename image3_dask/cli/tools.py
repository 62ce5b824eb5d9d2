"""``image3-dask simulate``, ``asn`` and ``config``: files to start from."""

from __future__ import annotations

from pathlib import Path

from image3_dask.cli.options import output_path
from image3_dask.errors import ConfigError

__all__ = ["cmd_asn", "cmd_config", "cmd_simulate"]


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

    out = output_path(args, "asn.json")
    asn = make_association(
        args.files, args.product_name, args.asn_id, relative_to=out.resolve().parent
    )
    write_association(asn, out)
    print(f"wrote {out} ({len(args.files)} members, product {args.product_name})")
    return 0


def _show_config(config, args) -> int:
    """``config --show [INPUT]``: merged values and their origins (CRDS's for INPUT's data)."""
    from image3_dask.io.crds_refs import describe_parameters, resolve_references

    if args.show:
        from image3_dask.io.asn import resolve_inputs

        asn = resolve_inputs(args.show, None)
        resolve_references(asn.members, config, disable_steppars=args.disable_crds_steppars)
    print(describe_parameters(config))
    return 0


def cmd_config(args) -> int:
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.jwst_params import PipelineOptions, load_parameter_file, write_asdf

    config, options = PipelineConfig(), PipelineOptions()
    if args.source:
        steps, options = load_parameter_file(args.source)
        config.update(steps, source=args.source)
    config.apply_overrides(args.step_overrides)
    if args.show is not None:
        return _show_config(config, args)
    out = output_path(args, "image3.toml")
    if out.suffix.lower() == ".asdf":
        path = write_asdf(config, out, options)
    elif out.suffix.lower() == ".toml":
        path = config.write_toml(out)
    else:
        raise ConfigError(f"--output {out.name}: give a .toml or .asdf file name")
    print(f"wrote {path}")
    return 0

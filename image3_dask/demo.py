"""``image3-dask demo``: the official MIRI Image3 notebook's walk-through, on simulated data.

Simulates a 4-point MIRI dither with known truth, runs the pipeline on a local cluster, prints
the first catalog rows and writes two PNGs of the mosaic with the detected sources circled:
``mosaic.png`` (asinh stretch) and ``mosaic_log.png``, drawn as the notebook draws the i2d
(LogNorm, colour bar, NaN pixels in their own colour, photutils ``CircularAperture`` circles;
:func:`image3_dask.plotting.plot_i2d`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from image3_dask.pipeline.config import PipelineConfig
from image3_dask.pipeline.image3 import Image3Pipeline, step_available
from image3_dask.pipeline.step_specs import STEP_ORDER

log = logging.getLogger("image3_dask")

__all__ = ["run_demo", "plot_mosaic"]


def plot_mosaic(i2d_path: Path, catalog_path: Path | None, png_path: Path) -> Path:
    """Draw the mosaic (asinh stretch) with the catalog's sources circled, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
    from stdatamodels.jwst import datamodels

    with datamodels.open(i2d_path) as model:
        data = np.array(model.data)
    fig, ax = plt.subplots(figsize=(8, 8 * data.shape[0] / max(data.shape[1], 1) + 0.5))
    finite = np.isfinite(data)
    norm = ImageNormalize(data[finite], interval=ZScaleInterval(), stretch=AsinhStretch())
    ax.imshow(np.where(finite, data, np.nan), origin="lower", cmap="gray", norm=norm)
    title = i2d_path.name
    if catalog_path is not None and catalog_path.exists():
        from astropy.table import Table

        cat = Table.read(catalog_path)
        ax.scatter(
            cat["xcentroid"],
            cat["ycentroid"],
            s=80,
            facecolors="none",
            edgecolors="tab:red",
            lw=0.8,
        )
        title += f" - {len(cat)} sources"
    ax.set_title(title)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def run_demo(
    out: Path,
    seed: int = 1,
    shape: tuple[int, int] | None = None,
    cluster: dict | None = None,
    report: str | None = None,
    quiet: bool = False,
) -> dict:
    """Simulate, run and show; returns the products of the run."""
    from image3_dask.simulate import simulate

    out = Path(out)
    kw = {"shape": shape} if shape else {}
    print(f"Simulating a 4-point MIRI dither in {out / 'data'} ...")
    sim = simulate(instrument="miri", n=4, out_dir=out / "data", seed=seed, pattern="dither", **kw)
    config = PipelineConfig()
    for step in STEP_ORDER:
        if not step_available(step):
            print(f"Step {step} is not available in this version: skipped")
            config.update({step: {"skip": True}})
    cluster = cluster or {}
    pipeline = Image3Pipeline(config)
    if report:
        from distributed import performance_report

        from image3_dask.pipeline.cluster import connect

        with connect(**cluster) as client, performance_report(filename=report):
            products = pipeline.run(sim.asn_path, out / "output", client=client, progress=not quiet)
    else:
        products = pipeline.run(sim.asn_path, out / "output", progress=not quiet, **cluster)
    print("\nProducts:")
    for kind, value in products.items():
        if kind in ("timings", "exposures") or value is None or isinstance(value, dict):
            continue
        print(f"  {kind}: {value if not isinstance(value, list) else f'{len(value)} files'}")
    cat_path = products.get("cat")
    if cat_path:
        from astropy.table import Table

        cat = Table.read(cat_path)
        cols = [
            c
            for c in (
                "label",
                "xcentroid",
                "ycentroid",
                "sky_centroid",
                "aper_total_flux",
                "aper_total_abmag",
                "is_extended",
            )
            if c in cat.colnames
        ]
        print(f"\nFirst rows of {Path(cat_path).name} ({len(cat)} sources):")
        cat[cols][:10].pprint(max_width=140)
    i2d = products.get("i2d")
    if i2d:
        png = plot_mosaic(
            Path(i2d), Path(cat_path) if cat_path else None, out / "output" / "mosaic.png"
        )
        from image3_dask.plotting import plot_i2d

        log_png = out / "output" / "mosaic_log.png"
        plot_i2d(i2d, cat_path, png=log_png)
        print(f"\nMosaic pictures: {png} (asinh stretch), {log_png} (as the notebook: LogNorm)")
        products["png"] = png
        products["png_log"] = log_png
    return products

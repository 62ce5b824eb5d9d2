"""Walk through image3-dask from Python, as the official MIRI Image3 notebook does with jwst.

Run with ``python examples/walkthrough.py [OUTDIR]``. It simulates a 4-point MIRI dither with known
truth, runs the five steps on a local cluster, opens the mosaic lazily from its Zarr store with
xarray, compares the catalog with the truth, and saves a picture of the mosaic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from image3_dask.demo import plot_mosaic
from image3_dask.pipeline.image3 import Image3Pipeline
from image3_dask.simulate import simulate


def main(out: Path) -> None:
    # 1. Data: four dithered MIRI F770W exposures with pointing errors, sky levels and cosmic rays.
    sim = simulate(
        instrument="miri", n=4, out_dir=out / "data", seed=1, pattern="dither", shape=(512, 512)
    )
    print(f"association: {sim.asn_path}")

    # 2. The pipeline, with jwst's parameter names; here a finer output grid and a smaller pixfrac.
    products = Image3Pipeline.call(
        sim.asn_path,
        output_dir=out / "output",
        steps={"resample": {"pixel_scale_ratio": 0.8, "pixfrac": 0.8}},
        n_workers=2,
    )
    for kind in ("i2d", "cat", "segm", "crf"):
        print(f"{kind}: {products.get(kind)}")

    # 3. The mosaic opens lazily from Zarr (tiles are chunks), with the grid's WCS in its attributes.
    import xarray as xr

    ds = xr.open_zarr(products["i2d_zarr"], consolidated=False)
    print(ds)
    print("median surface brightness [MJy/sr]:", float(ds["sci"].median(skipna=True).compute()))

    # 4. The catalog against the truth the simulator wrote.
    if products.get("cat"):
        cat = Table.read(products["cat"])
        truth = sim.truth.sources
        found = SkyCoord(cat["sky_centroid"])
        true = SkyCoord(truth["ra"], truth["dec"], unit="deg")
        idx, sep, _ = true.match_to_catalog_sky(found)
        matched = sep.arcsec < 0.2
        print(f"{len(cat)} sources detected; {matched.sum()} of {len(truth)} truth sources matched")
        stars = (truth["kind"] == "star") & matched
        ratio = np.asarray(cat["aper_total_flux"][idx[stars]]) / np.asarray(truth["flux_jy"][stars])
        print(
            f"median flux ratio (aperture-corrected / truth) of matched stars: {np.nanmedian(ratio):.3f}"
        )

    # 5. A picture, as in the notebook.
    png = plot_mosaic(
        Path(products["i2d"]),
        Path(products["cat"]) if products.get("cat") else None,
        out / "output" / "mosaic.png",
    )
    print(f"picture: {png}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("walkthrough_output"))

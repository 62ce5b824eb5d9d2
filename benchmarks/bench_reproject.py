"""Resample against astropy's reproject: jwst, image3-dask and reproject_and_coadd on one mosaic.

Usage::

    python benchmarks/bench_reproject.py [--rows 4 --cols 4] [--shape NY NX] [--exact] [--skip-official]

On a MIRI mosaic of ``rows x cols`` pointings (default 4x4 full-size exposures, the data of
``bench_resample_memory.py``), runs the resample step alone three ways, each in its own process(es)
with the peak RSS sampled every 10 ms: jwst's ResampleStep (unless ``--skip-official``), image3-dask
on 2 workers held to ``--memory-limit``, and ``reproject.mosaicking.reproject_and_coadd`` with
``reproject_interp`` (``--exact``: ``reproject_exact``) and its own ``parallel``/``block_size``
options (dask threads inside one process) onto the very grid image3-dask produced (the FITS WCS
of our i2d SCI header, our shape). Each exposure is weighted by its good-pixel mask (DQ without
DO_NOT_USE, finite SCI), ``combine_function="mean"``, no background matching.

Then compares reproject's mosaic with ours where both have data: median relative difference of
SCI, the fraction of pixels within 1 %, the total flux ratio and the pixels only one of them
covers. reproject is not drizzle: ``reproject_exact`` is an exact area-overlap (flux-conserving)
resampling and ``reproject_interp`` a bilinear interpolation; both weight exposures by the mask
only where drizzle uses the inverse variance (``weight_type="ivm"``), so differences are expected
at exposure edges, in overlaps and around bad pixels. Writes ``bench_output/reproject_peer.json`` (runs with
the other ``--exact`` setting on the same data are kept in it).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

#: Python run in the measured subprocess (after ``_common.RSS_SAMPLER_CODE``, which defines PEAK).
REPROJECT = """
import json, sys
sys.path.insert(0, {bench_dir!r})
from bench_reproject import coadd_with_reproject
result = coadd_with_reproject(**{kwargs!r})
result["peak_mb"] = PEAK[0] / 2**20
print(json.dumps(result))
"""

#: Bit of DQ that excludes a pixel from the mosaic.
DO_NOT_USE = 1


def coadd_with_reproject(
    members: list[str],
    grid: str,
    out: str,
    exact: bool = False,
    parallel: int = 2,
    block_size: int | None = 512,
    keep_bounding_box: bool = False,
) -> dict:
    """Mosaic ``members`` with ``reproject_and_coadd`` onto the grid of the i2d file ``grid``.

    Runs in the measured subprocess; the wall time covers reading the exposures and the
    co-addition, not the imports nor the writing of the result.

    Parameters
    ----------
    members : list of str
        ``*_cal.fits`` exposures (SCI in MJy/sr, gwcs in ``meta.wcs``).
    grid : str
        An i2d file: the output grid is the FITS WCS of its SCI header and its SCI shape.
    out : str
        FITS file written with the mosaic (``SCI``, NaN where not covered) and ``FOOTPRINT``.
    exact : bool
        ``reproject_exact`` instead of ``reproject_interp``.
    parallel : int
        reproject's ``parallel`` (number of dask threads); 0 for serial.
    block_size : int or None
        Side of the square output blocks every exposure is reprojected in (reproject's
        ``block_sizes``); None lets reproject choose (one block per exposure at these sizes).
    keep_bounding_box : bool
        Pass the gwcs as they are. By default their bounding box is dropped: gwcs returns NaN
        outside it and MIRI's box excludes the reference columns, so the corners
        reproject_and_coadd samples to find an exposure's footprint on the output are NaN and it
        falls back to reprojecting every exposure onto the whole mosaic. The reference columns are
        DO_NOT_USE, so dropping the box does not change which pixels count.

    Returns
    -------
    dict
        ``wall`` seconds (of which ``read`` opening the exposures: the first open of a datamodel
        loads its schemas), ``cpu`` seconds of this process, ``baseline_mb`` its RSS after the
        imports, and the options used.
    """
    import warnings

    import psutil
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_exact, reproject_interp
    from reproject.mosaicking import reproject_and_coadd
    from stdatamodels.jwst import datamodels

    warnings.simplefilter("ignore")  # FITSFixedWarning on DATE-*/MJD-* of the i2d header
    function = reproject_exact if exact else reproject_interp
    header = fits.getheader(grid, "SCI")
    wcs_out = WCS(header)
    shape_out = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    baseline = psutil.Process().memory_info().rss / 2**20  # the imports
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    data, weights = [], []
    for path in members:
        with datamodels.open(path) as m:
            sci = np.array(m.data, dtype=np.float32)
            good = ((m.dq & DO_NOT_USE) == 0) & np.isfinite(sci)
            sci[~good] = np.nan  # dropped from the exposure's reprojection, not averaged as 0
            wcs = m.meta.wcs
            if not keep_bounding_box:
                wcs.bounding_box = None
            data.append((sci, wcs))
            weights.append(good.astype(np.float32))
    read = time.perf_counter() - t0
    # block_sizes must be one tuple per exposure: a single (ny, nx) tuple is taken for a
    # per-exposure list when there are exactly 2 exposures (and block_size=None in **kwargs
    # collides with the block_size reproject_and_coadd passes itself)
    blocks = None if block_size is None else [(block_size, block_size)] * len(data)
    mosaic, footprint = reproject_and_coadd(
        data,
        wcs_out,
        shape_out=shape_out,
        input_weights=weights,
        reproject_function=function,
        combine_function="mean",
        match_background=False,
        block_sizes=blocks,
        parallel=parallel if parallel > 0 else False,
    )
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    del data, weights
    mosaic[footprint <= 0] = np.nan
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(mosaic.astype(np.float32), header=wcs_out.to_header(), name="SCI"),
            fits.ImageHDU(footprint.astype(np.float32), name="FOOTPRINT"),
        ]
    ).writeto(out, overwrite=True)
    return {
        "wall": wall,
        "read": read,
        "cpu": cpu,
        "baseline_mb": baseline,
        "function": function.__name__,
        "parallel": parallel,
        "block_size": block_size,
        "bounding_box_dropped": not keep_bounding_box,
    }


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def agreement(ours_i2d: str | Path, theirs: str | Path) -> dict:
    """How reproject's mosaic compares with ours on the same grid.

    Parameters
    ----------
    ours_i2d : path-like
        Our i2d file (SCI, WHT).
    theirs : path-like
        reproject's mosaic as written by :func:`coadd_with_reproject`.

    Returns
    -------
    dict
        Over the pixels both cover (finite SCI, our WHT > 0, reproject footprint > 0): their
        number, the median of ``|reproject - ours| / |ours|``, the fraction within 1 % and the
        flux ratio ``sum(reproject) / sum(ours)``; and the pixels only one of them covers.
    """
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    with datamodels.open(ours_i2d) as m:
        sci = np.asarray(m.data, dtype=np.float64)
        ours_cover = np.isfinite(sci) & (np.asarray(m.wht) > 0)
    with fits.open(theirs) as hdul:
        rp = hdul["SCI"].data.astype(np.float64)
        rp_cover = np.isfinite(rp) & (hdul["FOOTPRINT"].data > 0)
    both = ours_cover & rp_cover
    a, b = rp[both], sci[both]
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-30)
    return {
        "n_pixels_compared": int(both.sum()),
        "sci_median_rel_diff": float(np.median(rel)),
        "sci_frac_within_1pct": float(np.mean(rel < 0.01)),
        "sci_p99_rel_diff": float(np.percentile(rel, 99)),
        "flux_ratio_reproject_over_ours": float(a.sum() / b.sum()),
        "pixels_only_ours": int((ours_cover & ~rp_cover).sum()),
        "pixels_only_reproject": int((rp_cover & ~ours_cover).sum()),
    }


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import OUT, dataset, miri_mosaic_spec, run_official, run_ours, write_result
    from bench_resample import OFFICIAL, ONLY_RESAMPLE

    from image3_dask.io.asn import load_association

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=2, default=None, metavar=("NY", "NX"))
    p.add_argument("--exact", action="store_true", help="reproject_exact (default: _interp)")
    p.add_argument("--skip-official", action="store_true", help="do not run jwst's ResampleStep")
    p.add_argument("--memory-limit", default="1GB", help="of each of our 2 workers")
    p.add_argument("--parallel", type=int, default=2, help="reproject's threads (0: serial)")
    p.add_argument(
        "--block-size", type=int, default=512, help="reproject's block side (0: its choice)"
    )
    p.add_argument(
        "--keep-bounding-box",
        action="store_true",
        help="give reproject the gwcs with their bounding box (slow: see coadd_with_reproject)",
    )
    args = p.parse_args()

    name, spec = miri_mosaic_spec(args.rows, args.cols, args.shape)
    asn = dataset(name, **spec)
    members = [str(m) for m in load_association(asn).members]
    out = OUT / "runs" / f"reproject_{name}"
    out.mkdir(parents=True, exist_ok=True)

    official = None
    if not args.skip_official:
        print(f"[{name}] jwst ResampleStep ...", flush=True)
        official = run_official(
            OFFICIAL.format(asn=str(asn), out=str(out / "official_i2d.fits")),
            "jwst ResampleStep",
        )
    print(f"[{name}] image3-dask, 2 workers ({args.memory_limit} each) ...", flush=True)
    ours = run_ours(
        asn, out / "ours_2w", ONLY_RESAMPLE, n_workers=2, memory_limit=args.memory_limit
    )
    ours_i2d = str(ours["products"]["i2d"])

    function = "reproject_exact" if args.exact else "reproject_interp"
    print(f"[{name}] reproject_and_coadd + {function}, parallel={args.parallel} ...", flush=True)
    theirs = out / f"{function}_i2d.fits"
    kwargs = dict(
        members=members,
        grid=ours_i2d,
        out=str(theirs),
        exact=args.exact,
        parallel=args.parallel,
        block_size=args.block_size or None,
        keep_bounding_box=args.keep_bounding_box,
    )
    rp = run_official(
        REPROJECT.format(bench_dir=str(Path(__file__).resolve().parent), kwargs=kwargs),
        f"reproject_and_coadd ({function})",
    )
    from astropy.io import fits

    shape = list(fits.getdata(ours_i2d, "SCI").shape)
    det = fits.getheader(members[0], "SCI")

    path = OUT / "reproject_peer.json"
    result: dict = {}
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("dataset") == name and previous.get("grid_shape") == shape:
            result = previous  # keep the other reproject function's numbers of this data
    result.update(
        dataset=name,
        exposures=len(members),
        detector_shape=[det["NAXIS2"], det["NAXIS1"]],
        grid_shape=shape,
    )
    if official is not None:
        result["official"] = {
            "wall_s": official["wall"],
            "peak_mb": official["peak_mb"],
            "wall_process_s": official["wall_process"],
        }
    result["ours_2w"] = {
        "wall_s": ours["wall"],
        "peak_worker_mb": ours["worker_peak_mb"],
        "memory_limit": args.memory_limit,
    }
    result.setdefault("reproject", {})[function] = {
        "wall_s": rp["wall"],
        "read_s": rp["read"],
        "cpu_s": rp["cpu"],
        "peak_mb": rp["peak_mb"],
        "baseline_mb": rp["baseline_mb"],
        "wall_process_s": rp["wall_process"],
        "parallel": rp["parallel"],
        "block_size": rp["block_size"],
        "bounding_box_dropped": rp["bounding_box_dropped"],
        "agreement_with_ours": agreement(ours_i2d, theirs),
    }
    write_result("reproject_peer", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

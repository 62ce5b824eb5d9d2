"""Metadata of the level-3 products, filled in as the official pipeline fills it."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from image3_dask.io.asn import Association
from image3_dask.io.exposures import ExposureInfo

log = logging.getLogger("image3_dask")

__all__ = ["i2d_metadata", "combined_sregion", "fits_wcs_keywords", "time_totals"]

_SIP = re.compile(r"^(cd[12]_[12]|[ab]p?_\d_\d|[ab]p?_order)$")


def fits_wcs_keywords(grid) -> dict[str, Any]:
    """Exact FITS TAN keywords of an output grid (its gwcs is a FITS imaging transform)."""
    scale = float(grid.pixel_scale) / 3600.0
    pc = np.asarray(grid.pc if grid.pc is not None else (1.0, 0.0, 0.0, 1.0), float).reshape(2, 2)
    return {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "CRPIX1": float(grid.crpix[0]) + 1,
        "CRPIX2": float(grid.crpix[1]) + 1,
        "CRVAL1": float(grid.crval[0]),
        "CRVAL2": float(grid.crval[1]),
        "CDELT1": scale,
        "CDELT2": scale,
        "PC1_1": float(pc[0, 0]),
        "PC1_2": float(pc[0, 1]),
        "PC2_1": float(pc[1, 0]),
        "PC2_2": float(pc[1, 1]),
        "RADESYS": "ICRS",
    }


def time_totals(exposures: Sequence[ExposureInfo]) -> dict[str, Any]:
    """Exposure-time totals over exposure groups, as stcal's ``Resample.update_time``.

    Each exposure group (several detectors exposed together) counts once.
    """
    seen: set[str] = set()
    exp_total = dur_total = meas_total = 0.0
    starts, ends, meas_ok = [], [], []
    for e in exposures:
        if e.group_id in seen:
            continue
        seen.add(e.group_id)
        m = e.meta
        starts.append(m.get("start_time"))
        ends.append(m.get("end_time"))
        if m.get("exposure_time") is not None:
            exp_total += float(m["exposure_time"])
        if m.get("measurement_time") is not None:
            meas_total += float(m["measurement_time"])
            meas_ok.append(True)
        else:
            if m.get("exposure_time") is not None:
                meas_total += float(m["exposure_time"])
            meas_ok.append(False)
        if m.get("duration") is not None:
            dur_total += float(m["duration"])
    starts = [s for s in starts if s is not None]
    ends = [s for s in ends if s is not None]
    return {
        "exposure_time": exp_total,
        "start_time": min(starts) if starts else None,
        "end_time": max(ends) if ends else None,
        "duration": dur_total,
        "elapsed_exposure_time": dur_total,
        "measurement_time": meas_total if meas_ok and all(meas_ok) else None,
        "pointings": len(seen),
    }


def combined_sregion(exposures: Sequence[ExposureInfo], grid_wcs) -> str | None:
    """S_REGION of the mosaic: union of the inputs' footprints clipped to the output grid."""
    from stcal.alignment.resample_utils import combine_sregions

    sregions: list[str] = []
    for e in exposures:
        s = e.meta.get("s_region")
        if s:
            sregions.extend(
                "POLYGON ICRS " + p.strip() for p in s.split("POLYGON ICRS") if p.strip()
            )
    if not sregions:
        return None
    try:
        return combine_sregions(
            sregions,
            grid_wcs.get_transform("detector", "world"),
            intersect_footprint=grid_wcs.footprint(),
        )
    except ValueError as exc:
        log.warning("Could not combine S_REGIONs: %s. Output S_REGION will not be set.", exc)
        return None


def i2d_metadata(
    model, exposures: Sequence[ExposureInfo], grid, params: dict, asn: Association
) -> None:
    """Fill an i2d ImageModel's metadata (its arrays are written separately).

    ``model`` starts as a copy of the first input's metadata, as in jwst's ``ResampleImage``.
    """
    t = time_totals(exposures)
    model.meta.wcs = grid.wcs
    area_arcsec2 = float(grid.pixel_scale) ** 2
    model.meta.photometry.pixelarea_arcsecsq = area_arcsec2
    model.meta.photometry.pixelarea_steradians = area_arcsec2 / np.rad2deg(3600) ** 2
    r = model.meta.resample
    r.pointings = t["pointings"]
    r.pixel_scale_ratio = float(grid.pixel_scale_ratio or 1.0)
    r.pixfrac = float(params["pixfrac"])
    r.kernel = str(params["kernel"])
    r.fillval = str(params["fillval"])
    r.weight_type = str(params["weight_type"])
    x = model.meta.exposure
    x.exposure_time = t["exposure_time"]
    x.effective_exposure_time = t["exposure_time"]
    x.start_time = t["start_time"]
    x.end_time = t["end_time"]
    x.duration = t["duration"]
    x.elapsed_exposure_time = t["elapsed_exposure_time"]
    x.measurement_time = t["measurement_time"]
    levels = {e.background_level for e in exposures}
    if len(levels) == 1 and None not in levels:
        model.meta.background.level = float(levels.pop())
    else:
        model.meta.background.level = None
    model.meta.background.subtracted = None
    # FITS WCS keywords of the (tangent-plane) output grid
    wi = model.meta.wcsinfo
    for key in list(wi.instance.keys()):
        if _SIP.match(key):
            del wi.instance[key]
    for key, value in fits_wcs_keywords(grid).items():
        setattr(wi, key.lower(), value)
    for key in ("v2_ref", "v3_ref", "ra_ref", "dec_ref", "roll_ref", "v3yangle", "vparity"):
        if key in wi.instance:
            del wi.instance[key]
    sregion = combined_sregion(exposures, grid.wcs)
    if sregion:
        wi.s_region = sregion
    model.meta.cal_step.resample = "COMPLETE"
    model.meta.filename = f"{asn.product_name}_i2d.fits"
    model.meta.asn.table_name = asn.path.name if asn.path else None
    if asn.raw.get("asn_pool"):
        model.meta.asn.pool_name = asn.raw["asn_pool"]

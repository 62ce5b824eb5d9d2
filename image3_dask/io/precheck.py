"""Checks of a run's inputs and output folder that need no cluster (headers only, milliseconds).

Everything that can be known before a cluster starts is checked here, so that a careless or
hostile input costs one line and nothing written: the output folder (:func:`check_output_dir`),
the members (:func:`precheck_members`: missing, listed twice, not FITS, truncated, no SCI or
ASDF extension, instruments or filters that differ) and the size of the output grid from the
members' ``S_REGION`` footprints (:func:`precheck_grid`). The full validation of each exposure
(its datamodel and gwcs) then runs on the cluster, and the grid is computed again from the
aligned WCS (it can differ slightly, so the size check is made again there).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image3_dask.errors import InputError
from image3_dask.io.storage import Location, RemotePath, check_remote_folder, location, open_fits

log = logging.getLogger("image3_dask")

__all__ = ["MemberHeaders", "check_output_dir", "precheck_grid", "precheck_members"]

#: Primary-header keywords every member must share (as ``read_exposures`` checks later).
SHARED_KEYWORDS = {"INSTRUME": "instrument", "FILTER": "filter", "PUPIL": "pupil"}
#: SCI-header keywords of the output grid's estimate (jwst's ``meta.wcsinfo``).
WCSINFO_KEYWORDS = {
    "RA_REF": "ra_ref",
    "DEC_REF": "dec_ref",
    "ROLL_REF": "roll_ref",
    "V3I_YANG": "v3yangle",
    "VPARITY": "vparity",
}


@dataclass
class MemberHeaders:
    """What the headers of one member tell before the cluster starts."""

    path: Location
    shared: dict[str, Any] = field(default_factory=dict)
    s_region: str | None = None
    wcsinfo: dict[str, float] = field(default_factory=dict)
    pixel_area_arcsec2: float | None = None


def check_output_dir(
    output_dir: str | os.PathLike | RemotePath, storage_options: dict | None = None
) -> Location:
    """The output folder, resolved; refuse one that is (or is inside) something not a folder.

    Nothing is created here. An object-store URL (``s3://bucket/out``) gives a
    :class:`~image3_dask.io.storage.RemotePath` once its bucket is found readable
    (:func:`~image3_dask.io.storage.check_remote_folder`).

    Raises
    ------
    InputError
        When ``output_dir`` or one of its parents exists and is not a directory, or the
        folder exists and cannot be written.
    """
    given = location(output_dir, storage_options)
    if isinstance(given, RemotePath):
        check_remote_folder(given, "output folder")
        return given
    path = given.resolve()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                which = "" if p == path else f" ({p} is a file)"
                raise InputError(
                    f"output folder {given}: is not a directory{which}; give a folder "
                    "(it is created when missing)"
                )
            if p == path and not os.access(p, os.W_OK | os.X_OK):
                raise InputError(f"output folder {given}: cannot be written")
            break
    return path


def _read_headers(path: Location) -> tuple[MemberHeaders | None, str | None]:
    try:
        if not path.is_file():
            return None, f"{path}: file not found"
    except InputError as exc:  # an object store that cannot be reached
        return None, str(exc)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with open_fits(path, memmap=False, lazy_load_hdus=False) as hdul:
                names = [h.name for h in hdul]
                primary = hdul[0].header
                sci = hdul["SCI"].header if "SCI" in names else None
    except (OSError, ValueError, IndexError) as exc:
        return None, f"{path}: not a readable FITS file ({exc})"
    for w in caught:
        text = str(w.message)
        if "truncated" in text:
            detail = text.split("truncated: ", 1)[-1]
            return None, f"{path}: the file is truncated ({detail}); copy it again"
    if sci is None:
        return None, f"{path}: has no SCI extension; not a calibrated JWST exposure"
    if "ASDF" not in names:
        return None, (
            f"{path}: has no ASDF extension (the datamodel's metadata and gwcs): the file is "
            "truncated or not a JWST datamodel file"
        )
    info = MemberHeaders(path=path)
    for key, name in SHARED_KEYWORDS.items():
        value = primary.get(key)
        info.shared[name] = None if value in (None, "", "N/A") else str(value).strip()
    region = sci.get("S_REGION")
    info.s_region = str(region) if region else None
    for key, name in WCSINFO_KEYWORDS.items():
        value = sci.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            info.wcsinfo[name] = float(value)
    area = sci.get("PIXAR_A2")
    if isinstance(area, (int, float)) and area > 0:
        info.pixel_area_arcsec2 = float(area)
    return info, None


def precheck_members(paths: list[Location]) -> list[MemberHeaders]:
    """Check every member from its FITS headers, before a cluster is started.

    Reads only headers (milliseconds per file); the full validation of each exposure
    (:func:`image3_dask.io.exposures.read_exposure_info`) then runs on the cluster.

    Returns
    -------
    list of MemberHeaders
        One per member, in order.

    Raises
    ------
    InputError
        Listing, one line each, every member that is missing, listed twice, not a readable
        FITS file, truncated, without a SCI or ASDF extension, or whose instrument, filter or
        pupil differs from the first member's.
    """
    problems: list[str] = []
    seen: dict[Path, int] = {}
    found: list[MemberHeaders] = []
    for i, p in enumerate(paths):
        p = location(p)
        rp = p.resolve()
        if rp in seen:
            problems.append(
                f"{p}: listed twice in the association (members {seen[rp]} and {i}); remove one"
            )
            continue
        seen[rp] = i
        info, problem = _read_headers(p)
        if problem:
            problems.append(problem)
        else:
            found.append(info)
    if not problems and found:
        ref = found[0]
        for info in found[1:]:
            for name, value in info.shared.items():
                if value != ref.shared.get(name):
                    problems.append(
                        f"{info.path}: {name} is {value} but {ref.path.name} has "
                        f"{ref.shared.get(name)}; all members of an image3 association must "
                        "share instrument, filter and pupil"
                    )
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError("invalid input:\n  " + "\n  ".join(problems))
    return found


def precheck_grid(members: list[MemberHeaders], params: dict[str, Any]) -> tuple[int, int] | None:
    """Estimate the output grid from the members' headers and refuse it when too large.

    The grid is computed as jwst does (stcal's ``wcs_from_sregions``) from the ``S_REGION``
    footprints and the first member's orientation (``ROLL_REF``, ``V3I_YANG``, ``VPARITY``),
    with the input pixel scale taken from ``PIXAR_A2``. The exposures' alignment by tweakreg
    and the exact pixel scale of their gwcs change it slightly: the check is made again on
    the final grid.

    Parameters
    ----------
    members : list of MemberHeaders
        From :func:`precheck_members`.
    params : dict
        The resample step's parameters (jwst names; ``max_output_pixels``).

    Returns
    -------
    tuple of int or None
        ``(ny, nx)`` of the estimate, or `None` when the headers do not tell (no
        ``S_REGION``...) or a custom ``output_wcs`` is given: the check is then left to the
        steps.

    Raises
    ------
    GridTooLargeError
        When the estimate exceeds ``max_output_pixels``; the message names the parameter and
        exposures whose footprint lies far from the others.
    """
    from image3_dask.algorithms.grid import check_grid_size, grid_shape_from_sregions

    max_pixels = params.get("max_output_pixels")
    if not members or params.get("output_wcs") or not max_pixels:
        return None
    names = [m.path.name for m in members]
    shape_xy = params.get("output_shape")
    if shape_xy:
        shape = (int(shape_xy[1]), int(shape_xy[0]))
        check_grid_size(shape, max_pixels, None, names)
        return shape
    ref = members[0]
    if not all(m.s_region for m in members) or len(ref.wcsinfo) < len(WCSINFO_KEYWORDS):
        log.debug("output grid not estimated before the run: headers lack S_REGION or wcsinfo")
        return None
    if params.get("pixel_scale"):
        pscale = float(params["pixel_scale"]) / 3600.0
    elif ref.pixel_area_arcsec2:
        ratio = float(params.get("pixel_scale_ratio") or 1.0)
        pscale = math.sqrt(ref.pixel_area_arcsec2) / 3600.0 * ratio
    else:
        log.debug("output grid not estimated before the run: no PIXAR_A2 in the headers")
        return None
    try:
        shape, footprints = grid_shape_from_sregions(
            [m.s_region for m in members],
            ref.wcsinfo,
            pscale,
            rotation=params.get("rotation"),
            crpix=params.get("crpix"),
            crval=params.get("crval"),
        )
    except (ValueError, TypeError) as exc:  # an unreadable S_REGION: the steps will say
        log.debug("output grid not estimated before the run: %s", exc)
        return None
    check_grid_size(shape, max_pixels, footprints, names)
    return shape

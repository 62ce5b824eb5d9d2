"""``<exposure>_<asn_id>_crf.fits``: an exposure after outlier detection, as jwst writes it.

The official pipeline saves, after ``outlier_detection``, every input model with the suffix
``crf``: the calibrated exposure with the outliers flagged in its DQ array (``OUTLIER`` and
``DO_NOT_USE``), NaN in SCI/ERR/VAR_* wherever ``DO_NOT_USE`` is set (``match_nans_and_flags``),
the WCS corrected by tweakreg, the sky level found by skymatch in ``meta.background`` and the
status of the steps in ``meta.cal_step``. The final resample then reads these files.

Files are written under a temporary name in the destination folder and renamed when complete,
so that a file under the final name is always whole (a worker may die mid-write).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from image3_dask.io.atomic import atomic_output
from image3_dask.io.datamodel_files import open_datamodel
from image3_dask.io.storage import Location, RemotePath, location

__all__ = [
    "CRF_ARRAYS",
    "open_for_crf",
    "s_region_of",
    "save_model_atomic",
    "update_crf_model",
    "write_crf",
]

#: Pixel arrays of a crf file that outlier detection may change.
CRF_ARRAYS = ("data", "dq", "err", "var_rnoise", "var_poisson", "var_flat")


def s_region_of(wcs) -> str | None:
    """``S_REGION`` of an imaging gwcs from the corners of its bounding box.

    Follows ``jwst.assign_wcs.util.update_s_region_imaging`` (used by tweakreg): the footprint
    of the bounding box, RA wrapped to [0, 360), formatted by stcal's
    ``compute_s_region_keyword``.

    Parameters
    ----------
    wcs : gwcs.WCS
        The exposure's WCS (with a bounding box).

    Returns
    -------
    str or None
        The region, or None when the footprint cannot be computed.
    """
    from stcal.alignment.util import compute_s_region_keyword

    try:
        footprint = np.asarray(wcs.footprint(center=False, axis_type="spatial"), float)
    except Exception:  # noqa: BLE001 - a WCS without bounding box or not invertible
        return None
    if footprint.shape != (4, 2):
        return None
    footprint = footprint.copy()
    footprint[:, 0] = np.mod(footprint[:, 0], 360.0)
    return compute_s_region_keyword(footprint)


def _same_wcs(a, b, shape: tuple[int, int]) -> bool:
    """Whether two WCSs give the same world coordinates at a few pixels (exactly)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    ny, nx = shape
    xs = np.array([0.0, nx / 2, nx - 1.0, 0.0, nx - 1.0])
    ys = np.array([0.0, ny / 2, 0.0, ny - 1.0, ny - 1.0])
    try:
        wa = np.asarray(a(xs, ys, with_bounding_box=False)[:2], float)
        wb = np.asarray(b(xs, ys, with_bounding_box=False)[:2], float)
    except Exception:  # noqa: BLE001
        return False
    return bool(np.array_equal(wa, wb))


def open_for_crf(path: str | os.PathLike | RemotePath):
    """Open an exposure's datamodel to be turned into its crf file.

    Assignments are not validated one by one: :func:`save_model_atomic` validates the whole
    model when the crf is written, and per-assignment validation re-resolves the schemas.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_datamodel(location(path), validate_on_assignment=False)


def update_crf_model(
    model,
    *,
    arrays: Mapping[str, np.ndarray | None] | None = None,
    wcs=None,
    background: Mapping[str, Any] | None = None,
    cal_steps: Mapping[str, str] | None = None,
    s_region: str | None = None,
    filename: str | None = None,
) -> None:
    """Turn an opened cal ``ImageModel`` into the crf model (in place).

    Parameters
    ----------
    model : stdatamodels.jwst.datamodels.ImageModel
        The exposure as read from its cal file (or from an earlier product).
    arrays : mapping, optional
        New pixel arrays by datamodel attribute (``data``, ``dq``, ``err``, ``var_*``); None
        entries and arrays of a different shape than ``data`` are left untouched.
    wcs : gwcs.WCS, optional
        The exposure's WCS as corrected by tweakreg. When it differs from the model's,
        ``meta.wcs`` is replaced and ``meta.wcsinfo.s_region`` recomputed, as tweakreg does.
    background : mapping, optional
        ``meta.background`` entries to record: ``level``, ``subtracted``, ``method`` (None
        values are skipped, as skymatch only sets what it computed).
    cal_steps : mapping, optional
        ``meta.cal_step`` statuses, e.g. ``{"outlier_detection": "COMPLETE"}``.
    s_region : str, optional
        ``meta.wcsinfo.s_region`` to record with a new ``wcs`` (as tweakreg computed it);
        recomputed from ``wcs`` when not given.
    filename : str, optional
        New ``meta.filename`` (the crf file name).
    """
    shape = np.shape(model.data)
    for name, value in (arrays or {}).items():
        if name not in CRF_ARRAYS:
            raise ValueError(f"{name} is not a crf pixel array ({', '.join(CRF_ARRAYS)})")
        if value is None or np.shape(value) != shape:
            continue
        dtype = np.uint32 if name == "dq" else np.float32
        setattr(model, name, np.asarray(value, dtype=dtype))
    if wcs is not None and not _same_wcs(wcs, model.meta.wcs, shape):
        model.meta.wcs = wcs
        region = s_region or s_region_of(wcs)
        if region:
            model.meta.wcsinfo.s_region = region
    for key, value in (background or {}).items():
        if value is None:
            continue
        if key not in ("level", "subtracted", "method"):
            raise ValueError(f"unknown meta.background entry {key!r}")
        setattr(model.meta.background, key, value)
    for step, status in (cal_steps or {}).items():
        model.meta.cal_step.instance[step] = status
    if filename:
        model.meta.filename = filename


def save_model_atomic(model, path: str | os.PathLike | RemotePath) -> Location:
    """Save a datamodel as FITS under a temporary name, then rename it to ``path``.

    Parameters
    ----------
    model : stdatamodels.DataModel
        The model to save.
    path : path-like
        Final file name (``.fits``).

    Returns
    -------
    Path
        ``path``.
    """
    path = location(path)
    with atomic_output(path, ".partial.fits") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp, overwrite=True)
    return path


def write_crf(
    source,
    out_path: str | os.PathLike | RemotePath,
    *,
    arrays: Mapping[str, np.ndarray | None] | None = None,
    wcs=None,
    background: Mapping[str, Any] | None = None,
    cal_steps: Mapping[str, str] | None = None,
    s_region: str | None = None,
) -> Path:
    """Write ``<exposure>_<asn_id>_crf.fits`` from an exposure.

    A copy of the source model (every extension and all metadata) with the changes of
    :func:`update_crf_model`, saved atomically.

    Parameters
    ----------
    source : path-like or stdatamodels.jwst.datamodels.ImageModel
        The exposure's current file (its cal file, or a product that replaced it), or that
        file already opened with :func:`open_for_crf` (changed in place, not closed).
    out_path : path-like
        The crf file to write.
    arrays, wcs, background, cal_steps, s_region
        See :func:`update_crf_model`.

    Returns
    -------
    Path
        ``out_path``.
    """
    out_path = location(out_path)
    opened = isinstance(source, (str, os.PathLike, RemotePath))
    model = open_for_crf(source) if opened else source
    try:
        update_crf_model(
            model,
            arrays=arrays,
            wcs=wcs,
            background=background,
            cal_steps=cal_steps,
            s_region=s_region,
            filename=out_path.name,
        )
        return save_model_atomic(model, out_path)
    finally:
        if opened:
            model.close()

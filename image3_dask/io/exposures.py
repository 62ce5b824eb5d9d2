"""Level-2b calibrated imaging exposures (``*_cal.fits``): metadata for planning, pixels for workers.

The client reads only metadata and the gwcs of each exposure (:func:`read_exposure_info`) to plan
the run. Workers read the pixel arrays they need themselves, from the file path, with
:func:`read_pixels` (FITS sections read without a memory map, optionally a region only): pixels
never travel through the scheduler.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from image3_dask.errors import InputError
from image3_dask.io.storage import Location, RemotePath, location, open_fits

log = logging.getLogger(__name__)

__all__ = [
    "ExposureInfo",
    "ExposurePixels",
    "PIXEL_EXTENSIONS",
    "exposure_name",
    "group_id_from_observation",
    "read_exposure_info",
    "precheck_files",
    "read_exposures",
    "try_read_exposure_info",
    "read_pixels",
]

#: FITS extensions of a cal file that the pipeline reads, by datamodel attribute.
PIXEL_EXTENSIONS = {
    "data": "SCI",
    "err": "ERR",
    "dq": "DQ",
    "var_poisson": "VAR_POISSON",
    "var_rnoise": "VAR_RNOISE",
    "var_flat": "VAR_FLAT",
}

_SURFACE_BRIGHTNESS_UNITS = {
    "mjy/sr",
    "mjy sr-1",
    "mjy / sr",
    "mjy.sr-1",
    "mjy sr**-1",
    "mjy/steradian",
}
_GROUP_KEYS = (
    "program_number",
    "observation_number",
    "visit_number",
    "visit_group",
    "sequence_id",
    "activity_id",
    "exposure_number",
)


def group_id_from_observation(obs: dict[str, Any]) -> str:
    """Exposure group id from ``meta.observation``, the rule of jwst's ``attrs_to_group_id``.

    Exposures taken at the same time by different detectors share the group id.
    """
    missing = [k for k in _GROUP_KEYS if obs.get(k) is None]
    if missing:
        raise KeyError(", ".join(missing))
    o = obs
    return (
        f"jw{o['program_number']}{o['observation_number']}{o['visit_number']}"
        f"_{o['visit_group']}{o['sequence_id']}{o['activity_id']}_{o['exposure_number']}"
    )


@dataclass
class ExposureInfo:
    """What the planner and the tasks need to know of one exposure; small and picklable.

    Attributes
    ----------
    index : int
        Position in the association (also the exposure's context id in the CON planes).
    path : Path
        The file workers read pixels from (the input cal file, or a product that replaced it,
        such as the ``_crf`` file written by outlier detection).
    name : str
        Root of the file name without the ``_cal`` suffix (``jw..._mirimage``).
    shape : tuple of int
        ``(ny, nx)`` of the SCI array.
    group_id : str
        Exposure group (exposures taken at the same time by different detectors).
    wcs : gwcs.WCS
        The exposure's WCS, corrected by tweakreg when it has run.
    wcsinfo : dict
        ``meta.wcsinfo`` (v2_ref, v3_ref, roll_ref, ra_ref, dec_ref, v3yangle, vparity, ...).
    meta : dict
        The rest of the metadata the steps use (instrument, filter, exposure times, photometry).
    background_level : float or None
        Sky level found by skymatch (``meta.background.level``), in the SCI units.
    background_subtracted : bool
        Whether the level has already been subtracted from the SCI array.
    source_path : Path or None
        The original cal file when ``path`` names a product that replaced it.
    cal_steps : dict
        Status of the level-3 steps run on the exposure so far, as jwst records them in
        ``meta.cal_step`` (``{"tweakreg": "COMPLETE", "skymatch": "SKIPPED"}``); a step not in
        it did not run.
    content_fp : str or None
        When ``path`` is a product of an earlier step of this pipeline (a ``_crf`` file): the
        fingerprint of what made it, which identifies its pixels for the resume manifests.
        ``None`` for input files (identified by path, size and modification time).
    """

    index: int
    path: Path
    name: str
    shape: tuple[int, int]
    group_id: str
    wcs: Any
    wcsinfo: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    background_level: float | None = None
    background_subtracted: bool = False
    source_path: Path | None = None
    content_fp: str | None = None
    cal_steps: dict[str, str] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> ExposureInfo:
        """A copy with some attributes changed (exposure infos are treated as immutable)."""
        return replace(self, **changes)

    @property
    def exptime(self) -> float:
        """Exposure time in seconds (``meta.exposure.exposure_time``)."""
        return float(self.meta.get("exposure_time") or 0.0)


@dataclass
class ExposurePixels:
    """Pixel arrays of one exposure (or one region of it), as float32/uint32 numpy arrays."""

    data: np.ndarray
    dq: np.ndarray
    err: np.ndarray | None = None
    var_poisson: np.ndarray | None = None
    var_rnoise: np.ndarray | None = None
    var_flat: np.ndarray | None = None


def exposure_name(path: Path) -> str:
    """The exposure's name: the file name without ``.fits`` and its ``_cal``-like suffix.

    Task keys, crf names and messages use it, so two members must not share it.
    """
    stem = path.name
    for ext in (".fits.gz", ".fits", ".fit"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    parts = stem.rsplit("_", 1)
    return (
        parts[0]
        if len(parts) == 2 and parts[1] in ("cal", "crf", "rate", "tweakreg", "skymatch")
        else stem
    )


def read_exposure_info(path: str | os.PathLike, index: int = 0) -> ExposureInfo:
    """Read the metadata and gwcs of one calibrated imaging exposure, validating it.

    Parameters
    ----------
    path : path-like
        A level-2b ``*_cal.fits`` file (an ImageModel).
    index : int
        The exposure's position in the association.

    Raises
    ------
    InputError
        When the file is missing, cannot be opened as a JWST datamodel, is not an imaging
        ImageModel, has no gwcs, or its SCI units are not surface brightness.
    """
    from stdatamodels.jwst import datamodels

    from image3_dask.io.datamodel_files import datamodel_from_hdulist, open_datamodel

    path = location(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    whole = None  # an object is read once, for the datamodel and the header checks
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(path, RemotePath):
                whole = fits.open(io.BytesIO(path.read_bytes()), memmap=False)
                model = datamodel_from_hdulist(whole, path.name)
            else:
                model = open_datamodel(path)
    except Exception as exc:  # stdatamodels raises many types for unreadable files
        raise InputError(
            f"{path}: cannot be opened as a JWST datamodel ({type(exc).__name__}: {exc})"
        ) from None
    try:
        if not isinstance(model, datamodels.ImageModel):
            raise InputError(
                f"{path}: is a {type(model).__name__}, not an imaging ImageModel (a *_cal.fits)"
            )
        meta = model.meta
        exp_type = str(meta.exposure.type or "")
        if exp_type and not exp_type.endswith("_IMAGE"):
            raise InputError(f"{path}: exposure type {exp_type} is not an imaging mode")
        wcs = meta.wcs
        if wcs is None:
            raise InputError(
                f"{path}: has no gwcs (meta.wcs); run assign_wcs (calwebb_image2) first"
            )
        bunit = str(meta.bunit_data or "").strip()
        if bunit.lower() not in _SURFACE_BRIGHTNESS_UNITS:
            raise InputError(
                f"{path}: SCI units are {bunit or 'not set'}; calibrated exposures in surface "
                "brightness (MJy/sr) are expected (run photom in calwebb_image2)"
            )
        with contextlib.nullcontext(whole) if whole else open_fits(path, memmap=True) as hdul:
            if "SCI" not in hdul:
                raise InputError(f"{path}: has no SCI extension")
            hdr = hdul["SCI"].header
            shape = (int(hdr.get("NAXIS2", 0)), int(hdr.get("NAXIS1", 0)))
            present = {ext for ext in PIXEL_EXTENSIONS.values() if ext in hdul}
        if shape[0] < 2 or shape[1] < 2:
            raise InputError(f"{path}: SCI array has shape {shape}, not a 2-D image")
        for ext in ("DQ", "ERR"):
            if ext not in present:
                raise InputError(f"{path}: has no {ext} extension")
        obs = meta.observation.instance if meta.hasattr("observation") else {}
        group_id = getattr(meta, "group_id", None)
        if not group_id:
            try:
                group_id = group_id_from_observation(dict(obs))
            except KeyError as exc:
                log.warning(
                    "%s: meta.observation lacks %s; the exposure forms its own group", path, exc
                )
                group_id = f"{exposure_name(path)}"
        wcsinfo = dict(meta.wcsinfo.instance) if meta.hasattr("wcsinfo") else {}
        bkg = meta.background.instance if meta.hasattr("background") else {}
        info_meta = {
            "instrument": meta.instrument.name,
            "detector": meta.instrument.detector,
            "filter": meta.instrument.filter,
            "pupil": getattr(meta.instrument, "pupil", None),
            "exp_type": exp_type,
            "exposure_time": meta.exposure.exposure_time,
            "effective_exposure_time": getattr(meta.exposure, "effective_exposure_time", None),
            "measurement_time": getattr(meta.exposure, "measurement_time", None),
            "duration": getattr(meta.exposure, "duration", None),
            "start_time": meta.exposure.start_time,
            "mid_time": getattr(meta.exposure, "mid_time", None),
            "end_time": meta.exposure.end_time,
            "pixelarea_steradians": meta.photometry.pixelarea_steradians,
            "pixelarea_arcsecsq": meta.photometry.pixelarea_arcsecsq,
            "bunit_data": bunit,
            "bunit_err": meta.bunit_err,
            "s_region": wcsinfo.get("s_region"),
            # meta.background as the file has it (skymatch refuses a level whose 'subtracted'
            # is undefined, as jwst does; background_subtracted below reads None as False)
            "input_background": {"level": bkg.get("level"), "subtracted": bkg.get("subtracted")},
            "has_var": sorted(k for k, v in PIXEL_EXTENSIONS.items() if v in present),
        }
        return ExposureInfo(
            index=index,
            path=path.resolve(),
            source_path=path.resolve(),
            name=exposure_name(path),
            shape=shape,
            group_id=str(group_id),
            wcs=wcs,
            wcsinfo=wcsinfo,
            meta=info_meta,
            background_level=bkg.get("level"),
            background_subtracted=bool(bkg.get("subtracted", False)),
        )
    finally:
        model.close()
        if whole is not None:
            whole.close()


def precheck_files(paths: list[Location]) -> None:
    """Cheap checks of every member before a cluster is started: exists, is FITS, has SCI.

    Reads only the FITS headers (milliseconds per file); the full validation of each exposure
    (:func:`read_exposure_info`) then runs in parallel on the cluster.

    Raises
    ------
    InputError
        Listing every file that is missing or not a FITS file with a SCI extension.
    """
    problems = []
    for p in paths:
        p = location(p)
        if not p.is_file():
            problems.append(f"{p}: file not found")
            continue
        try:
            with open_fits(p, memmap=False, lazy_load_hdus=True) as hdul:
                if "SCI" not in hdul:
                    problems.append(f"{p}: has no SCI extension; not a calibrated JWST exposure")
        except (OSError, ValueError) as exc:
            problems.append(f"{p}: not a readable FITS file ({exc})")
    if problems:
        raise InputError("invalid input:\n  " + "\n  ".join(problems))


def try_read_exposure_info(path: str | os.PathLike, index: int) -> ExposureInfo | str:
    """:func:`read_exposure_info`, returning the problem as a message instead of raising.

    This is the task run on workers when the exposures are validated in parallel.
    """
    try:
        return read_exposure_info(path, index=index)
    except InputError as exc:
        return str(exc)


def read_exposures(
    paths: list[Path],
    mapper: Callable[[list[tuple[Path, int]]], list[ExposureInfo | str]] | None = None,
) -> list[ExposureInfo]:
    """Read and validate every exposure of an association before any work starts.

    All problems are collected and reported together, one line per file.

    Parameters
    ----------
    paths : list of Path
        The members, in association order.
    mapper : callable, optional
        Applies :func:`try_read_exposure_info` to a list of ``(path, index)`` pairs and returns
        the results in order (e.g. as tasks on a cluster); serial when omitted.

    Raises
    ------
    InputError
        When any exposure is unusable, or the exposures do not share instrument and filter.
    """
    problems: list[str] = []
    seen: dict[Path, int] = {}
    todo: list[tuple[Path, int]] = []
    for i, p in enumerate(paths):
        rp = location(p).resolve()
        if rp in seen:
            problems.append(f"{p}: listed twice in the association (members {seen[rp]} and {i})")
            continue
        seen[rp] = i
        todo.append((location(p), len(todo)))
    if mapper is None:
        results = [try_read_exposure_info(p, i) for p, i in todo]
    else:
        results = mapper(todo)
    infos = [r for r in results if isinstance(r, ExposureInfo)]
    problems += [r for r in results if isinstance(r, str)]
    if not problems and infos:
        ref = infos[0]
        for info in infos[1:]:
            for key in ("instrument", "filter", "pupil"):
                if info.meta.get(key) != ref.meta.get(key):
                    problems.append(
                        f"{info.path}: {key} is {info.meta.get(key)} but {ref.path.name} has "
                        f"{ref.meta.get(key)}; all members of an image3 association must share "
                        "instrument and filter"
                    )
    if problems:
        raise InputError("invalid input:\n  " + "\n  ".join(problems))
    return infos


def read_pixels(
    path: str | os.PathLike | RemotePath,
    arrays: tuple[str, ...] = ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat"),
    region: tuple[slice, slice] | None = None,
) -> ExposurePixels:
    """Read pixel arrays of an exposure, optionally only a region, as native-endian arrays.

    Parameters
    ----------
    path : path-like or RemotePath
        The exposure file; on an object store only the headers and the rows of the region
        are read (ranged reads).
    arrays : tuple of str
        Datamodel attribute names to read (``data`` is always read); missing variance
        extensions are returned as ``None``.
    region : (slice, slice), optional
        ``(y, x)`` slices; the whole array when omitted.
    """
    region = region or (slice(None), slice(None))
    out: dict[str, np.ndarray | None] = {}
    path = location(path)
    if isinstance(path, RemotePath):
        return _read_remote_pixels(path, arrays, region)
    try:
        # Sections read only the rows of the region from disk (no memory map: scaled integer
        # extensions such as DQ with BZERO cannot be memory-mapped).
        with open_fits(location(path), memmap=False, lazy_load_hdus=True) as hdul:
            for name in ("data", *[a for a in arrays if a != "data"]):
                ext = PIXEL_EXTENSIONS[name]
                if ext not in hdul:
                    out[name] = None
                    continue
                # whole rows are one contiguous read; column slicing is then done in memory
                arr = np.asarray(hdul[ext].section[region[0], :])[:, region[1]]
                dtype = np.uint32 if name == "dq" else np.float32
                out[name] = arr.astype(dtype, copy=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot read pixel arrays ({exc})") from None
    if out.get("dq") is None:
        out["dq"] = np.zeros(out["data"].shape, np.uint32)
    return ExposurePixels(**out)


def _read_remote_pixels(
    path: RemotePath, arrays: tuple[str, ...], region: tuple[slice, slice]
) -> ExposurePixels:
    """:func:`read_pixels` of an object: one range request per array, for the region's rows."""
    from image3_dask.io.fits_ranges import read_rows

    names = ["data", *[a for a in arrays if a != "data"]]
    try:
        got = read_rows(path, [PIXEL_EXTENSIONS[n] for n in names], region[0])
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read pixel arrays ({exc})") from None
    if got["SCI"] is None:
        raise InputError(f"{path}: has no SCI image extension")
    out: dict[str, np.ndarray | None] = {}
    for name in names:
        arr = got[PIXEL_EXTENSIONS[name]]
        dtype = np.uint32 if name == "dq" else np.float32
        out[name] = None if arr is None else arr[:, region[1]].astype(dtype, copy=True)
    if out.get("dq") is None:
        out["dq"] = np.zeros(out["data"].shape, np.uint32)
    return ExposurePixels(**out)

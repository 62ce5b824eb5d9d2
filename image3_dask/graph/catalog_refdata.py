"""source_catalog's reference data: APCORR and ABVEGAOFFSET, from CRDS, overrides or defaults.

Resolved on the client (the tables are small) and sent to the tasks as values
(:class:`~image3_dask.graph.catalog_tasks.RefData`); the files used are named in the
products' metadata as jwst names them (:func:`ref_file_meta`, :func:`record_ref_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from image3_dask.algorithms.catalog import (
    SIMULATED_DEFAULTS,
    abvega_offset_from_table,
    aperture_params_from_table,
    default_refdata,
)
from image3_dask.algorithms.catalog.refdata import FALLBACK_APERTURE_PARAMS, validate_aperture_ee
from image3_dask.errors import ConfigError, InputError
from image3_dask.graph.catalog_tasks import RefData
from image3_dask.io.catalog_products import read_abvega_table, read_apcorr_table
from image3_dask.io.crds_refs import References

log = logging.getLogger("image3_dask")

__all__ = ["ReferenceDataMismatch", "record_ref_files", "ref_file_meta", "resolve_refdata"]


class ReferenceDataMismatch(InputError):
    """A reference file has no row (or several) for the mosaic's configuration.

    jwst's ``ReferenceData`` raises ``RuntimeError`` then, and its step warns and makes no
    catalog; the step here does the same (:func:`submit`).
    """


def resolve_refdata(cfg: dict, meta, references: References | None = None) -> RefData:
    """Aperture corrections and AB-Vega offset of the mosaic, from the run's reference files.

    Order, for each of the two: the ``override_apcorr`` / ``override_abvegaoffset`` file; else
    the file CRDS gave (:func:`~image3_dask.io.crds_refs.resolve_references`); else, only when
    every exposure was written by the image3-dask simulator (``references.simulated``) and the
    instrument/filter is one of :data:`SIMULATED_DEFAULTS`, the documented defaults of
    :func:`~image3_dask.algorithms.catalog.default_refdata`; else jwst's fallback without
    reference files (radii 1, 2, 3 px without aperture correction; AB-Vega offset 0), with
    jwst's warnings.

    Parameters
    ----------
    cfg : dict
        Step parameters.
    meta : stdatamodels.jwst.datamodels.ImageModel
        Mosaic metadata (instrument, filter, pupil, subarray, detector, pixel_scale_ratio).
    references : References, optional
        The run's reference files (default: only the ``override_*`` parameters, real data).

    Returns
    -------
    RefData
        The values and their origin.

    Raises
    ------
    InputError
        When a reference file is unreadable.
    ReferenceDataMismatch
        When a reference file has no single row for the mosaic's configuration (filter,
        pupil, subarray, encircled energy).
    ConfigError
        When the aperture encircled energies are invalid.
    """
    if references is None:
        references = References()
        for reftype in ("apcorr", "abvegaoffset"):
            if cfg.get(f"override_{reftype}"):
                references.paths[reftype] = str(cfg[f"override_{reftype}"])
                references.origin[reftype] = "override"
    inst = (meta.meta.instrument.name or "").upper()
    filt = meta.meta.instrument.filter
    pupil = meta.meta.instrument.pupil
    detector = meta.meta.instrument.detector
    subarray = meta.meta.subarray.name
    ee = (int(cfg["aperture_ee1"]), int(cfg["aperture_ee2"]), int(cfg["aperture_ee3"]))
    try:
        validate_aperture_ee(ee)
    except ValueError as exc:
        raise ConfigError(f"source_catalog.aperture_ee: {exc}") from None
    ratio = meta.meta.resample.pixel_scale_ratio
    if ratio is None:
        log.warning(
            "model.meta.resample.pixel_scale_ratio was not found. Assuming the native "
            "detector pixel scale (i.e., pixel_scale_ratio = 1)"
        )
        ratio = 1.0
    simulated = references.simulated and (inst, str(filt).upper()) in SIMULATED_DEFAULTS
    sources = []
    uncorrected = []
    if references.path("apcorr"):
        ap = _from_reference(
            references,
            "apcorr",
            read_apcorr_table,
            lambda table: aperture_params_from_table(
                table,
                instrument=inst,
                filter_name=filt,
                pupil=pupil,
                subarray=subarray,
                aperture_ee=ee,
                pixel_scale_ratio=ratio,
            ),
            sources,
        )
    elif simulated:
        try:
            ap, _ = default_refdata(inst, filt, aperture_ee=ee, pixel_scale_ratio=ratio)
        except ValueError as exc:
            raise ConfigError(f"source_catalog.aperture_ee: {exc}") from None
        spec = SIMULATED_DEFAULTS[(inst, str(filt).upper())]
        sources.append(
            f"APCORR: image3-dask defaults for simulated {inst} {filt} (Gaussian PSF, FWHM "
            f'{spec.psf_fwhm_arcsec}" = {spec.psf_fwhm_pixels:.2f} native px; the exposures '
            "carry the simulator's mark)"
        )
    else:
        log.warning(
            "APCorrModel reference file was not input. Using fallback aperture sizes "
            "without any aperture corrections."
        )
        ap = dict(FALLBACK_APERTURE_PARAMS)
        why = references.messages.get("apcorr") or "no override_apcorr"
        sources.append(f"APCORR: jwst fallback, no aperture correction ({why})")
        uncorrected.append("no aperture correction (no APCORR reference file)")
    if references.path("abvegaoffset"):
        offset = _from_reference(
            references,
            "abvegaoffset",
            read_abvega_table,
            lambda table: abvega_offset_from_table(
                table, instrument=inst, filter_name=filt, pupil=pupil, detector=detector
            ),
            sources,
        )
    elif simulated:
        offset = SIMULATED_DEFAULTS[(inst, str(filt).upper())].abvega_offset
        sources.append(f"ABVEGAOFFSET: image3-dask default for simulated {inst} {filt}")
    else:
        log.warning(
            "ABVEGAOFFSET reference file was not input. Catalog Vega magnitudes are not correct."
        )
        offset = 0.0
        why = references.messages.get("abvegaoffset") or "no override_abvegaoffset"
        sources.append(f"ABVEGAOFFSET: jwst fallback, 0 ({why})")
        uncorrected.append("Vega magnitudes equal AB (no ABVEGAOFFSET reference file)")
    return RefData(ap, float(offset), "; ".join(sources), tuple(uncorrected))


def _from_reference(
    references: References,
    reftype: str,
    read: Callable[[Any, str], Any],
    values: Callable[[Any], Any],
    sources: list[str],
) -> Any:
    """``values(table)`` of the ``reftype`` reference file, read with ``read(path, what)``.

    A file with no row for the mosaic (``ValueError``) is a :class:`ReferenceDataMismatch`
    (jwst: a warning and no catalog); missing columns (``KeyError``) an ``InputError``. The
    file used is logged as jwst logs it and added to ``sources``.
    """
    path = references.path(reftype)
    what = _refname(reftype, references)
    table = read(path, what)
    try:
        out = values(table)
    except ValueError as exc:
        raise ReferenceDataMismatch(f"{path}: {what}: {exc}") from None
    except KeyError as exc:
        raise InputError(f"{path}: {what}: {exc}") from None
    log.info("Using %s reference file: %s", reftype.upper(), path)
    sources.append(f"{reftype.upper()} from {path} ({references.origin.get(reftype)})")
    return out


def _refname(reftype: str, references: References) -> str:
    """How messages name a reference file: ``override_apcorr`` or ``CRDS APCORR file``."""
    if references.origin.get(reftype) == "override":
        return f"override_{reftype}"
    return f"CRDS {reftype.upper()} reference file"


def ref_file_meta(references: References) -> dict[str, Any]:
    """``meta.ref_file`` entries of the catalog products, as jwst records them.

    Parameters
    ----------
    references : References
        The run's reference files.

    Returns
    -------
    dict
        ``{"apcorr": {"name": ...}, "abvegaoffset": {"name": ...}}`` (``crds://<file>``, an
        override's absolute path, or ``N/A``), with ``crds`` (``sw_version``,
        ``context_used``) when CRDS was asked.
    """
    out: dict[str, Any] = {
        reftype: {"name": references.ref_file_name(reftype)}
        for reftype in ("apcorr", "abvegaoffset")
    }
    if references.context:
        out["crds"] = {"sw_version": references.sw_version, "context_used": references.context}
    return out


def record_ref_files(meta, references: References) -> None:
    """``meta.ref_file`` of the segmentation map: the files the catalog used (jwst's names)."""
    entries = ref_file_meta(references)
    crds = entries.pop("crds", None)
    # stdatamodels' schemas have no APCORR/ABVEGAOFFSET entries; the tree keeps them anyway
    meta.meta.ref_file.instance.update(entries)
    if crds:
        meta.meta.ref_file.crds.sw_version = crds["sw_version"]
        meta.meta.ref_file.crds.context_used = crds["context_used"]

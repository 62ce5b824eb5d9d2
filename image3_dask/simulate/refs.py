"""Reference files for the simulated instruments: APCORR and ABVEGAOFFSET, as stdatamodels models.

The official source_catalog step reads aperture corrections and AB-Vega offsets from CRDS
reference files. For simulated data they are made here from the simulator's PSF (whose
encircled energy is exact), so that the official pipeline and image3-dask can run offline on
the same data with the same references (``override_apcorr`` / ``override_abvegaoffset``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from image3_dask.simulate.instruments import get_instrument
from image3_dask.simulate.psf import get_psf

__all__ = ["write_reference_files"]


def write_reference_files(instrument: str, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``apcorr_<inst>.fits`` and ``abvega_<inst>.asdf`` for a simulated instrument.

    Returns
    -------
    (Path, Path)
        The APCORR (ApcorrModel FITS) and ABVEGAOFFSET (ABVegaOffsetModel ASDF) files.
    """
    import stdatamodels.jwst.datamodels as dm

    from image3_dask.algorithms.catalog.refdata import SIMULATED_DEFAULTS, apcorr_table_from_psf
    from image3_dask.simulate.quirks import NAMED_SUBARRAYS

    inst = get_instrument(instrument)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    psf = get_psf(instrument)
    key = inst.name.upper()
    if key == "MIRI":
        selectors = {"filter": inst.filter, "subarray": "FULL"}
        model = dm.MirImgApcorrModel()
        dtype = [("filter", "S12"), ("subarray", "S15")]
    else:
        selectors = {"filter": inst.filter, "pupil": "CLEAR"}
        model = dm.NrcImgApcorrModel()
        dtype = [("filter", "S12"), ("pupil", "S15")]
    rows = []
    # MIRI tables are selected by subarray: full frames are FULL, cropped simulations GENERIC;
    # like the real MIRI APCORR files, rows for the imager's named subarrays too
    subarrays = ("FULL", "GENERIC", *NAMED_SUBARRAYS["MIRI"]) if key == "MIRI" else (None,)
    for sub in subarrays:
        if sub:
            selectors["subarray"] = sub
        tab = apcorr_table_from_psf(
            psf, eefractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), selectors=selectors
        )
        rows += [tuple(r) for r in tab]
    dtype += [(c, "<f4") for c in ("eefraction", "radius", "apcorr", "skyin", "skyout")]
    model.apcorr_table = np.array(rows, dtype=dtype)
    _describe(model, "APCORR", key)
    ap_path = folder / f"apcorr_{instrument.lower()}.fits"
    model.save(ap_path)
    defaults = SIMULATED_DEFAULTS.get((key, inst.filter.upper()))
    offset = defaults.abvega_offset if defaults is not None else 0.0
    ab = dm.ABVegaOffsetModel()
    ab.abvega_offset = Table({"filter": [inst.filter], "abvega_offset": [offset]})
    if key != "MIRI":
        ab.abvega_offset["pupil"] = ["CLEAR"]
    _describe(ab, "ABVEGAOFFSET", key)
    ab_path = folder / f"abvega_{instrument.lower()}.asdf"
    ab.save(ab_path)
    return ap_path, ab_path


def _describe(model, reftype: str, instrument: str) -> None:
    model.meta.reftype = reftype
    model.meta.instrument.name = instrument
    model.meta.description = f"{reftype} for the image3-dask simulated {instrument}"
    model.meta.author = "image3-dask simulator"
    model.meta.pedigree = "DUMMY"
    model.meta.useafter = "2022-01-01T00:00:00"

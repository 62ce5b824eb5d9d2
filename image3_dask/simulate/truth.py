"""Truth of a simulation: a single JSON file (``truth.json``) and the objects it loads into.

File format (``"format": "image3-dask-simulation-truth"``, ``"version": 1``)::

    {
      "format": ..., "version": 1,
      "instrument": "MIRI", "filter": "F770W", "seed": 0, "pattern": "dither",
      "shape": [ny, nx],                    # simulated detector array
      "field": {"ra": .., "dec": .., "roll": ..},   # field centre (deg), V3 PA at the field (deg)
      "params": {...},                      # every knob passed to simulate()
      "psf": {"model": "moffat", "fwhm_pixels": .., "beta": .., "rmax_pixels": ..},
      "sersic_truncation": 4.0,             # galaxies are cut at this many r_eff
      "units": {...},                       # units of the fields below
      "detectors": {                        # per detector name
        "MIRIMAGE": {"v2_ref":.., "v3_ref":.., "v3yangle":.., "vparity":-1,
                     "distortion": {"x": {"c1_0":..}, "y": {...}},   # Polynomial2D coefficients
                     "bad_pixels": {"y": [..], "x": [..], "kind": ["hot"|"dead"], "value": [..]}}
      },
      "sources": {"id": [..], "kind": ["star"|"galaxy"], "ra": [..], "dec": [..],
                  "flux_jy": [..], "r_eff_arcsec": [..], "sersic_n": [..],
                  "axis_ratio": [..], "pa_deg": [..]},
      "exposures": [                        # one entry per written file, association order
        {"filename": "jw..._cal.fits", "exposure_number": 1, "detector": "MIRIMAGE",
         "group_id": "jw01234001001_02101_00001", "tile": [row, col] | null, "dither": 0,
         "offset_arcsec": [dx, dy],         # pattern offset in the ideal frame
         "true_attitude":    {"v2_ref", "v3_ref", "roll_ref", "ra_ref", "dec_ref"},
         "written_attitude": {...},         # what meta.wcsinfo / the file's gwcs use
         "pointing_error": {"dra_arcsec", "ddec_arcsec", "droll_arcsec"},
         "sky_mjysr": .., "start_mjd": ..,
         "cosmic_rays": {"y": [..], "x": [..], "value": [..]},   # MJy/sr added per pixel
         "subarray": null | {"name", "xstart", "ystart", "xsize", "ysize"},  # in "shape"
         "background_subtracted": 0.0}      # MJy/sr taken off SCI (image2_background)
      ]
    }

Cosmic rays are residual (undetected) hits: they are not flagged in DQ and do not change ERR;
pixels of bad or reference pixels are not hit. Bad pixels are a property of the detector
(identical in all its exposures); ``ExposureTruth.bad_pixels`` repeats them for convenience.
MIRI reference columns (4 on each side) and NIRCam reference pixels (4 on each edge) are
``DO_NOT_USE | REFERENCE_PIXEL`` with NaN in SCI/ERR/VAR_*. Files with a ``subarray`` hold
that part of the ``shape`` array (bad pixels, reference pixels and the true WCS are the
detector's, seen through the subarray); cosmic rays are in the file's own pixel coordinates.

The pointing error moves the reference point by ``dra_arcsec`` (on the sky, i.e. already times
``cos(dec)``) and ``ddec_arcsec`` and the roll by ``droll_arcsec``: at the reference pixel the
written WCS gives ``ra_ref + dra/cos(dec)/3600, dec_ref + ddec/3600``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from image3_dask.simulate.instruments import get_instrument

__all__ = ["ExposureTruth", "Truth", "build_true_wcs", "build_written_wcs", "load_truth"]

TRUTH_FORMAT = "image3-dask-simulation-truth"
TRUTH_VERSION = 1
_ATT_KEYS = ("v2_ref", "v3_ref", "roll_ref", "ra_ref", "dec_ref")


@dataclass
class ExposureTruth:
    """Truth of one written file (one detector of one exposure)."""

    filename: str
    exposure_number: int
    detector: str
    group_id: str
    tile: tuple[int, int] | None
    dither: int
    offset_arcsec: tuple[float, float]
    true_attitude: dict[str, float]
    written_attitude: dict[str, float]
    pointing_error: dict[str, float]
    sky_mjysr: float
    start_mjd: float
    cosmic_rays: dict[str, np.ndarray]
    bad_pixels: dict[str, np.ndarray] = field(default_factory=dict)
    subarray: dict | None = None
    background_subtracted: float = 0.0

    def subarray_obj(self):
        """The file's :class:`~image3_dask.simulate.quirks.Subarray`, ``None`` for the whole
        simulated array."""
        from image3_dask.simulate.quirks import Subarray

        return None if self.subarray is None else Subarray(**self.subarray)

    def to_json(self) -> dict:
        """JSON-ready dictionary (bad pixels are stored with the detector)."""
        return {
            "filename": self.filename,
            "exposure_number": self.exposure_number,
            "detector": self.detector,
            "group_id": self.group_id,
            "tile": list(self.tile) if self.tile is not None else None,
            "dither": self.dither,
            "offset_arcsec": list(self.offset_arcsec),
            "true_attitude": dict(self.true_attitude),
            "written_attitude": dict(self.written_attitude),
            "pointing_error": dict(self.pointing_error),
            "sky_mjysr": self.sky_mjysr,
            "start_mjd": self.start_mjd,
            "cosmic_rays": {k: np.asarray(v).tolist() for k, v in self.cosmic_rays.items()},
            "subarray": self.subarray,
            "background_subtracted": self.background_subtracted,
        }


@dataclass
class Truth:
    """Loaded truth of a simulation (see the module docstring for the file format).

    Attributes
    ----------
    meta : dict
        Everything at the top level of the file except detectors, sources and exposures.
    detectors : dict
        Per-detector geometry, distortion and bad pixels.
    sources : astropy.table.Table
        The truth catalogue.
    exposures : list of ExposureTruth
        One per file, in association order.
    path : Path or None
        The truth file.
    """

    meta: dict
    detectors: dict
    sources: Table
    exposures: list[ExposureTruth]
    path: Path | None = None

    @property
    def instrument(self) -> str:
        return self.meta["instrument"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])

    def exposure(self, key: int | str | os.PathLike) -> ExposureTruth:
        """Exposure truth by index or by file name (any path ending with the name)."""
        if isinstance(key, (int, np.integer)):
            return self.exposures[int(key)]
        name = Path(key).name
        for e in self.exposures:
            if e.filename == name:
                return e
        raise KeyError(f"{name}: not a file of this simulation")

    def true_wcs(self, key: int | str | os.PathLike):
        """True gwcs of an exposure (see :func:`build_true_wcs`)."""
        return build_true_wcs(self, key)

    def written_wcs(self, key: int | str | os.PathLike):
        """The gwcs written to the file, including the pointing error."""
        return build_written_wcs(self, key)

    def to_json(self) -> dict:
        out = dict(self.meta)
        out["detectors"] = self.detectors
        out["sources"] = {c: np.asarray(self.sources[c]).tolist() for c in self.sources.colnames}
        out["exposures"] = [e.to_json() for e in self.exposures]
        return out

    def write(self, path: str | os.PathLike) -> Path:
        """Write the truth JSON file."""
        path = Path(path)
        with open(path, "w") as fh:
            json.dump(self.to_json(), fh, separators=(",", ":"))
            fh.write("\n")
        self.path = path
        return path


def load_truth(path: str | os.PathLike) -> Truth:
    """Read a ``truth.json`` written by :func:`image3_dask.simulate.simulate`.

    ``path`` may be the file or the simulation folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "truth.json"
    with open(path) as fh:
        raw = json.load(fh)
    if raw.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path}: not an image3-dask simulation truth file")
    detectors = raw.pop("detectors")
    sources = Table({k: np.asarray(v) for k, v in raw.pop("sources").items()})
    if "kind" in sources.colnames:
        sources["kind"] = sources["kind"].astype(str)
    exposures = []
    for e in raw.pop("exposures"):
        bp = detectors[e["detector"]].get("bad_pixels", {})
        exposures.append(
            ExposureTruth(
                filename=e["filename"],
                exposure_number=int(e["exposure_number"]),
                detector=e["detector"],
                group_id=e["group_id"],
                tile=tuple(e["tile"]) if e["tile"] is not None else None,
                dither=int(e["dither"]),
                offset_arcsec=tuple(e["offset_arcsec"]),
                true_attitude=e["true_attitude"],
                written_attitude=e["written_attitude"],
                pointing_error=e["pointing_error"],
                sky_mjysr=float(e["sky_mjysr"]),
                start_mjd=float(e["start_mjd"]),
                cosmic_rays={
                    "y": np.asarray(e["cosmic_rays"]["y"], dtype=int),
                    "x": np.asarray(e["cosmic_rays"]["x"], dtype=int),
                    "value": np.asarray(e["cosmic_rays"]["value"], dtype=float),
                },
                bad_pixels={
                    "y": np.asarray(bp.get("y", []), dtype=int),
                    "x": np.asarray(bp.get("x", []), dtype=int),
                    "kind": np.asarray(bp.get("kind", []), dtype=str),
                    "value": np.asarray(bp.get("value", []), dtype=float),
                },
                subarray=e.get("subarray"),
                background_subtracted=float(e.get("background_subtracted", 0.0)),
            )
        )
    return Truth(meta=raw, detectors=detectors, sources=sources, exposures=exposures, path=path)


def _wcs_from_truth(truth, key, which: str):
    from image3_dask.simulate.wcs import make_wcs

    if not isinstance(truth, Truth):
        truth = load_truth(truth)
    e = truth.exposure(key)
    inst = get_instrument(truth.instrument)
    det = inst.detectors[e.detector]
    att = getattr(e, which)
    attitude = tuple(float(att[k]) for k in _ATT_KEYS)
    coeffs = truth.detectors[e.detector]["distortion"]
    return make_wcs(inst, det, truth.shape, attitude, coeffs, e.subarray_obj())


def build_true_wcs(truth: Truth | str | os.PathLike, exposure: int | str | os.PathLike = 0):
    """Rebuild the TRUE gwcs of one simulated file.

    Parameters
    ----------
    truth : Truth or path-like
        Loaded truth, the truth file or the simulation folder.
    exposure : int or str
        Index in the association or file name of the exposure.

    Returns
    -------
    gwcs.WCS
        ``detector -> v2v3 -> v2v3vacorr -> world`` without the pointing error.
    """
    return _wcs_from_truth(truth, exposure, "true_attitude")


def build_written_wcs(truth: Truth | str | os.PathLike, exposure: int | str | os.PathLike = 0):
    """Rebuild the gwcs written to the file (true WCS plus the injected pointing error)."""
    return _wcs_from_truth(truth, exposure, "written_attitude")

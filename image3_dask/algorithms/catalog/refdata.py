"""Aperture corrections and AB-Vega offsets as plain tables (APCORR / ABVEGAOFFSET).

The I/O layer reads the CRDS or ``override_apcorr`` / ``override_abvegaoffset``
reference files into astropy Tables (``apcorr_table`` and ``abvega_offset``
of the stdatamodels models) and passes them here; the selection rules are
those of ``jwst.source_catalog.reference_data.ReferenceData``:

* APCORR rows: NIRCam/NIRISS by ``filter`` and ``pupil``, MIRI by ``filter``
  and ``subarray``, FGS all rows; one row per requested encircled energy
  (``round(eefraction * 100) == ee``).  Radii (and the background annulus)
  are divided by the resample ``pixel_scale_ratio``.
* ABVEGAOFFSET row: NIRCam/NIRISS by ``filter`` and ``pupil``, MIRI by
  ``filter``, FGS by ``detector``.

For the simulated instruments, :func:`apcorr_table_from_psf` builds an APCORR
table from a PSF description (a Gaussian FWHM in pixels, or any callable
encircled-energy function), and :data:`SIMULATED_DEFAULTS` documents the
defaults used when no reference file is available.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.optimize import brentq

__all__ = [
    "FALLBACK_APERTURE_PARAMS",
    "SIMULATED_DEFAULTS",
    "GaussianPSF",
    "SimulatedFilterDefaults",
    "abvega_offset_from_table",
    "aperture_params_from_table",
    "apcorr_table_from_psf",
    "default_refdata",
    "encircled_energy_function",
    "validate_aperture_ee",
]

#: Parameters used by jwst when no APCORR file is given (no aperture correction).
FALLBACK_APERTURE_PARAMS: dict[str, Any] = {
    "aperture_radii": np.array((1.0, 2.0, 3.0)),
    "aperture_corrections": np.array((1.0, 1.0, 1.0)),
    "aperture_ee": np.array((1, 2, 3)),
    "bkg_aperture_inner_radius": 5.0,
    "bkg_aperture_outer_radius": 10.0,
}


def validate_aperture_ee(aperture_ee: Sequence[int]) -> np.ndarray:
    """Check the three encircled energies (strictly increasing, 0 < ee < 100).

    Parameters
    ----------
    aperture_ee : sequence of int
        ``(aperture_ee1, aperture_ee2, aperture_ee3)``.

    Returns
    -------
    numpy.ndarray
        Integer array.
    """
    ee = np.array(aperture_ee).astype(int)
    if len(ee) != 3:
        raise ValueError("aperture_ee must contain only 3 values")
    if not np.all(ee[1:] > ee[:-1]):
        raise ValueError("aperture_ee values must be strictly increasing")
    if np.any((ee <= 0) | (ee >= 100)):
        raise ValueError("aperture_ee values must be between 0 and 100")
    return ee


def _as_str(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "ascii")
    return np.char.strip(arr.astype(str))


def _select(table: Table, selector: dict[str, str | None]) -> Table:
    mask = np.ones(len(table), dtype=bool)
    for key, value in selector.items():
        if key not in table.colnames:
            raise KeyError(f"{key} not found in the reference table")
        mask &= _as_str(table[key]) == str(value)
    return table[mask]


def aperture_params_from_table(
    apcorr_table: Table | np.ndarray,
    *,
    instrument: str,
    filter_name: str | None = None,
    pupil: str | None = None,
    subarray: str | None = None,
    aperture_ee: Sequence[int] = (30, 50, 70),
    pixel_scale_ratio: float | None = 1.0,
) -> dict[str, Any]:
    """Aperture radii and corrections for the catalog from an APCORR table.

    Parameters
    ----------
    apcorr_table : astropy.table.Table or structured array
        ``apcorr_table`` of an APCORR reference model (columns ``eefraction``,
        ``radius``, ``apcorr``, ``skyin``, ``skyout`` plus selectors).
    instrument : str
        ``NIRCAM``, ``NIRISS``, ``MIRI`` or ``FGS``.
    filter_name, pupil, subarray : str, optional
        Selectors (see module docstring).
    aperture_ee : sequence of int, optional
        Encircled energies (step ``aperture_ee1..3``).
    pixel_scale_ratio : float or None, optional
        Resampled / native pixel scale; None means 1.

    Returns
    -------
    dict
        ``aperture_ee``, ``aperture_radii`` (mosaic pixels),
        ``aperture_corrections``, ``bkg_aperture_inner_radius``,
        ``bkg_aperture_outer_radius``.
    """
    ee = validate_aperture_ee(aperture_ee)
    table = Table(apcorr_table) if not isinstance(apcorr_table, Table) else apcorr_table
    inst = instrument.upper()
    if inst in ("NIRCAM", "NIRISS"):
        rows = _select(table, {"filter": filter_name, "pupil": pupil})
    elif inst == "MIRI":
        rows = _select(table, {"filter": filter_name, "subarray": subarray})
    elif inst == "FGS":
        rows = table
    else:
        raise ValueError(f"{instrument} is not a valid instrument")
    if len(rows) == 0:
        raise ValueError(f"APCORR data missing for {inst} {filter_name} {pupil or subarray or ''}")
    pct = np.round(np.asarray(rows["eefraction"]) * 100)
    radii, apcorrs, skyin, skyout = [], [], [], []
    for value in ee:
        match = rows[pct == value]
        if len(match) != 1:
            raise ValueError(
                f"expected one APCORR row for encircled energy {value}, found {len(match)}"
            )
        radii.append(match["radius"][0])
        apcorrs.append(match["apcorr"][0])
        skyin.append(match["skyin"][0])
        skyout.append(match["skyout"][0])
    if len(np.unique(skyin)) != 1 or len(np.unique(skyout)) != 1:
        raise ValueError("expected a single skyin/skyout in the APCORR rows")
    ratio = 1.0 if pixel_scale_ratio is None else pixel_scale_ratio
    return {
        "aperture_ee": ee,
        "aperture_radii": np.array(radii) / ratio,
        "aperture_corrections": np.array(apcorrs),
        "bkg_aperture_inner_radius": skyin[0] / ratio,
        "bkg_aperture_outer_radius": skyout[0] / ratio,
    }


def abvega_offset_from_table(
    abvega_table: Table | np.ndarray,
    *,
    instrument: str,
    filter_name: str | None = None,
    pupil: str | None = None,
    detector: str | None = None,
) -> float:
    """``m_AB - m_Vega`` from an ABVEGAOFFSET table.

    Parameters
    ----------
    abvega_table : astropy.table.Table or structured array
        ``abvega_offset`` table of an ABVEGAOFFSET model.
    instrument : str
        Instrument name.
    filter_name, pupil, detector : str, optional
        Selectors (see module docstring).

    Returns
    -------
    float
        The offset.
    """
    table = Table(abvega_table) if not isinstance(abvega_table, Table) else abvega_table
    inst = instrument.upper()
    if inst in ("NIRCAM", "NIRISS"):
        selector = {"filter": filter_name, "pupil": pupil}
    elif inst == "MIRI":
        selector = {"filter": filter_name}
    elif inst == "FGS":
        selector = {"detector": detector}
    else:
        raise ValueError(f"{instrument} is not a valid instrument")
    rows = _select(table, selector)
    if len(rows) != 1:
        raise ValueError(f"expected one ABVEGAOFFSET row for {selector}, found {len(rows)}")
    return float(rows["abvega_offset"][0])


@dataclass(frozen=True)
class GaussianPSF:
    """Circular Gaussian PSF described by its FWHM in (mosaic) pixels.

    Attributes
    ----------
    fwhm : float
        Full width at half maximum in pixels.
    """

    fwhm: float

    def encircled_energy(self, radius: np.ndarray | float) -> np.ndarray:
        """Fraction of the flux within ``radius`` pixels: ``1 - exp(-r^2 / 2 s^2)``.

        Parameters
        ----------
        radius : float or numpy.ndarray
            Radius in pixels.

        Returns
        -------
        numpy.ndarray
            Encircled energy fraction.
        """
        sigma = self.fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return 1.0 - np.exp(-(np.asarray(radius, dtype=float) ** 2) / (2.0 * sigma**2))


def encircled_energy_function(psf: Any) -> Callable[[np.ndarray | float], np.ndarray]:
    """Encircled-energy function from a generic PSF description.

    Parameters
    ----------
    psf : float, GaussianPSF, callable, or object
        A Gaussian FWHM in pixels; a :class:`GaussianPSF`; a callable
        ``ee(radius_pixels) -> fraction``; or any object with an
        ``encircled_energy(radius)`` method or a ``fwhm`` attribute (pixels).

    Returns
    -------
    callable
        ``ee(radius) -> fraction`` (monotonic, tends to 1).
    """
    if isinstance(psf, int | float):
        return GaussianPSF(float(psf)).encircled_energy
    if hasattr(psf, "encircled_energy"):
        return psf.encircled_energy
    if callable(psf):
        return psf
    if hasattr(psf, "fwhm"):
        return GaussianPSF(float(psf.fwhm)).encircled_energy
    raise TypeError(f"cannot derive an encircled-energy function from {psf!r}")


def apcorr_table_from_psf(
    psf: Any,
    *,
    eefractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    skyin: float | None = None,
    skyout: float | None = None,
    selectors: dict[str, str] | None = None,
    rmax: float = 200.0,
) -> Table:
    """APCORR-like table (``eefraction, radius, apcorr, skyin, skyout``) from a PSF.

    The radius of each encircled-energy fraction is solved from the PSF's
    encircled-energy function and ``apcorr = 1 / eefraction`` (infinite
    aperture; for a Gaussian the annulus holds a negligible part of the flux
    when ``skyin`` >= 3 FWHM).

    Parameters
    ----------
    psf : object
        PSF description, see :func:`encircled_energy_function`.
    eefractions : sequence of float, optional
        Encircled energy fractions of the rows.
    skyin, skyout : float, optional
        Background annulus radii in pixels; default: radius of 99.9 % EE
        (at least 4 px) and ``skyin + max(4, skyin/2)``.
    selectors : dict, optional
        Extra constant string columns, e.g. ``{"filter": "F200W", "pupil": "CLEAR"}``.
    rmax : float, optional
        Search bound for the radii, in pixels.

    Returns
    -------
    astropy.table.Table
        The table, usable with :func:`aperture_params_from_table`.
    """
    ee_func = encircled_energy_function(psf)

    def radius_of(frac: float) -> float:
        return float(brentq(lambda r: float(ee_func(r)) - frac, 1e-6, rmax, xtol=1e-8))

    radii = np.array([radius_of(f) for f in eefractions])
    if skyin is None:
        skyin = max(4.0, math.ceil(radius_of(0.999)))
    if skyout is None:
        skyout = skyin + max(4.0, skyin / 2.0)
    table = Table()
    for key, value in (selectors or {}).items():
        table[key] = [value] * len(radii)
    table["eefraction"] = np.asarray(eefractions, dtype=np.float32)
    table["radius"] = radii.astype(np.float32)
    table["apcorr"] = (1.0 / np.asarray(eefractions)).astype(np.float32)
    table["skyin"] = np.full(len(radii), skyin, dtype=np.float32)
    table["skyout"] = np.full(len(radii), skyout, dtype=np.float32)
    return table


@dataclass(frozen=True)
class SimulatedFilterDefaults:
    """Documented defaults for a simulated instrument/filter.

    Attributes
    ----------
    instrument, filter_name : str
        Instrument and filter.
    pixel_scale_arcsec : float
        Native pixel scale.
    psf_fwhm_arcsec : float
        Approximate PSF FWHM (JWST user documentation values).
    vega_flux_jy : float
        Approximate Vega flux density in the band; the AB-Vega offset is
        ``2.5 log10(3631 Jy / vega_flux_jy)``.
    selectors : dict
        Selector columns for APCORR tables of that instrument.
    """

    instrument: str
    filter_name: str
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    vega_flux_jy: float
    selectors: tuple[tuple[str, str], ...]

    @property
    def abvega_offset(self) -> float:
        """``m_AB - m_Vega`` in magnitudes."""
        return 2.5 * math.log10(3631.0 / self.vega_flux_jy)

    @property
    def psf_fwhm_pixels(self) -> float:
        """PSF FWHM in native pixels."""
        return self.psf_fwhm_arcsec / self.pixel_scale_arcsec


#: Defaults for the simulated instruments (approximate public values; use the
#: real reference files for science).
SIMULATED_DEFAULTS: dict[tuple[str, str], SimulatedFilterDefaults] = {
    ("MIRI", "F770W"): SimulatedFilterDefaults(
        "MIRI", "F770W", 0.11, 0.269, 64.8, (("filter", "F770W"), ("subarray", "FULL"))
    ),
    ("NIRCAM", "F200W"): SimulatedFilterDefaults(
        "NIRCAM", "F200W", 0.031, 0.066, 759.6, (("filter", "F200W"), ("pupil", "CLEAR"))
    ),
}


def default_refdata(
    instrument: str,
    filter_name: str,
    *,
    psf: Any | None = None,
    aperture_ee: Sequence[int] = (30, 50, 70),
    pixel_scale_ratio: float | None = 1.0,
) -> tuple[dict[str, Any], float]:
    """Aperture parameters and AB-Vega offset for a simulated instrument.

    Parameters
    ----------
    instrument, filter_name : str
        A key of :data:`SIMULATED_DEFAULTS`.
    psf : object, optional
        PSF description in *native* pixels (see
        :func:`encircled_energy_function`), e.g. the simulator's PSF model;
        default: a Gaussian of the documented FWHM.
    aperture_ee : sequence of int, optional
        Encircled energies.
    pixel_scale_ratio : float or None, optional
        Mosaic / native pixel scale.

    Returns
    -------
    aperture_params : dict
        As :func:`aperture_params_from_table`.
    abvega_offset : float
        ``m_AB - m_Vega``.
    """
    key = (instrument.upper(), filter_name.upper())
    if key not in SIMULATED_DEFAULTS:
        raise KeyError(f"no simulated defaults for {key}; known: {sorted(SIMULATED_DEFAULTS)}")
    spec = SIMULATED_DEFAULTS[key]
    sel = dict(spec.selectors)
    fractions = sorted({e / 100.0 for e in validate_aperture_ee(aperture_ee)})
    table = apcorr_table_from_psf(
        spec.psf_fwhm_pixels if psf is None else psf, eefractions=fractions, selectors=sel
    )
    params = aperture_params_from_table(
        table,
        instrument=spec.instrument,
        filter_name=sel.get("filter"),
        pupil=sel.get("pupil"),
        subarray=sel.get("subarray"),
        aperture_ee=aperture_ee,
        pixel_scale_ratio=pixel_scale_ratio,
    )
    return params, spec.abvega_offset

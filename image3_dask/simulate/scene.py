"""Truth catalogue of the simulated field: point sources and Sersic galaxies.

Columns of the source table (:class:`astropy.table.Table`):

``id`` (int), ``kind`` (``"star"`` or ``"galaxy"``), ``ra``, ``dec`` (deg, ICRS), ``flux_jy`` (total
flux in the filter, Jy), and for galaxies ``r_eff_arcsec`` (half-light radius of the untruncated
profile), ``sersic_n``, ``axis_ratio`` (b/a), ``pa_deg`` (major axis, east of north); these are 0
for stars. Galaxy profiles are truncated at :data:`SERSIC_TRUNCATION` effective radii and
convolved with the PSF; ``flux_jy`` is the total flux of the rendered (truncated) galaxy.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from image3_dask.simulate.instruments import Instrument

__all__ = ["SERSIC_TRUNCATION", "make_scene", "tangent_to_sky", "sky_to_tangent"]

SERSIC_TRUNCATION = 4.0


def sky_to_tangent(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection (arcsec, xi east, eta north) about ``(ra0, dec0)``."""
    ra, dec = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.rad2deg(xi) * 3600.0, np.rad2deg(eta) * 3600.0


def tangent_to_sky(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`sky_to_tangent`."""
    x = np.deg2rad(np.asarray(xi, float) / 3600.0)
    y = np.deg2rad(np.asarray(eta, float) / 3600.0)
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    den = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, den))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def make_scene(
    rng: np.random.Generator,
    inst: Instrument,
    ra0: float,
    dec0: float,
    box_arcsec: tuple[float, float, float, float],
    n_stars: int,
    n_galaxies: int,
    flux_range_jy: tuple[float, float] | None = None,
) -> Table:
    """Draw stars and galaxies uniformly over a tangent-plane box.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator (the simulation is deterministic for a given seed).
    inst : Instrument
        Sets the flux and size ranges.
    ra0, dec0 : float
        Tangent point (deg).
    box_arcsec : tuple
        ``(xi_min, xi_max, eta_min, eta_max)`` in arcsec.
    n_stars, n_galaxies : int
        Numbers of sources.
    flux_range_jy : tuple, optional
        Star flux range (default the instrument's); fluxes are log-distributed, faint ones
        dominating.
    """
    fmin, fmax = flux_range_jy or inst.flux_range_jy
    n = n_stars + n_galaxies
    x0, x1, y0, y1 = box_arcsec
    xi = rng.uniform(x0, x1, n)
    eta = rng.uniform(y0, y1, n)
    ra, dec = tangent_to_sky(xi, eta, ra0, dec0)
    lf = np.log10(fmin) + (np.log10(fmax) - np.log10(fmin)) * rng.uniform(0, 1, n) ** 2
    flux = 10**lf
    kind = np.array(["star"] * n_stars + ["galaxy"] * n_galaxies)
    r_eff = np.zeros(n)
    sersic_n = np.zeros(n)
    q = np.zeros(n)
    pa = np.zeros(n)
    g = slice(n_stars, n)
    # galaxies: half-light radii of 1-4 PSF FWHM, brighter on average than stars' faint end
    r_eff[g] = inst.fwhm_arcsec * rng.uniform(1.0, 4.0, n_galaxies)
    sersic_n[g] = rng.uniform(0.5, 4.0, n_galaxies)
    q[g] = rng.uniform(0.35, 1.0, n_galaxies)
    pa[g] = rng.uniform(0.0, 180.0, n_galaxies)
    flux[g] *= 3.0
    return Table(
        {
            "id": np.arange(1, n + 1),
            "kind": kind,
            "ra": ra,
            "dec": dec,
            "flux_jy": flux,
            "r_eff_arcsec": r_eff,
            "sersic_n": sersic_n,
            "axis_ratio": q,
            "pa_deg": pa,
        }
    )

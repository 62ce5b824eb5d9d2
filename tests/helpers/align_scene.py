"""Minimal JWST-like gwcs objects and synthetic star fields for alignment/skymatch tests."""

from __future__ import annotations

import numpy as np
from astropy import coordinates as coord
from astropy.table import Table

from helpers.wcs import PSCALE, jwst_wcs


def perturbed(wcsinfo: dict, dra_arcsec: float, ddec_arcsec: float, droll_deg: float, shape):
    """Return a WCS with the pointing offset by the given amounts (a "wrong" pointing)."""
    dec = wcsinfo["dec_ref"] + ddec_arcsec / 3600.0
    ra = wcsinfo["ra_ref"] + dra_arcsec / 3600.0 / np.cos(np.deg2rad(dec))
    return jwst_wcs(ra, dec, wcsinfo["roll_ref"] + droll_deg, shape=shape)


def tile_pointings(center_wcs, offsets_pix: list[tuple[float, float]]):
    """Sky positions of the given pixel offsets from the centre of ``center_wcs``."""
    nx, ny = center_wcs.pixel_shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    out = []
    for dx, dy in offsets_pix:
        ra, dec = center_wcs(cx + dx, cy + dy, with_bounding_box=False)
        out.append((float(ra), float(dec)))
    return out


def star_field(center_wcs, half_size_pix: float, nstars: int, rng, min_sep_pix: float = 0.0):
    """Random stars (RA, Dec, flux) in a square of +-half_size around the centre pixel."""
    nx, ny = center_wcs.pixel_shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    xs, ys = [], []
    ntry = 0
    while len(xs) < nstars and ntry < 50 * nstars:
        ntry += 1
        x = rng.uniform(cx - half_size_pix, cx + half_size_pix)
        y = rng.uniform(cy - half_size_pix, cy + half_size_pix)
        if min_sep_pix > 0 and xs:
            d2 = (np.asarray(xs) - x) ** 2 + (np.asarray(ys) - y) ** 2
            if d2.min() < min_sep_pix**2:
                continue
        xs.append(x)
        ys.append(y)
    ra, dec = center_wcs(np.asarray(xs), np.asarray(ys), with_bounding_box=False)
    flux = rng.uniform(200.0, 5000.0, len(xs))
    return Table({"RA": ra, "DEC": dec, "flux": flux})


def observe_catalog(true_wcs, stars: Table, rng, noise_pix: float = 0.01, shape=(200, 200)):
    """Catalog (x, y, flux) of the stars that fall on a detector with WCS ``true_wcs``."""
    ny, nx = shape
    x, y = true_wcs.invert(
        np.asarray(stars["RA"]), np.asarray(stars["DEC"]), with_bounding_box=False
    )
    x = np.asarray(x)
    y = np.asarray(y)
    inside = (x > 2) & (x < nx - 3) & (y > 2) & (y < ny - 3)
    x = x[inside] + rng.normal(0, noise_pix, inside.sum())
    y = y[inside] + rng.normal(0, noise_pix, inside.sum())
    return Table(
        {
            "id": np.arange(1, inside.sum() + 1),
            "x": x,
            "y": y,
            "flux": np.asarray(stars["flux"])[inside],
        }
    )


def render(true_wcs, stars: Table, rng, shape=(200, 200), fwhm=2.5, sky=0.0, noise=1.0):
    """Image with Gaussian stars, flat sky and Gaussian noise."""
    ny, nx = shape
    cat = observe_catalog(true_wcs, stars, rng, noise_pix=0.0, shape=shape)
    yy, xx = np.mgrid[0:ny, 0:nx]
    img = np.full(shape, sky, dtype=float)
    sig = fwhm / 2.3548
    for x, y, f in zip(cat["x"], cat["y"], cat["flux"], strict=True):
        x0, x1 = int(max(0, x - 8)), int(min(nx, x + 9))
        y0, y1 = int(max(0, y - 8)), int(min(ny, y + 9))
        sub = np.exp(-((xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2) / (2 * sig**2))
        img[y0:y1, x0:x1] += f * sub / (2 * np.pi * sig**2)
    img += rng.normal(0, noise, shape)
    return img, cat


def pixel_residuals(corrected_wcs, true_wcs, shape=(200, 200), n=9):
    """Pixel offsets between where ``corrected_wcs`` and ``true_wcs`` put a grid of pixels."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    ra, dec = corrected_wcs(gx.ravel(), gy.ravel(), with_bounding_box=False)
    x, y = true_wcs.invert(ra, dec, with_bounding_box=False)
    return np.asarray(x) - gx.ravel(), np.asarray(y) - gy.ravel()


def pair_residuals(wcs_a, true_a, wcs_b, true_b, shape=(200, 200), n=15):
    """Gauge-free relative residuals (pixels) of two corrected WCSs over their true overlap."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    ra, dec = true_a(gx.ravel(), gy.ravel(), with_bounding_box=False)
    xb, yb = true_b.invert(ra, dec, with_bounding_box=False)
    xb = np.asarray(xb)
    yb = np.asarray(yb)
    inb = (xb > -0.5) & (xb < nx - 0.5) & (yb > -0.5) & (yb < ny - 0.5)
    if not inb.any():
        return np.array([])
    ra_a, dec_a = wcs_a(gx.ravel()[inb], gy.ravel()[inb], with_bounding_box=False)
    ra_b, dec_b = wcs_b(xb[inb], yb[inb], with_bounding_box=False)
    ca = coord.SkyCoord(ra_a, dec_a, unit="deg")
    cb = coord.SkyCoord(ra_b, dec_b, unit="deg")
    return ca.separation(cb).arcsec / PSCALE

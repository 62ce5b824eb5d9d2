"""Render the truth catalogue through an exposure's true WCS.

Each source is placed at the detector position given by the inverse of the true gwcs. Point
sources are the pixel-integrated PSF (:class:`~image3_dask.simulate.psf.MoffatPSF`); galaxies
are truncated Sersic profiles laid out on the sky (mapped to pixels with the local Jacobian of
the WCS), integrated over sub-pixels and convolved with the PSF. Rendering yields the flux
falling in each pixel (Jy); dividing by each pixel's true solid angle gives surface brightness.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.signal import fftconvolve

from image3_dask.simulate.psf import MoffatPSF
from image3_dask.simulate.scene import SERSIC_TRUNCATION, sky_to_tangent

__all__ = ["add_stamp", "local_jacobian", "render_flux", "sersic_bn", "source_positions"]


def source_positions(w, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based detector ``(x, y)`` of sky positions through the inverse of ``w``."""
    x, y = w.invert(np.asarray(ra, float), np.asarray(dec, float), with_bounding_box=False)
    return np.asarray(x, float), np.asarray(y, float)


def local_jacobian(w, x, y, ra, dec) -> np.ndarray:
    """``d(xi, eta)/d(x, y)`` (arcsec per pixel) of ``w`` at detector points, shape ``(n, 2, 2)``.

    ``xi`` points east and ``eta`` north in the tangent plane at each ``(ra, dec)``.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    h = 0.5
    ra_px, dec_px = w(np.r_[x + h, x - h], np.r_[y, y], with_bounding_box=False)
    ra_py, dec_py = w(np.r_[x, x], np.r_[y + h, y - h], with_bounding_box=False)
    n = x.size
    ra2 = np.r_[ra, ra]
    dec2 = np.r_[dec, dec]
    xi_x, eta_x = sky_to_tangent(ra_px, dec_px, ra2, dec2)
    xi_y, eta_y = sky_to_tangent(ra_py, dec_py, ra2, dec2)
    jac = np.empty((n, 2, 2))
    jac[:, 0, 0] = (xi_x[:n] - xi_x[n:]) / (2 * h)
    jac[:, 1, 0] = (eta_x[:n] - eta_x[n:]) / (2 * h)
    jac[:, 0, 1] = (xi_y[:n] - xi_y[n:]) / (2 * h)
    jac[:, 1, 1] = (eta_y[:n] - eta_y[n:]) / (2 * h)
    return jac


def sersic_bn(n: float) -> float:
    """Ciotti & Bertin (1999) approximation of the Sersic ``b_n``."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def add_stamp(image: np.ndarray, stamp: np.ndarray, ix: int, iy: int) -> None:
    """Add ``stamp`` (odd square) to ``image`` centred on pixel ``(ix, iy)``, clipped at edges."""
    ny, nx = image.shape
    half = stamp.shape[0] // 2
    x0, y0 = ix - half, iy - half
    x1, y1 = x0 + stamp.shape[1], y0 + stamp.shape[0]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, nx), min(y1, ny)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    image[cy0:cy1, cx0:cx1] += stamp[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _galaxy_stamp(
    fx: float,
    fy: float,
    jac: np.ndarray,
    r_eff: float,
    n: float,
    q: float,
    pa_deg: float,
    psf_kernel: np.ndarray,
) -> np.ndarray:
    """Sersic galaxy with centre at sub-pixel offset ``(fx, fy)``, PSF-convolved, sum 1."""
    # semi-major axis of the truncation ellipse in pixels, with a margin for pixel anisotropy
    scale = np.sqrt(abs(np.linalg.det(jac)))
    rmax_pix = 1.05 * SERSIC_TRUNCATION * r_eff / scale
    half = int(np.ceil(rmax_pix)) + 1
    pa = np.deg2rad(pa_deg)
    bn = sersic_bn(n)

    def prof(dx, dy):
        xi = jac[0, 0] * dx + jac[0, 1] * dy
        eta = jac[1, 0] * dx + jac[1, 1] * dy
        s = xi * np.sin(pa) + eta * np.cos(pa)
        t = xi * np.cos(pa) - eta * np.sin(pa)
        r = np.sqrt(s * s + (t / q) ** 2)
        out = np.exp(-bn * ((r / r_eff) ** (1.0 / n) - 1.0))
        out[r > SERSIC_TRUNCATION * r_eff] = 0.0
        return out

    grid = np.arange(-half, half + 1, dtype=float)
    img = prof(grid[None, :] - fx, grid[:, None] - fy)
    # integrate the inner pixels (steep profile) over sub-pixels
    core = min(half, 4)
    os_ = 7
    sub = (np.arange(os_) + 0.5) / os_ - 0.5
    cg = np.arange(-core, core + 1, dtype=float)
    xs = (cg[:, None] + sub[None, :]).ravel() - fx
    ys = (cg[:, None] + sub[None, :]).ravel() - fy
    mc = 2 * core + 1
    c = prof(xs[None, :], ys[:, None]).reshape(mc, os_, mc, os_).mean(axis=(1, 3))
    img[half - core : half + core + 1, half - core : half + core + 1] = c
    conv = fftconvolve(img, psf_kernel, mode="full")
    conv = np.clip(conv, 0.0, None)
    total = conv.sum()
    return conv / total if total > 0 else conv


def render_flux(
    sources: Table,
    w,
    shape: tuple[int, int],
    psf: MoffatPSF,
    oversample: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux (Jy) falling in each pixel of a ``shape`` detector, for all sources of the table.

    Parameters
    ----------
    sources : Table
        The truth catalogue (see :mod:`image3_dask.simulate.scene`).
    w : gwcs.WCS
        The exposure's true WCS.
    shape : tuple of int
        ``(ny, nx)``.
    psf : MoffatPSF
        The PSF.
    oversample : int
        Sub-pixels per axis used for the PSF integral.

    Returns
    -------
    image : ndarray
        Flux per pixel (Jy), float64.
    x, y : ndarray
        Detector positions of all sources (NaN where the inverse WCS failed).
    """
    ny, nx = shape
    image = np.zeros(shape, dtype=float)
    if len(sources) == 0:
        return image, np.zeros(0), np.zeros(0)
    ra = np.asarray(sources["ra"], float)
    dec = np.asarray(sources["dec"], float)
    x, y = source_positions(w, ra, dec)
    kind = np.asarray(sources["kind"]).astype(str)
    flux = np.asarray(sources["flux_jy"], float)
    hp = psf.stamp_half_size
    margin = hp + 200
    ok = np.isfinite(x) & np.isfinite(y)
    ok &= (x > -margin) & (x < nx - 1 + margin) & (y > -margin) & (y < ny - 1 + margin)
    ix = np.rint(np.where(ok, x, 0)).astype(int)
    iy = np.rint(np.where(ok, y, 0)).astype(int)
    fx, fy = x - ix, y - iy

    stars = np.flatnonzero(ok & (kind == "star"))
    stars = stars[(x[stars] > -hp) & (x[stars] < nx - 1 + hp)]
    stars = stars[(y[stars] > -hp) & (y[stars] < ny - 1 + hp)]
    for i in stars:
        stamp = psf.pixel_stamp(fx[i], fy[i], hp, oversample)
        add_stamp(image, flux[i] * stamp, ix[i], iy[i])

    gals = np.flatnonzero(ok & (kind == "galaxy"))
    if gals.size:
        kernel = psf.pixel_stamp(0.0, 0.0, hp, oversample)
        jac = local_jacobian(w, x[gals], y[gals], ra[gals], dec[gals])
        r_eff = np.asarray(sources["r_eff_arcsec"], float)
        sn = np.asarray(sources["sersic_n"], float)
        q = np.asarray(sources["axis_ratio"], float)
        pa = np.asarray(sources["pa_deg"], float)
        scale = np.sqrt(np.abs(np.linalg.det(jac)))
        reach = 1.05 * SERSIC_TRUNCATION * r_eff[gals] / scale + hp + 2
        for k, i in enumerate(gals):
            if (
                x[i] + reach[k] < 0
                or x[i] - reach[k] > nx - 1
                or y[i] + reach[k] < 0
                or y[i] - reach[k] > ny - 1
            ):
                continue
            stamp = _galaxy_stamp(fx[i], fy[i], jac[k], r_eff[i], sn[i], q[i], pa[i], kernel)
            h = stamp.shape[0] // 2
            if ix[i] + h < 0 or ix[i] - h > nx - 1 or iy[i] + h < 0 or iy[i] - h > ny - 1:
                continue
            add_stamp(image, flux[i] * stamp, ix[i], iy[i])
    return image, x, y

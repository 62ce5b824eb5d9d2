"""Synthetic dithered exposures with known truth for the outlier-detection tests.

4 exposures of 128x128 pixels with fractional dithers
(two slightly rotated), a 0.1"/pix TAN gwcs each, Gaussian stars integrated
over pixels, flat sky, Gaussian noise and single-pixel cosmic rays at known
positions; an output grid gwcs covering all exposures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from drizzle.resample import Drizzle
from gwcs import wcs as gwcs_wcs
from scipy.special import erf
from stcal.resample.utils import calc_pixmap

from helpers.wcs import tan_wcs

PIXSCALE_DEG = 0.1 / 3600.0
RA0, DEC0 = 53.16, -27.78
SKY = 10.0
SIGMA = 1.0  # per-pixel noise (err)
PSF_SIGMA = 1.3


def _pix_integrated_gauss(xc, yc, flux, shape, psf_sigma=PSF_SIGMA):
    """Image of Gaussian stars integrated over pixels (x, y centres in pixel units)."""
    ny, nx = shape
    img = np.zeros(shape)
    xe = np.arange(nx + 1) - 0.5
    ye = np.arange(ny + 1) - 0.5
    s = psf_sigma * np.sqrt(2.0)
    for x, y, f in zip(xc, yc, flux, strict=True):
        fx = np.diff(0.5 * erf((xe - x) / s))
        fy = np.diff(0.5 * erf((ye - y) / s))
        img += f * np.outer(fy, fx)
    return img


@dataclass
class Exposure:
    """One synthetic exposure."""

    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    var_rnoise: np.ndarray
    wcs: gwcs_wcs.WCS
    truth: np.ndarray  # noiseless, CR-free
    cr_yx: np.ndarray  # (n, 2) int positions
    cr_amp: np.ndarray  # in units of SIGMA


@dataclass
class Scene:
    """Exposures, output grid and star catalogue."""

    exposures: list[Exposure]
    grid_wcs: gwcs_wcs.WCS
    grid_shape: tuple[int, int]
    star_radec: np.ndarray = field(repr=False)


def make_scene(
    seed: int = 0,
    shape: tuple[int, int] = (128, 128),
    grid_shape: tuple[int, int] = (148, 150),
    nstars: int = 25,
    ncr: int = 60,
    cr_amp_range: tuple[float, float] = (5.0, 60.0),
    dithers=((0.0, 0.0, 0.0), (5.37, 3.61, 0.0), (11.73, 8.29, 0.25), (3.18, 12.52, -0.2)),
    aligned: bool = False,
    psf_sigma: float = PSF_SIGMA,
) -> Scene:
    """Build a dithered (or, with ``aligned``, undithered) set of exposures."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    gny, gnx = grid_shape
    grid_wcs = tan_wcs(((gnx - 1) / 2.0, (gny - 1) / 2.0), 0.0, grid_shape)
    # stars in grid pixel coords, kept away from the edges
    gx = rng.uniform(15, gnx - 15, nstars)
    gy = rng.uniform(15, gny - 15, nstars)
    flux = 10 ** rng.uniform(2.0, 4.0, nstars)  # peak ~ flux / (2 pi 1.69) ~ 10..1000 sigma
    ra, dec = grid_wcs(gx, gy)
    exposures = []
    for k, (dx, dy, rot) in enumerate(dithers):
        if aligned:
            dx, dy, rot = 0.0, 0.0, 0.0
        crpix = ((nx - 1) / 2.0 + dx - 6.0, (ny - 1) / 2.0 + dy - 6.0)
        w = tan_wcs(crpix, rot, shape)
        ex, ey = w.invert(ra, dec, with_bounding_box=False)
        truth = SKY + _pix_integrated_gauss(ex, ey, flux, shape, psf_sigma)
        sci = truth + rng.normal(0.0, SIGMA, shape)
        # single-pixel CRs at known positions (not on the outer 2-pixel border)
        n = ncr
        cy = rng.integers(2, ny - 2, n)
        cx = rng.integers(2, nx - 2, n)
        yx = np.unique(np.stack([cy, cx], axis=1), axis=0)
        amp = rng.uniform(*cr_amp_range, len(yx))
        sci[yx[:, 0], yx[:, 1]] += amp * SIGMA
        err = np.full(shape, SIGMA, np.float32)
        dq = np.zeros(shape, np.uint32)
        # a few pre-flagged bad pixels
        bad = rng.integers(0, ny, (5, 2))
        dq[bad[:, 0], bad[:, 1]] = 1
        sci = sci.astype(np.float32)
        sci[dq & 1 == 1] = np.nan
        err[dq & 1 == 1] = np.nan
        var_rnoise = np.full(shape, 0.5 * SIGMA**2, np.float32) * rng.uniform(0.9, 1.1, shape)
        exposures.append(
            Exposure(
                sci=sci,
                err=err,
                dq=dq,
                var_rnoise=var_rnoise.astype(np.float32),
                wcs=w,
                truth=truth.astype(np.float32),
                cr_yx=yx,
                cr_amp=amp,
            )
        )
        del k
    return Scene(exposures, grid_wcs, grid_shape, np.stack([ra, dec], 1))


def pixmap_of(exp: Exposure, scene: Scene) -> np.ndarray:
    """Exposure -> grid pixel map, as drizzle and stcal's gwcs_blot compute it."""
    return calc_pixmap(exp.wcs, scene.grid_wcs, exp.sci.shape)


def ivm_weight(exp: Exposure) -> np.ndarray:
    """``build_driz_weight(weight_type='ivm', good_bits='~DO_NOT_USE')`` of the exposure."""
    w = (1.0 / exp.var_rnoise) * ((exp.dq & 1) == 0)
    return w.astype(np.float32)


def drizzle_singles(scene: Scene, pixfrac: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Single-drizzle every exposure (one group each) onto the full grid."""
    sci, wht = [], []
    for exp in scene.exposures:
        d = Drizzle(kernel="square", fillval="NaN", out_shape=scene.grid_shape, disable_ctx=True)
        d.add_image(
            exp.sci,
            exptime=1.0,
            pixmap=pixmap_of(exp, scene),
            weight_map=ivm_weight(exp),
            pixfrac=pixfrac,
            iscale=1.0,
        )
        sci.append(d.out_img.astype(np.float32))
        wht.append(d.out_wht.astype(np.float32))
    return np.stack(sci), np.stack(wht)


def tiles(shape: tuple[int, int], ty: int, tx: int):
    """Disjoint tiles (slices) covering ``shape``; edge tiles smaller."""
    for y0 in range(0, shape[0], ty):
        for x0 in range(0, shape[1], tx):
            yield slice(y0, min(y0 + ty, shape[0])), slice(x0, min(x0 + tx, shape[1]))

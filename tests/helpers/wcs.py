"""The WCS builders of the tests, one per kind of WCS they need.

- `jwst_wcs`: a JWST-like gwcs ``detector -> v2v3 -> world`` (with jwst's ``v23tosky``), as
  tweakwcs's ``JWSTWCSCorrector`` needs (alignment and skymatch tests).
- `tan_wcs`: a distortion-free TAN gwcs whose tangent point sits at a given pixel (outlier
  detection scenes, dithered by moving ``crpix``).
- `distorted_wcs`: a TAN gwcs with a 2nd-order polynomial distortion, centred on given
  coordinates (resample and pixel-map tests).
"""

from __future__ import annotations

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs
from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

V2_REF = 120.0  # arcsec
V3_REF = -500.0  # arcsec
PSCALE = 0.1  # arcsec / pixel


def v23tosky(ra_ref: float, dec_ref: float, roll_ref: float, v2_ref: float, v3_ref: float):
    """Same construction as ``jwst.assign_wcs.pointing._v23tosky``."""
    angles = np.array([v2_ref / 3600.0, -v3_ref / 3600.0, roll_ref, dec_ref, -ra_ref])
    rot = models.RotationSequence3D(angles, axes_order="zyxyz")
    m = (
        (models.Scale(1 / 3600) & models.Scale(1 / 3600))
        | SphericalToCartesian(wrap_lon_at=180)
        | rot
        | CartesianToSpherical(wrap_lon_at=360)
    )
    m.name = "v23tosky"
    return m


def jwst_wcs(
    ra_ref: float,
    dec_ref: float,
    roll_ref: float = 0.0,
    shape: tuple[int, int] = (200, 200),
    pscale: float = PSCALE,
    v2_ref: float = V2_REF,
    v3_ref: float = V3_REF,
    det_rot_deg: float = 0.3,
):
    """Return ``(gwcs, wcsinfo)`` with frames detector -> v2v3 -> world."""
    ny, nx = shape
    crpix = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    th = np.deg2rad(det_rot_deg)
    # V2 increases to the left of the detector x axis (parity flip), as for most JWST imagers.
    matrix = pscale * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    det2v23 = (
        (models.Shift(-crpix[0]) & models.Shift(-crpix[1]))
        | models.AffineTransformation2D(matrix=matrix)
        | (models.Shift(v2_ref) & models.Shift(v3_ref))
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(
        name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec)
    )
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    pipeline = [
        (detector, det2v23),
        (v2v3, v23tosky(ra_ref, dec_ref, roll_ref, v2_ref, v3_ref)),
        (world, None),
    ]
    w = gwcs_wcs.WCS(pipeline)
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.pixel_shape = (nx, ny)
    wcsinfo = {
        "v2_ref": v2_ref,
        "v3_ref": v3_ref,
        "roll_ref": roll_ref,
        "ra_ref": ra_ref,
        "dec_ref": dec_ref,
    }
    return w, wcsinfo


def tan_wcs(
    crpix: tuple[float, float],
    rot_deg: float = 0.0,
    shape: tuple[int, int] | None = None,
    pixscale_deg: float = 0.1 / 3600.0,
    ra0: float = 53.16,
    dec0: float = -27.78,
) -> gwcs_wcs.WCS:
    """TAN imaging gwcs (no distortion): tangent point ``(ra0, dec0)`` at ``crpix`` (x, y)."""
    th = np.deg2rad(rot_deg)
    matrix = pixscale_deg * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    fwd = (
        (models.Shift(-crpix[0]) & models.Shift(-crpix[1]))
        | models.AffineTransformation2D(matrix=matrix)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra0, dec0, 180.0)
    )
    det = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    w = gwcs_wcs.WCS([(det, fwd), (sky, None)])
    if shape is not None:
        ny, nx = shape
        w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
        w.array_shape = shape
    return w


def distorted_wcs(ra, dec, pa, shape=(128, 128), scale_arcsec=0.1, vparity=-1, dist=1e-4):
    """Imaging gwcs: 2nd-order polynomial distortion, rotation ``pa``, TAN projection."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    s = scale_arcsec / 3600
    px = models.Polynomial2D(2, c1_0=1, c2_0=dist / nx, c1_1=0.5 * dist / nx, c0_2=-dist / ny)
    py = models.Polynomial2D(2, c0_1=1, c2_0=-0.5 * dist / nx, c1_1=dist / nx, c0_2=0.7 * dist / ny)
    ipx = models.Polynomial2D(2, c1_0=1, c2_0=-dist / nx, c1_1=-0.5 * dist / nx, c0_2=dist / ny)
    ipy = models.Polynomial2D(2, c0_1=1, c2_0=0.5 * dist / nx, c1_1=-dist / nx, c0_2=-0.7 * dist / ny)
    distort = models.Mapping((0, 1, 0, 1)) | px & py
    distort.inverse = models.Mapping((0, 1, 0, 1)) | ipx & ipy
    r = np.deg2rad(pa)
    pc = np.array([[vparity * np.cos(r), np.sin(r)], [-vparity * np.sin(r), np.cos(r)]])
    tr = (
        (models.Shift(-cx) & models.Shift(-cy))
        | distort
        | models.AffineTransformation2D(matrix=pc * s)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra, dec, 180)
    )
    det = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    w = gwcs_wcs.WCS([(det, tr), (sky, None)])
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.array_shape = shape
    return w

"""gwcs pipelines shaped like JWST's ``assign_wcs`` for imaging.

The pipeline has the frames of ``jwst.assign_wcs`` (jwst 3.0) for MIRI/NIRCam imaging:
``detector -> v2v3 -> v2v3vacorr -> world``. The ``detector -> v2v3`` transform is an
optical distortion (shift to the reference pixel, 3rd-order polynomial, pixel scale, ideal to
V2/V3 rotation with ``v3yangle`` and ``vparity``) with a fitted polynomial inverse; the velocity
aberration step is an identity (scale factor 1); ``v2v3vacorr -> world`` is the same rotation
sequence as ``jwst.assign_wcs.pointing.v23tosky``. ``tweakwcs.correctors.JWSTWCSCorrector`` and
jwst's tweakreg insert their correction before the last transform.

Pointings are described by *attitude* tuples ``(v2, v3, roll, ra, dec)``: the V2/V3 point
``(v2, v3)`` (arcsec) looks at ``(ra, dec)`` (deg) and V3 has position angle ``roll`` (deg) there,
exactly the parameters of ``v23tosky`` (``meta.wcsinfo`` v2_ref, v3_ref, roll_ref, ra_ref, dec_ref).
"""

from __future__ import annotations

import json
import zlib
from functools import lru_cache, reduce

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.coordinates.matrix_utilities import rotation_matrix
from astropy.modeling import bind_bounding_box
from astropy.modeling.models import (
    AffineTransformation2D,
    Identity,
    Mapping,
    Polynomial2D,
    RotationSequence3D,
    Scale,
    Shift,
)
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs
from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

from image3_dask.simulate.instruments import Detector, Instrument

__all__ = [
    "Attitude",
    "attitude_at",
    "attitude_for_detector",
    "bounding_box",
    "distortion_coefficients",
    "distortion_model",
    "footprint_s_region",
    "make_wcs",
    "perturb_attitude",
    "pixel_area_map",
    "reference_pixel",
    "roll_at",
    "sky_at",
    "subarray_offset",
    "subarray_reference_v2v3",
    "v23tosky",
    "wcsinfo_fits_keywords",
]

Attitude = tuple[
    float, float, float, float, float
]  # (v2 arcsec, v3 arcsec, roll deg, ra deg, dec deg)

_DIST_DEGREE = 3
_INV_DEGREE = 5


def reference_pixel(shape: tuple[int, int]) -> tuple[float, float]:
    """0-based ``(x, y)`` of the reference pixel of an array of ``shape`` (its centre)."""
    ny, nx = shape
    return (nx - 1) / 2.0, (ny - 1) / 2.0


def bounding_box(inst: Instrument, shape: tuple[int, int]) -> tuple[tuple[float, float], ...]:
    """``((x0, x1), (y0, y1))`` bounding box of the detector, as jwst's ``assign_wcs`` sets it.

    MIRI excludes its 4 reference columns on each side, NIRCam uses the full frame.
    """
    ny, nx = shape
    if inst.name == "MIRI":
        c = inst.ref_columns
        return ((c - 0.5, nx - c - 0.5), (-0.5, ny - 0.5))
    return ((-0.5, nx - 0.5), (-0.5, ny - 0.5))


def distortion_coefficients(inst: Instrument, det: Detector) -> dict[str, dict[str, float]]:
    """Deterministic 3rd-order distortion coefficients of a detector.

    Returns ``{"x": {"c1_0": ..}, "y": {...}}`` for :class:`~astropy.modeling.models.Polynomial2D`
    in pixel offsets from the reference pixel; output is distortion-corrected pixels. The distortion
    amounts to about ``inst.distortion_pixels`` at the corners of the full detector.
    """
    rng = np.random.default_rng(zlib.crc32(f"{inst.name}/{det.name}".encode()))
    h = 0.5 * max(inst.shape)
    d = inst.distortion_pixels
    coeffs: dict[str, dict[str, float]] = {}
    for axis in ("x", "y"):
        terms: dict[str, float] = {"c0_0": 0.0}
        lin = rng.normal(0.0, 1e-3, 2)
        terms["c1_0"] = (1.0 if axis == "x" else 0.0) + float(lin[0])
        terms["c0_1"] = (1.0 if axis == "y" else 0.0) + float(lin[1])
        names = [(i, j) for n in (2, 3) for i in range(n + 1) for j in range(n + 1) if i + j == n]
        a = rng.normal(0.0, 1.0, len(names))
        a *= 1.0 / np.sum(np.abs(a))
        for (i, j), aij in zip(names, a, strict=True):
            terms[f"c{i}_{j}"] = float(d * aij / h ** (i + j))
        coeffs[axis] = terms
    return coeffs


def _monomials(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            cols.append(x**i * y**j)
            names.append(f"c{i}_{j}")
    return np.stack(cols, axis=-1), names


def _fit_inverse(px: Polynomial2D, py: Polynomial2D, half: tuple[float, float]):
    """Fit polynomials mapping distortion-corrected offsets back to detector offsets."""
    hx, hy = half
    gx, gy = np.meshgrid(np.linspace(-hx, hx, 61), np.linspace(-hy, hy, 61))
    gx, gy = gx.ravel(), gy.ravel()
    ux, uy = px(gx, gy), py(gx, gy)
    norm = max(hx, hy)
    a, names = _monomials(ux / norm, uy / norm, _INV_DEGREE)
    out = []
    for target in (gx, gy):
        sol, *_ = np.linalg.lstsq(a, target, rcond=None)
        params = {}
        for name, c in zip(names, sol, strict=True):
            i, j = (int(k) for k in name[1:].split("_"))
            params[name] = float(c / norm ** (i + j))
        out.append(Polynomial2D(_INV_DEGREE, **params))
    return out


def _ideal_to_v2v3(det: Detector) -> AffineTransformation2D:
    a = np.deg2rad(det.v3yangle)
    p = det.vparity
    matrix = [[p * np.cos(a), np.sin(a)], [-p * np.sin(a), np.cos(a)]]
    return AffineTransformation2D(matrix=matrix, translation=[det.v2_ref, det.v3_ref])


@lru_cache(maxsize=64)
def _distortion_cached(inst_key: str, det_name: str, shape: tuple[int, int], coeff_key: str):
    from image3_dask.simulate.instruments import get_instrument

    inst = get_instrument(inst_key)
    det = inst.detectors[det_name]
    coeffs = json.loads(coeff_key)
    xref, yref = reference_pixel(shape)
    px = Polynomial2D(_DIST_DEGREE, **coeffs["x"])
    py = Polynomial2D(_DIST_DEGREE, **coeffs["y"])
    ny, nx = shape
    qx, qy = _fit_inverse(px, py, (0.55 * nx + 10, 0.55 * ny + 10))
    s = inst.pixel_scale
    ideal2v2v3 = _ideal_to_v2v3(det)
    fwd = (
        (Shift(-xref, name="xref") & Shift(-yref, name="yref"))
        | Mapping((0, 1, 0, 1))
        | (px & py)
        | (Scale(s, name="pscale_x") & Scale(s, name="pscale_y"))
        | ideal2v2v3
    )
    inv = (
        ideal2v2v3.inverse
        | (Scale(1.0 / s) & Scale(1.0 / s))
        | Mapping((0, 1, 0, 1))
        | (qx & qy)
        | (Shift(xref) & Shift(yref))
    )
    fwd.inverse = inv
    fwd.name = "distortion"
    return fwd


def distortion_model(
    inst: Instrument,
    det: Detector,
    shape: tuple[int, int],
    coeffs: dict | None = None,
):
    """The ``detector -> v2v3`` transform (arcsec) with its inverse and bounding box."""
    coeffs = coeffs or distortion_coefficients(inst, det)
    model = _distortion_cached(
        inst.key, det.name, tuple(int(v) for v in shape), json.dumps(coeffs)
    ).copy()
    bind_bounding_box(model, bounding_box(inst, shape), order="F")
    return model


def v23tosky(attitude: Attitude, wrap_v2_at: float = 180, wrap_lon_at: float = 360):
    """``v2v3 (arcsec) -> (ra, dec) (deg)``, as ``jwst.assign_wcs.pointing.v23tosky``."""
    v2, v3, roll, ra, dec = (float(a) for a in attitude)
    angles = np.array([v2 / 3600, -v3 / 3600, roll, dec, -ra])
    rot = RotationSequence3D(angles, axes_order="zyxyz")
    m = (
        (Scale(1 / 3600) & Scale(1 / 3600))
        | SphericalToCartesian(wrap_lon_at=wrap_v2_at)
        | rot
        | CartesianToSpherical(wrap_lon_at=wrap_lon_at)
    )
    m.name = "v23tosky"
    return m


def sky_at(attitude: Attitude, v2, v3) -> tuple[np.ndarray, np.ndarray]:
    """Sky position (deg) of V2/V3 points (arcsec) for a given attitude."""
    return v23tosky(attitude)(v2, v3)


def roll_at(attitude: Attitude, new_v2: float, new_v3: float) -> float:
    """Position angle of V3 (deg) at another V2/V3 point, as ``pointing.compute_roll_ref``."""
    v2_ref, v3_ref, roll_ref, ra_ref, dec_ref = attitude
    v2 = np.deg2rad(new_v2 / 3600)
    v3 = np.deg2rad(new_v3 / 3600)
    if np.isclose(v2_ref, 0, atol=1e-9) and np.isclose(v3_ref, 0, atol=1e-9):
        angles, axes = [roll_ref, dec_ref, ra_ref], "xyz"
    else:
        angles = [v2_ref / 3600, -v3_ref / 3600, roll_ref, dec_ref, -ra_ref]
        axes = "zyxyz"
    mats = [rotation_matrix(a, ax) for a, ax in zip(angles, axes, strict=True)]
    m = reduce(np.matmul, mats[::-1])
    x = -(m[2, 0] * np.cos(v2) + m[2, 1] * np.sin(v2)) * np.sin(v3) + m[2, 2] * np.cos(v3)
    y = (m[0, 0] * m[1, 2] - m[1, 0] * m[0, 2]) * np.cos(v2) + (
        m[0, 1] * m[1, 2] - m[1, 1] * m[0, 2]
    ) * np.sin(v2)
    return float(np.rad2deg(np.arctan2(y, x)) % 360.0)


def attitude_for_detector(attitude: Attitude, det: Detector) -> Attitude:
    """Re-express an attitude at a detector's reference point (its ``meta.wcsinfo`` values)."""
    return attitude_at(attitude, det.v2_ref, det.v3_ref)


def attitude_at(attitude: Attitude, v2: float, v3: float) -> Attitude:
    """Re-express an attitude at another V2/V3 point (arcsec), e.g. a subarray's centre."""
    ra, dec = sky_at(attitude, v2, v3)
    roll = roll_at(attitude, v2, v3)
    return (float(v2), float(v3), roll, float(ra) % 360.0, float(dec))


def subarray_offset(subarray) -> tuple[int, int] | None:
    """0-based ``(x, y)`` of a subarray's first pixel in the detector array, ``None`` if none.

    As jwst's ``assign_wcs`` (``util.subarray_transform``): no offset when both 1-based starts
    are 1.
    """
    if subarray is None or (subarray.xstart == 1 and subarray.ystart == 1):
        return None
    return subarray.xstart - 1, subarray.ystart - 1


def subarray_reference_v2v3(
    inst: Instrument, det: Detector, shape: tuple[int, int], subarray, coeffs: dict | None = None
) -> tuple[float, float]:
    """V2/V3 (arcsec) of the centre of a subarray of the ``shape`` detector array."""
    xr, yr = reference_pixel(subarray.shape)
    dist = distortion_model(inst, det, shape, coeffs)
    v2, v3 = dist(xr + subarray.xstart - 1, yr + subarray.ystart - 1, with_bounding_box=False)
    return float(v2), float(v3)


def perturb_attitude(
    attitude: Attitude, dra_arcsec: float, ddec_arcsec: float, droll_arcsec: float
) -> Attitude:
    """Move the reference point by ``(dra*cos(dec), ddec)`` on the sky and the roll by ``droll``."""
    v2, v3, roll, ra, dec = attitude
    ra2 = (ra + dra_arcsec / 3600.0 / np.cos(np.deg2rad(dec))) % 360.0
    return (v2, v3, (roll + droll_arcsec / 3600.0) % 360.0, ra2, dec + ddec_arcsec / 3600.0)


def make_wcs(
    inst: Instrument,
    det: Detector,
    shape: tuple[int, int],
    attitude: Attitude,
    coeffs: dict | None = None,
    subarray=None,
) -> gwcs_wcs.WCS:
    """Build the gwcs of one detector.

    Parameters
    ----------
    inst, det : Instrument, Detector
        The imager and the detector.
    shape : tuple of int
        Simulated array shape ``(ny, nx)``; its centre is the reference pixel.
    attitude : tuple
        ``(v2_ref, v3_ref, roll_ref, ra_ref, dec_ref)``; must be expressed at the detector's
        reference point (see :func:`attitude_for_detector`).
    coeffs : dict, optional
        Distortion coefficients (default :func:`distortion_coefficients`).
    subarray : image3_dask.simulate.quirks.Subarray, optional
        The file's subarray of the ``shape`` array. As jwst's ``assign_wcs`` builds it, a
        ``Shift(xstart - 1) & Shift(ystart - 1)`` comes before the detector distortion (unless
        both starts are 1) and the bounding box is the whole subarray,
        ``((-0.5, xsize - 0.5), (-0.5, ysize - 0.5))``; the array shape is the subarray's.
    """
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(
        name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec)
    )
    v2v3vacorr = cf.Frame2D(
        name="v2v3vacorr", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec)
    )
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    dist = distortion_model(inst, det, shape, coeffs)
    bbox = bounding_box(inst, shape)
    array_shape = tuple(shape)
    offset = subarray_offset(subarray)
    if subarray is not None and (offset is not None or subarray.shape != tuple(shape)):
        array_shape = subarray.shape
        bbox = ((-0.5, subarray.xsize - 0.5), (-0.5, subarray.ysize - 0.5))
        if offset is not None:
            dist = (Shift(offset[0]) & Shift(offset[1])) | dist
            dist.name = "distortion"
        bind_bounding_box(dist, bbox, order="F")
    pipeline = [
        (detector, dist),
        (v2v3, Identity(2)),
        (v2v3vacorr, v23tosky(attitude)),
        (world, None),
    ]
    w = gwcs_wcs.WCS(pipeline)
    w.bounding_box = bbox
    w.array_shape = array_shape
    return w


def footprint_s_region(w: gwcs_wcs.WCS) -> str:
    """``POLYGON ICRS`` string of the bounding-box corners."""
    (x0, x1), (y0, y1) = w.bounding_box.bounding_box(order="F")
    ra, dec = w(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]), with_bounding_box=False)
    coords = " ".join(f"{r % 360.0:.9f} {d:.9f}" for r, d in zip(ra, dec, strict=True))
    return f"POLYGON ICRS  {coords}"


def pixel_area_map(dist, shape: tuple[int, int]) -> np.ndarray:
    """True solid angle of every pixel (steradian) from the ``detector -> v2v3`` transform.

    Pixel corners are mapped to V2/V3 and each pixel's quadrilateral area is multiplied by
    ``cos(v3)`` (V2/V3 are spherical coordinates; the rotation to the sky preserves areas).
    """
    ny, nx = shape
    xc, yc = np.meshgrid(np.arange(nx + 1) - 0.5, np.arange(ny + 1) - 0.5)
    v2, v3 = dist(xc, yc, with_bounding_box=False)
    # shoelace formula on corners (0,0),(1,0),(1,1),(0,1)
    x00, y00 = v2[:-1, :-1], v3[:-1, :-1]
    x10, y10 = v2[:-1, 1:], v3[:-1, 1:]
    x11, y11 = v2[1:, 1:], v3[1:, 1:]
    x01, y01 = v2[1:, :-1], v3[1:, :-1]
    area = 0.5 * np.abs((x11 - x00) * (y01 - y10) - (x01 - x10) * (y11 - y00))
    vc = 0.25 * (y00 + y10 + y11 + y01)
    area = area * np.cos(np.deg2rad(vc / 3600.0))
    return area * (np.pi / 180.0 / 3600.0) ** 2


def wcsinfo_fits_keywords(w: gwcs_wcs.WCS, inst: Instrument, shape) -> dict[str, float | str]:
    """Approximate FITS TAN keywords (crpix, crval, cdelt, pc) at the reference pixel."""
    xr, yr = reference_pixel(shape)
    ra0, dec0 = w(xr, yr, with_bounding_box=False)
    ra, dec = w(np.array([xr + 1, xr]), np.array([yr, yr + 1]), with_bounding_box=False)
    c0 = coord.SkyCoord(ra0 * u.deg, dec0 * u.deg)
    off = c0.spherical_offsets_to(coord.SkyCoord(ra * u.deg, dec * u.deg))
    # rows: (lon*cos(lat), lat) offsets; columns: one pixel step along x, along y
    cd = np.array([off[0].deg, off[1].deg])
    cdelt = inst.pixel_scale / 3600.0
    pc = cd / cdelt
    return {
        "wcsaxes": 2,
        "ctype1": "RA---TAN",
        "ctype2": "DEC--TAN",
        "cunit1": "deg",
        "cunit2": "deg",
        "crpix1": xr + 1.0,
        "crpix2": yr + 1.0,
        "crval1": float(ra0) % 360.0,
        "crval2": float(dec0),
        "cdelt1": cdelt,
        "cdelt2": cdelt,
        "pc1_1": float(pc[0, 0]),
        "pc1_2": float(pc[0, 1]),
        "pc2_1": float(pc[1, 0]),
        "pc2_2": float(pc[1, 1]),
    }

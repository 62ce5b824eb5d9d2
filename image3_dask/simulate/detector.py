"""Detector effects of the simulator: pixel areas, reference pixels, bad pixels, cosmic rays,
subarray crops and image2's background record."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from image3_dask.simulate import wcs as simwcs
from image3_dask.simulate.instruments import Detector, Instrument, get_instrument
from image3_dask.simulate.quirks import Subarray

__all__ = [
    "bad_pixels",
    "bad_pixels_in",
    "cached_area_map",
    "cosmic_rays",
    "electron_scale",
    "image2_background_meta",
    "is_whole_array",
    "pixel_area",
    "reference_pixel_mask",
    "subarray_json",
]


@lru_cache(maxsize=16)
def cached_area_map(inst_key: str, det_name: str, shape: tuple[int, int], coeff_key: str):
    """Pixel area map of a detector crop (read-only, cached by instrument, detector, shape)."""
    inst = get_instrument(inst_key)
    det = inst.detectors[det_name]
    dist = simwcs.distortion_model(inst, det, shape, json.loads(coeff_key))
    area = simwcs.pixel_area_map(dist, shape)
    area.flags.writeable = False
    return area


def pixel_area(inst: Instrument, det: Detector, shape, coeffs) -> np.ndarray:
    """Pixel area map of ``det`` for distortion coefficients ``coeffs`` (:func:`cached_area_map`)."""
    return cached_area_map(inst.key, det.name, tuple(shape), json.dumps(coeffs))


def reference_pixel_mask(inst: Instrument, shape) -> np.ndarray:
    """True on the instrument's reference-pixel border."""
    ny, nx = shape
    mask = np.zeros(shape, bool)
    c, r = inst.ref_columns, inst.ref_rows
    if c:
        mask[:, :c] = True
        mask[:, nx - c :] = True
    if r:
        mask[:r, :] = True
        mask[ny - r :, :] = True
    return mask


def bad_pixels(rng, inst: Instrument, shape, fraction: float) -> dict[str, np.ndarray]:
    """Hot and dead pixels (``y``, ``x``, ``kind``, ``value``) outside the reference pixels."""
    ny, nx = shape
    valid = np.flatnonzero(~reference_pixel_mask(inst, shape).ravel())
    nbad = int(round(fraction * valid.size))
    idx = np.sort(rng.choice(valid, size=nbad, replace=False)) if nbad else np.zeros(0, int)
    hot = rng.uniform(0, 1, nbad) < 0.5
    value = np.where(
        hot,
        inst.sky_mjysr * rng.uniform(5.0, 100.0, nbad),
        -inst.sky_mjysr * rng.uniform(0.0, 2.0, nbad),
    )
    return {
        "y": idx // nx,
        "x": idx % nx,
        "kind": np.where(hot, "hot", "dead"),
        "value": value,
    }


def cosmic_rays(rng, shape, rate: float, sigma: float, allowed: np.ndarray):
    """Single-pixel hits and short tracks; returns pixel y, x and added values (MJy/sr)."""
    ny, nx = shape
    nev = rng.poisson(rate * ny * nx)
    img = np.zeros(shape)
    for _ in range(nev):
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        amp = sigma * 10 ** rng.uniform(np.log10(20.0), np.log10(500.0))
        if rng.uniform() < 0.5:
            ys, xs = np.array([int(y0)]), np.array([int(x0)])
            vals = np.array([amp])
        else:
            length = rng.uniform(2.0, 8.0)
            ang = rng.uniform(0, np.pi)
            t = np.arange(0.0, length + 0.25, 0.5)
            pts = np.unique(
                np.stack([(y0 + t * np.sin(ang)).astype(int), (x0 + t * np.cos(ang)).astype(int)]),
                axis=1,
            )
            ys, xs = pts
            vals = amp * rng.uniform(0.5, 1.0, ys.size)
        ok = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
        np.add.at(img, (ys[ok], xs[ok]), vals[ok])
    img[~allowed] = 0.0
    yy, xx = np.nonzero(img)
    return yy, xx, img[yy, xx]


def is_whole_array(sub: Subarray, shape) -> bool:
    """Whether a file covers the whole simulated array (no subarray geometry to apply)."""
    return sub.shape == tuple(shape) and sub.xstart == 1 and sub.ystart == 1


def subarray_json(spec):
    """A ``subarray=`` argument as JSON (for the truth file's parameters)."""
    if isinstance(spec, Subarray):
        return spec.to_json()
    if isinstance(spec, (str, dict)) or spec is None:
        return spec
    return [subarray_json(s) for s in spec]


def bad_pixels_in(bad: dict[str, np.ndarray], sub: Subarray) -> dict[str, np.ndarray]:
    """The detector's bad pixels that fall in a subarray, in the subarray's coordinates."""
    ys, xs = sub.slices
    keep = (bad["y"] >= ys.start) & (bad["y"] < ys.stop) & (bad["x"] >= xs.start)
    keep &= bad["x"] < xs.stop
    out = {k: v[keep] for k, v in bad.items()}
    out["y"] = out["y"] - ys.start
    out["x"] = out["x"] - xs.start
    return out


def image2_background_meta(mode: str | None, subtracted: float, sky: float) -> dict | None:
    """``meta.background`` written for an ``image2_background`` mode (None: left unset)."""
    if mode == "subtracted":
        return {"level": subtracted, "subtracted": True, "method": "local"}
    if mode == "recorded":
        return {"level": float(sky), "subtracted": False, "method": "local"}
    if mode == "undefined":
        return {"level": float(sky), "subtracted": None, "method": "local"}
    return None


def electron_scale(inst: Instrument, area_true: np.ndarray, area_nom: float) -> np.ndarray:
    """Surface brightness (MJy/sr) of one electron in each pixel."""
    return inst.photmjsr * area_nom / (area_true * inst.gain * inst.exposure_time)

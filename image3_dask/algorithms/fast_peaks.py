"""A vectorised, exact replacement for photutils' check of ring peak candidates.

``photutils.detection.find_peaks`` with ``min_separation`` (what ``IRAFStarFinder`` and
``DAOStarFinder`` call, so what jwst's tweakreg catalog runs) finds the local maxima within a
circle with two box maximum filters, then checks the pixels that are maxima of the inscribed
box but not of the circumscribed one against the circle itself. photutils 3.0 does that check
in a Python loop over every such pixel of the whole image, noise included (the threshold is
applied afterwards): about 50 000 pixels and 0.6 s on a 1024 x 1032 MIRI exposure, 40 % of
the tweakreg catalog.

:func:`verify_ring_candidates` makes the same comparisons for all candidates at once, with
numpy gathers: the same values are compared (maxima and equality, no arithmetic), so the
peaks are identical. :func:`fast_ring_verification` installs it in photutils' module while
the catalog code runs, when photutils has the function this was written against.
"""

from __future__ import annotations

import inspect

import numpy as np

from image3_dask.patches import ScopedPatch

__all__ = ["fast_ring_verification", "verify_ring_candidates"]

_PARAMS = ("data", "peak_mask", "needs_verify", "footprint_bool", "half", "footprint_size")


def verify_ring_candidates(
    data: np.ndarray,
    peak_mask: np.ndarray,
    needs_verify: np.ndarray,
    footprint_bool: np.ndarray,
    half: int,
    footprint_size: int,
) -> None:
    """Mark in ``peak_mask`` the candidates that are maxima within the circular footprint.

    The semantics of ``photutils.detection.peakfinder._verify_ring_candidates``: a candidate
    ``(y, x)`` is a peak when ``data[y, x]`` equals the maximum of ``data`` over the footprint
    centred on it (index ``half`` at the pixel), the footprint clipped to the image; when
    the footprint's box reaches beyond the image, 0 takes part in the maximum (photutils'
    ``cval=0.0``).

    Parameters
    ----------
    data : numpy.ndarray
        The 2D image (NaN-free, as ``find_peaks`` makes it).
    peak_mask : numpy.ndarray
        Boolean array updated in place: `True` is set at the confirmed candidates.
    needs_verify : numpy.ndarray
        Boolean array of the candidates to check.
    footprint_bool : numpy.ndarray
        The square boolean footprint (the circle), ``footprint_size`` on a side.
    half : int
        Index of the centre of the footprint along each axis.
    footprint_size : int
        Side of the footprint.
    """
    ys, xs = np.nonzero(needs_verify)
    if ys.size == 0:
        return
    ny, nx = data.shape
    work = data if data.dtype.kind == "f" else data.astype(np.float64)
    # data framed by -inf, so footprint pixels off the image take no part in the maximum
    after = footprint_size - 1 - half
    padded = np.full((ny + footprint_size - 1, nx + footprint_size - 1), -np.inf, work.dtype)
    padded[half : half + ny, half : half + nx] = work
    local = np.full(ys.size, -np.inf, dtype=work.dtype)
    for dy, dx in zip(*np.nonzero(footprint_bool), strict=True):
        np.maximum(local, padded[ys + dy, xs + dx], out=local)
    beyond = (ys < half) | (ys + after >= ny) | (xs < half) | (xs + after >= nx)
    local[beyond] = np.where(local[beyond] < 0.0, 0.0, local[beyond])
    hit = work[ys, xs] == local
    peak_mask[ys[hit], xs[hit]] = True


def _compatible(original) -> bool:
    try:
        return tuple(inspect.signature(original).parameters) == _PARAMS
    except (TypeError, ValueError):
        return False


_PATCH = ScopedPatch(
    "photutils.detection.peakfinder",
    "_verify_ring_candidates",
    make=lambda original: verify_ring_candidates,
    compatible=_compatible,
)


def fast_ring_verification() -> ScopedPatch:
    """Context manager: photutils' ring-candidate check is :func:`verify_ring_candidates` within.

    Re-entrant and thread-safe (see :class:`image3_dask.patches.ScopedPatch`); yields whether
    the function was replaced (not when photutils lacks the helper with the expected
    signature).
    """
    return _PATCH

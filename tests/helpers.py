"""Helpers shared by the tests: untiled reference versions of the tiled algorithms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from image3_dask.algorithms.median import median_tile, weight_stats, weight_threshold


def median_full_frame(singles: np.ndarray, weights: np.ndarray, maskpt: float) -> np.ndarray:
    """Median of whole single images: `median_tile` over one tile covering the whole grid.

    Parameters
    ----------
    singles : numpy.ndarray
        ``(ngroups, ny, nx)`` single-drizzled science images over the full grid.
    weights : numpy.ndarray
        ``(ngroups, ny, nx)`` matching drizzle weights.
    maskpt : float
        Step parameter ``maskpt``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32 median.
    """
    thresholds = [weight_threshold(weight_stats(w), maskpt) for w in weights]
    return median_tile(singles, weights, thresholds)


def median_of_exposures(
    sci: np.ndarray, weights: np.ndarray, maskpt: float, thresholds: Sequence[float] | None = None
) -> np.ndarray:
    """Median of aligned exposures (``resample_data=False``), as jwst's
    ``median_without_resampling`` computes it.

    Parameters
    ----------
    sci : numpy.ndarray
        ``(nexp, ny, nx)`` science arrays (a tile of them when ``thresholds`` is given).
    weights : numpy.ndarray
        ``(nexp, ny, nx)`` per-exposure weights (``build_driz_weight`` of each exposure).
    maskpt : float
        Step parameter ``maskpt``; used only when ``thresholds`` is `None`.
    thresholds : sequence of float, optional
        Per-exposure thresholds over the whole exposures; required when ``sci`` is a tile.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32 median.
    """
    if thresholds is None:
        thresholds = [weight_threshold(weight_stats(w), maskpt) for w in weights]
    return median_tile(sci, weights, thresholds)

"""Median of single-drizzled images, computable tile by tile.

The official step (``jwst.outlier_detection.utils.median_with_resampling``) does,
for every exposure group ``g``::

    thr[g] = stcal compute_weight_threshold(wht[g], maskpt)   # whole single image
    sci[g][wht[g] < thr[g]] = NaN
    median = nanmedian over groups

The median itself is local (one output pixel at a time), so it tiles exactly.
The weight threshold is *global*: it is ``maskpt`` times the mean of the
3-sigma-clipped (median-centred, 5 iterations) non-zero finite weights of the
whole single image. In a tiled design it is therefore split in two phases:

1. per tile and group, :func:`weight_stats` summarises the tile's weights as the
   multiset of non-zero finite values (sorted unique values and their counts);
   :func:`combine_weight_stats` merges such summaries from disjoint tiles;
2. :func:`weight_threshold` runs stcal's own ``compute_weight_threshold`` on the
   merged multiset, and :func:`median_tile` applies the thresholds.

The multiset is an exact summary: the clipped median, clipping bounds and
final mean only depend on the values, not on where they are. The result is
independent of the tiling bit for bit (the merged multiset is expanded in
sorted order). Compared with stcal run on the full single image in row-major
order, the only possible difference comes from float32/float64 summation
order inside ``np.std``/``np.mean`` (a few ulp, relative ~1e-7 at most); a
pixel could change its mask state only if its weight lies within that distance
of the threshold. In the tests the thresholds agree exactly.

The summary's size is the number of distinct weight values in the group's
footprint (at most the number of covered grid pixels, i.e. about one exposure,
independent of the mosaic size). ``mantissa_bits`` optionally rounds the
weights before counting, bounding the size at the cost of a relative error of
at most ``2**-(mantissa_bits + 1)`` per weight (see :func:`weight_stats`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from stcal.outlier_detection.utils import compute_weight_threshold

__all__ = [
    "WeightStats",
    "combine_weight_stats",
    "median_tile",
    "nanmedian_stack",
    "weight_stats",
    "weight_threshold",
]


@dataclass(frozen=True)
class WeightStats:
    """Multiset of the non-zero finite weights of (part of) one single image.

    Attributes
    ----------
    values : numpy.ndarray
        Sorted distinct weight values (float32).
    counts : numpy.ndarray
        Number of occurrences of each value (int64), same length as ``values``.
    """

    values: np.ndarray
    counts: np.ndarray

    @property
    def npix(self) -> int:
        """Number of pixels summarised."""
        return int(self.counts.sum())

    @classmethod
    def empty(cls) -> WeightStats:
        """Return the summary of an image without valid weights."""
        return cls(np.empty(0, np.float32), np.empty(0, np.int64))


def _round_mantissa(values: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """Round positive/negative float32 values to ``mantissa_bits`` explicit mantissa bits."""
    if not 0 <= mantissa_bits < 23:
        raise ValueError("mantissa_bits must be in [0, 22]")
    shift = np.uint32(23 - mantissa_bits)
    bits = values.astype(np.float32).view(np.uint32)
    half = np.uint32(1) << (shift - np.uint32(1))
    rounded = ((bits + half) >> shift) << shift
    return rounded.view(np.float32)


def weight_stats(weights: np.ndarray, mantissa_bits: int | None = None) -> WeightStats:
    """Summarise the weights of one tile of one single image.

    Parameters
    ----------
    weights : numpy.ndarray
        Drizzled weight array of one group over one tile. Tiles summarised for
        the same group must be disjoint (no halo), so every grid pixel is counted
        once.
    mantissa_bits : int or None, optional
        If None (default) the summary is exact. Otherwise weights are rounded to
        this many float32 mantissa bits (0-22) before counting, which bounds the
        number of distinct values per binade to ``2**mantissa_bits``; each weight
        then carries a relative error of at most ``2**-(mantissa_bits + 1)``.

    Returns
    -------
    WeightStats
        Sorted distinct non-zero finite values and their counts.
    """
    w = np.asarray(weights)
    w = w[np.isfinite(w) & (w != 0)].astype(np.float32, copy=False)
    if mantissa_bits is not None:
        w = _round_mantissa(w, mantissa_bits)
    values, counts = np.unique(w, return_counts=True)
    return WeightStats(values.astype(np.float32, copy=False), counts.astype(np.int64))


def combine_weight_stats(stats: Iterable[WeightStats]) -> WeightStats:
    """Merge summaries of disjoint tiles of the same single image.

    Parameters
    ----------
    stats : iterable of WeightStats
        Summaries from :func:`weight_stats` (or earlier merges).

    Returns
    -------
    WeightStats
        Summary of the union. Merging is associative and commutative, so it can
        be done as a tree reduction.
    """
    stats = list(stats)
    if not stats:
        return WeightStats.empty()
    values = np.concatenate([s.values for s in stats])
    counts = np.concatenate([s.counts for s in stats])
    if values.size == 0:
        return WeightStats.empty()
    uvalues, inverse = np.unique(values, return_inverse=True)
    ucounts = np.zeros(uvalues.size, np.int64)
    np.add.at(ucounts, inverse.ravel(), counts)
    return WeightStats(uvalues.astype(np.float32, copy=False), ucounts)


def weight_threshold(stats: WeightStats, maskpt: float) -> float:
    """Weight threshold of one single image from its merged summary.

    Equals ``stcal.outlier_detection.utils.compute_weight_threshold(wht, maskpt)``
    on the whole single image (up to summation order, see module notes); stcal's
    function is called on the expanded, sorted multiset.

    Parameters
    ----------
    stats : WeightStats
        Summary of the whole single image (all tiles merged).
    maskpt : float
        Fraction of the clipped mean weight below which pixels are masked
        (step parameter ``maskpt``, default 0.7).

    Returns
    -------
    float
        The threshold; NaN if the image has no non-zero weight (as stcal, in
        which case nothing is masked).
    """
    expanded = np.repeat(stats.values, stats.counts)
    return float(compute_weight_threshold(expanded, maskpt))


def nanmedian_stack(cube: np.ndarray, block_rows: int = 64) -> np.ndarray:
    """NaN-ignoring median along the first axis of a stack, equal to ``np.nanmedian``.

    ``np.nanmedian`` (and stcal's row-by-row ``nanmedian3D`` that the official step uses)
    goes through masked arrays when the stack is shorter than 600 layers, which costs about
    a microsecond per pixel. Here each block of rows is sorted along the stack (NaN sorts
    last), the valid values are counted, and the middle one (odd count) or the half-sum of
    the two middle ones (even count, summed in the stack's dtype as numpy does) is taken:
    the same values, bit for bit, several times faster.

    Parameters
    ----------
    cube : numpy.ndarray
        ``(nlayers, ny, nx)`` stack; NaN marks missing values (infinities are values).
    block_rows : int, optional
        Rows sorted at a time: bounds the temporary copy to ``nlayers * block_rows * nx``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` median, in the stack's dtype; NaN where every layer is NaN.
    """
    if cube.ndim != 3:
        raise ValueError(f"need a (nlayers, ny, nx) stack, got shape {cube.shape}")
    k, ny, nx = cube.shape
    out = np.full((ny, nx), np.nan, dtype=cube.dtype)
    if k == 0:
        return out
    step = max(int(block_rows), 1)
    for y0 in range(0, ny, step):
        s = np.sort(np.moveaxis(cube[:, y0 : y0 + step, :], 0, -1), axis=-1)
        n = k - np.count_nonzero(np.isnan(s), axis=-1)
        hi = np.take_along_axis(s, (n // 2)[..., None], axis=-1)[..., 0]
        lo = np.take_along_axis(s, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
        with np.errstate(invalid="ignore", over="ignore"):
            med = np.where(n % 2 == 1, hi, (lo + hi) / 2)
        med[n == 0] = np.nan
        out[y0 : y0 + step] = med
    return out


def median_tile(
    singles: np.ndarray, weights: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> np.ndarray:
    """NaN-aware median across groups of one tile, with weight-threshold masking.

    Groups that do not overlap the tile may be left out: they would only add
    NaN (drizzle ``fillval=NaN``, weight 0) which the median ignores.

    Parameters
    ----------
    singles : numpy.ndarray
        ``(ngroups, ny, nx)`` single-drizzled science tiles (NaN where no data).
    weights : numpy.ndarray
        ``(ngroups, ny, nx)`` matching drizzle weights.
    thresholds : sequence of float
        Per-group thresholds computed over each group's *whole* single image
        (:func:`weight_threshold` of the merged :func:`weight_stats`).

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32 median; NaN where no group has a valid pixel.
    """
    singles = np.asarray(singles)
    weights = np.asarray(weights)
    thr = np.asarray(thresholds, dtype=np.float64)
    if singles.ndim != 3 or singles.shape != weights.shape:
        raise ValueError("singles and weights must both have shape (ngroups, ny, nx)")
    if thr.shape != (singles.shape[0],):
        raise ValueError("need one threshold per group")
    masked = singles.astype(np.float32, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        masked[weights < thr[:, None, None]] = np.nan
    return nanmedian_stack(masked)

"""Flag outliers in one exposure by comparison with the blotted median.

Reproduces jwst 3.0 ``outlier_detection`` imaging mode:

* ``resample_data=True`` (default): ``flag_resampled_model_crs`` ->
  ``stcal...flag_resampled_crs(sci, err, blot, snr1, snr2, scale1, scale2, backg)``
  (``|sci - blot - backg| > scale * |d blot| + snr * err`` twice, the first mask
  grown by a 3x3 box);
* ``resample_data=False``: ``flag_model_crs`` ->
  ``stcal...flag_crs(sci, err, median, snr1)`` (median of aligned exposures, no
  derivative term).

Then ``dq |= DO_NOT_USE | OUTLIER`` on flagged pixels and
``jwst.lib.pipe_utils.match_nans_and_flags`` (see :func:`match_nans_and_flags`).
The step parameters ``kernel_size`` and ``threshold_percent`` are used by the
IFU mode only, not by imaging.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from stcal.outlier_detection.utils import flag_crs, flag_resampled_crs

from image3_dask.io.dq_flags import pixel_flag

__all__ = [
    "DO_NOT_USE",
    "OUTLIER",
    "flag_outliers",
    "match_nans_and_flags",
    "parse_pair",
]

DO_NOT_USE = np.uint32(pixel_flag("DO_NOT_USE"))
"""JWST ``DO_NOT_USE`` DQ bit."""
OUTLIER = np.uint32(pixel_flag("OUTLIER"))
"""JWST ``OUTLIER`` DQ bit."""


def parse_pair(value: str | Sequence[float]) -> tuple[float, float]:
    """Parse a step parameter such as ``snr="5.0 4.0"`` into two floats.

    Parameters
    ----------
    value : str or sequence of float
        ``"a b"`` as in the step spec, or a pair of numbers.

    Returns
    -------
    tuple of float
        ``(a, b)``.
    """
    parts = value.split() if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise ValueError(f"expected two values, got {value!r}")
    return float(parts[0]), float(parts[1])


def flag_outliers(
    sci: np.ndarray,
    err: np.ndarray,
    dq: np.ndarray,
    blot: np.ndarray,
    *,
    snr: str | Sequence[float] = "5.0 4.0",
    scale: str | Sequence[float] = "1.2 0.7",
    backg: float = 0.0,
    resample_data: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Flag outliers of one exposure as the official imaging mode does.

    Parameters
    ----------
    sci : numpy.ndarray
        Exposure science array (``input_model.data``).
    err : numpy.ndarray
        Exposure error array (``input_model.err``); NaN counts as 0.
    dq : numpy.ndarray
        Exposure DQ array; not modified.
    blot : numpy.ndarray
        Median blotted onto the exposure (:func:`~image3_dask.algorithms.blot.blot_median`)
        for ``resample_data=True``; the median of the aligned exposures for
        ``resample_data=False``.
    snr : str or pair of float, optional
        ``"snr1 snr2"`` (default ``"5.0 4.0"``). Only ``snr1`` is used when
        ``resample_data=False``.
    scale : str or pair of float, optional
        ``"scale1 scale2"`` multipliers of the blot's absolute derivative
        (default ``"1.2 0.7"``); unused when ``resample_data=False``.
    backg : float, optional
        Background added to the blot (default 0). The official step replaces it
        by ``meta.background.level`` when ``meta.background.subtracted`` is
        False and the level is set; callers must do the same.
    resample_data : bool, optional
        Which official path to follow (default True).

    Returns
    -------
    mask : numpy.ndarray
        Boolean outlier mask (True = newly flagged outlier).
    dq : numpy.ndarray
        Updated DQ (uint32 copy): ``DO_NOT_USE | OUTLIER`` on outliers, and
        ``DO_NOT_USE`` wherever ``sci`` or ``err`` is NaN (``match_nans_and_flags``;
        use :func:`match_nans_and_flags` to also NaN the science/variance arrays).
    """
    snr1, snr2 = parse_pair(snr)
    scale1, scale2 = parse_pair(scale)
    if resample_data:
        mask = flag_resampled_crs(sci, err, blot, snr1, snr2, scale1, scale2, backg)
    else:
        mask = flag_crs(sci, err, blot, snr1)
    mask = np.asarray(mask, dtype=bool)
    new_dq = np.asarray(dq).astype(np.uint32, copy=True)
    new_dq |= mask.astype(np.uint32) * (DO_NOT_USE | OUTLIER)
    invalid = np.isnan(sci) | np.isnan(err)
    new_dq[invalid] |= DO_NOT_USE
    return mask, new_dq


def match_nans_and_flags(
    dq: np.ndarray, *arrays: np.ndarray | None
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Make NaNs and ``DO_NOT_USE`` consistent, like ``jwst.lib.pipe_utils.match_nans_and_flags``.

    Parameters
    ----------
    dq : numpy.ndarray
        DQ array.
    *arrays : numpy.ndarray or None
        ``data, err, var_rnoise, var_poisson, var_flat`` (any subset, None
        entries skipped). Arrays of a different shape are ignored, as jwst does.

    Returns
    -------
    dq : numpy.ndarray
        Copy of ``dq`` with ``DO_NOT_USE`` wherever any array is NaN.
    arrays : list of numpy.ndarray or None
        Float copies with NaN wherever ``dq`` has ``DO_NOT_USE`` or any array is NaN.
    """
    dq = np.asarray(dq).astype(np.uint32, copy=True)
    invalid = (dq & DO_NOT_USE).astype(bool)
    for a in arrays:
        if a is not None and np.shape(a) == dq.shape:
            invalid |= np.isnan(a)
    dq[invalid] |= DO_NOT_USE
    out: list[np.ndarray | None] = []
    for a in arrays:
        if a is None or np.shape(a) != dq.shape:
            out.append(a)
            continue
        b = np.array(a, copy=True)
        b[invalid] = np.nan
        out.append(b)
    return dq, out

"""Sky statistics of the JWST ``skymatch`` step on masked arrays.

The statistic is the official ``stcal.skymatch.SkyStats`` (``stsci.imagestats``:
iterative sigma clipping, then mean, median, mode or midpt with bins of ``binwidth``
sigma), applied to the "good" pixels selected with the official ``dqbits`` semantics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from image3_dask.io.dq_flags import jwst_pixel_flags

__all__ = ["SKYSTATS", "good_pixel_mask", "sky_statistic"]

SKYSTATS = ("mean", "median", "mode", "midpt")
"""Supported ``skystat`` values."""


def good_pixel_mask(
    data: np.ndarray,
    dq: np.ndarray | None = None,
    dqbits: str | int | None = "~DO_NOT_USE+NON_SCIENCE",
    flag_name_map: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Pixels usable for sky statistics, as the official ``skymatch`` step selects them.

    Parameters
    ----------
    data : numpy.ndarray
        Science array; non-finite pixels are never used.
    dq : numpy.ndarray or None, optional
        Data-quality array. Ignored when `None` or when ``dqbits`` is `None`.
    dqbits : str, int or None, optional
        Bit flags (names or values, ``~`` to invert) considered "good", with
        ``astropy.nddata.bitmask`` semantics; the official default
        ``'~DO_NOT_USE+NON_SCIENCE'`` rejects pixels with either flag set.
    flag_name_map : mapping, optional
        Flag mnemonic -> bit value; default the JWST pixel flags
        (:func:`image3_dask.io.dq_flags.jwst_pixel_flags`).

    Returns
    -------
    numpy.ndarray
        Boolean array, `True` for good pixels.
    """
    from stcal.resample.utils import build_mask

    finite = np.isfinite(data)
    if dq is None or dqbits is None:
        return finite
    if flag_name_map is None:
        flag_name_map = jwst_pixel_flags()
    return build_mask(dq, dqbits, flag_name_map=flag_name_map).astype(bool) & finite


def sky_statistic(
    values: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    skystat: str = "mode",
    lower: float | None = None,
    upper: float | None = None,
    nclip: int = 5,
    lsigma: float = 4.0,
    usigma: float = 4.0,
    binwidth: float = 0.1,
) -> tuple[float | None, int]:
    """Official sky statistic of (the good pixels of) an array.

    Parameters
    ----------
    values : numpy.ndarray
        Pixel values (any shape).
    mask : numpy.ndarray or None, optional
        Boolean mask of good pixels (`True` = use); `None` uses all values.
    skystat : {'mode', 'median', 'mean', 'midpt'}, optional
        Statistic.
    lower, upper : float or None, optional
        Limits of usable pixel values.
    nclip : int, optional
        Number of sigma-clipping iterations.
    lsigma, usigma : float, optional
        Lower/upper clipping limits in sigma.
    binwidth : float, optional
        Histogram bin width, in sigma, for ``'mode'`` and ``'midpt'``.

    Returns
    -------
    sky : float or None
        The statistic, or `None` when it cannot be computed (no valid pixels, non-finite).
    npix : int
        Number of pixels used (after clipping); 0 when ``sky`` is `None`.

    Raises
    ------
    ValueError
        If ``skystat`` is not supported.
    """
    if skystat not in SKYSTATS:
        raise ValueError(f"Unsupported skystat {skystat!r}; use one of {SKYSTATS}")
    from stcal.skymatch.skystatistics import SkyStats

    data = np.asarray(values)
    if mask is not None:
        data = data[np.asarray(mask, dtype=bool)]
    else:
        data = data.ravel()
    if data.size < 1:
        return None, 0
    stats = SkyStats(
        skystat=skystat,
        lower=lower,
        upper=upper,
        nclip=nclip,
        lsig=lsigma,
        usig=usigma,
        binwidth=binwidth,
    )
    try:
        sky, npix = stats.calc_sky(data)
    except ValueError:
        return None, 0
    if sky is None or not np.isfinite(sky):
        return None, 0
    return float(sky), int(npix)

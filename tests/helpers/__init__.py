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


# --------------------------------------------------------------------------- catalog parity
#: Columns that must be equal, not just close (integers, booleans, pixel counts).
CATALOG_EXACT = ("label", "nn_label", "is_extended", "isophotal_area")


def catalog_tolerance(name: str) -> tuple[float, float]:
    """``(rtol, atol)`` for one source-catalog column: ``|a - b| <= atol + rtol |b|``.

    For catalogs that are not bit-identical: jwst's catalog of an i2d whose background mesh
    we compute ourselves (``bkg_boxsize`` smaller than the mosaic: our mesh interpolation
    differs from photutils' Background2D by ~1e-7 of the background), or of jwst's own i2d
    (whole-pipeline parity: pixels differ by ~1e-4 of the ERR). Measured there: centroids and
    sigmas within 4e-6 px, fluxes, errors and CI within 2e-6 relative, magnitudes within 2e-6,
    shape parameters within 1e-5, orientation within 1e-3 degree (ill-conditioned for nearly
    round sources). The tolerances leave a margin of 5-10 above that.
    """
    if name in ("xcentroid", "ycentroid", "nn_dist", "semimajor_sigma", "semiminor_sigma"):
        return 0.0, 2e-5  # pixels
    if name.endswith(("mag", "mag_err")):
        return 0.0, 2e-5  # magnitudes
    if name in ("orientation", "sky_orientation"):
        return 0.0, 1e-2  # degrees
    if name in ("sharpness", "roundness", "ellipticity"):
        return 0.0, 5e-5  # dimensionless, of order 0.1-1
    return 2e-5, 0.0  # fluxes, flux errors, concentration indices


def compare_catalogs(ours, ref, *, exact: bool = False, max_sep_px: float = 1e-4) -> dict:
    """Every column of jwst's source catalog ``ref`` against ours, source by source.

    Sources are paired by centroid (nearest within ``max_sep_px``); every jwst source must be
    paired and both catalogs must be the same length, with the same column names, units, dtypes
    and descriptions, the same NaN pattern in every column, the same labels, neighbours,
    ``is_extended`` and isophotal areas, and the same metadata (aperture radii and corrections,
    AB-Vega offset, Kron parameters). ``exact``: every value bit-identical; otherwise within
    :func:`catalog_tolerance`, sky coordinates (``sky_centroid``, ``sky_bbox_*``) within 1e-5
    arcsec. Returns ``{column: max |difference|}`` (arcsec for sky coordinates).
    """
    import astropy.units as u
    from scipy.spatial import cKDTree

    assert ours.colnames == ref.colnames
    assert len(ours) == len(ref) > 0, (len(ours), len(ref))
    dist, idx = cKDTree(np.transpose([ours["xcentroid"], ours["ycentroid"]])).query(
        np.transpose([ref["xcentroid"], ref["ycentroid"]])
    )
    assert dist.max() < max_sep_px, f"unmatched jwst source: {dist.max():.3g} px"
    assert len(set(idx)) == len(ref)
    mine = ours[idx]
    worst: dict[str, float] = {}
    for name in ref.colnames:
        a, b = mine[name], ref[name]
        assert getattr(a, "unit", None) == getattr(b, "unit", None), name
        assert a.info.description == b.info.description, name
        if name.startswith("sky_") and name != "sky_orientation":
            assert np.array_equal(np.isnan(a.ra), np.isnan(b.ra)), name
            sep = a.separation(b).to_value(u.arcsec)
            worst[name] = float(np.nanmax(sep, initial=0.0))
            assert worst[name] <= (0.0 if exact else 1e-5), (name, worst[name])
            continue
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        av = np.asarray(getattr(a, "value", a), dtype=float)
        bv = np.asarray(getattr(b, "value", b), dtype=float)
        assert np.array_equal(np.isnan(av), np.isnan(bv)), f"{name}: NaN where the other is not"
        if name in CATALOG_EXACT:
            assert np.array_equal(av, bv), name
            worst[name] = 0.0
            continue
        rtol, atol = (0.0, 0.0) if exact else catalog_tolerance(name)
        diff = np.abs(av - bv)
        worst[name] = float(np.nanmax(diff, initial=0.0))
        bad = ~(diff <= atol + rtol * np.abs(bv)) & ~np.isnan(bv)
        assert not bad.any(), (
            f"{name}: {bad.sum()} of {len(bv)} sources beyond rtol={rtol} atol={atol}, "
            f"max |diff| {np.nanmax(diff[bad]):.3g} at values {bv[bad][:3]}"
        )
    for key in ("aperture_params", "abvega_offset", "kron_params", "local_bkg_width",
                "aperture_mask_method"):
        a, b = ours.meta[key], ref.meta[key]
        if isinstance(b, dict):
            assert a.keys() == b.keys(), key
            for k in b:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{key}[{k}]")
        else:
            assert np.all(np.asarray(a) == np.asarray(b)), key
    return worst


def run_context(client, asn_path, out, steps: dict | None = None):
    """A run's context for step tests: the association's members, ``steps`` over the defaults.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    asn_path : path-like
        The association.
    out : pathlib.Path
        Output folder (the work folder is ``out / "work"``).
    steps : dict, optional
        ``{step: {parameter: value}}`` over the defaults.

    Returns
    -------
    image3_dask.pipeline.context.RunContext
        Without progress bars.
    """
    from image3_dask.io.asn import resolve_inputs
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.context import RunContext

    config = PipelineConfig()
    if steps:
        config.update(steps)
    return RunContext(
        client=client,
        config=config,
        asn=resolve_inputs(asn_path),
        output_dir=out,
        work_dir=out / "work",
        progress=False,
    )

"""Source catalogs for image alignment (the array-level core of JWST ``tweakreg``).

The functions here reproduce what :func:`jwst.tweakreg.tweakreg_catalog.make_tweakreg_catalog`
and ``TweakRegStep._find_sources`` compute for one exposure, but take plain numpy arrays
instead of a datamodel: a 2D background (``Background2D`` with sigma-clipped median
meshes), a per-pixel threshold ``snr_threshold * background_rms`` and one of three
``photutils`` finders (``'iraf'``, ``'dao'`` or ``'segmentation'``).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence

import numpy as np
from astropy.convolution import Gaussian2DKernel, convolve
from astropy.stats import SigmaClip, gaussian_fwhm_to_sigma
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.background import Background2D, MedianBackground
from photutils.detection import DAOStarFinder, IRAFStarFinder
from photutils.segmentation import SourceCatalog, SourceFinder
from photutils.utils import NoDetectionsWarning

from image3_dask.algorithms.catalog.background import use_separable_zoom
from image3_dask.algorithms.fast_peaks import fast_ring_verification

try:  # photutils >= 2.3 / 3.x
    from photutils import use_future_column_names
except ImportError:  # pragma: no cover - older photutils
    from contextlib import nullcontext as use_future_column_names

__all__ = [
    "DO_NOT_USE",
    "NON_SCIENCE",
    "coverage_mask_from_dq",
    "filter_catalog_by_bounding_box",
    "finder_kind",
    "make_tweakreg_catalog",
]

log = logging.getLogger(__name__)

DO_NOT_USE = 1
"""JWST DQ bit value of ``DO_NOT_USE``."""
NON_SCIENCE = 512
"""JWST DQ bit value of ``NON_SCIENCE``."""

_CATALOG_COLUMNS = ("id", "x", "y", "flux")


def coverage_mask_from_dq(dq: np.ndarray) -> np.ndarray:
    """Return the mask the official step uses for source finding.

    Parameters
    ----------
    dq : numpy.ndarray
        Integer data-quality array of the exposure.

    Returns
    -------
    numpy.ndarray
        Boolean array, `True` where ``DO_NOT_USE`` or ``NON_SCIENCE`` is set (pixels excluded
        from background estimation and source finding).
    """
    return (np.asarray(dq).astype(np.uint32) & np.uint32(DO_NOT_USE + NON_SCIENCE)).astype(bool)


def _background(
    data: np.ndarray, box_size: int | Sequence[int], coverage_mask: np.ndarray | None
) -> Background2D:
    """Compute the 2D background exactly as ``jwst.tweakreg.tweakreg_catalog.JWSTBackground``.

    The mesh is expanded to the image by :class:`SeparableZoomInterpolator` (photutils' zoom
    to rounding, 30 times faster).
    """
    box_size = np.asarray(box_size).astype(int)
    kwargs = {
        "filter_size": (3, 3),
        "coverage_mask": coverage_mask,
        "sigma_clip": SigmaClip(sigma=3.0),
        "bkg_estimator": MedianBackground(),
    }
    with warnings.catch_warnings():
        warnings.filterwarnings(action="ignore", category=AstropyUserWarning)
        try:
            bkg = Background2D(data, box_size, **kwargs)
        except ValueError:
            log.info(
                "Background could not be estimated in meshes. Using the entire unmasked "
                "array for background estimation: bkg_boxsize=%s.",
                data.shape,
            )
            bkg = Background2D(data, data.shape, exclude_percentile=100.0, **kwargs)
    use_separable_zoom(bkg)
    return bkg


def finder_kind(starfinder: str) -> str:
    """``'dao'``, ``'iraf'`` or ``'segmentation'``: the finder a ``starfinder`` value names.

    Raises
    ------
    ValueError
        If ``starfinder`` is not a known finder.
    """
    name = str(starfinder).lower()
    for kind, names in (
        ("dao", ("dao", "daostarfinder")),
        ("iraf", ("iraf", "irafstarfinder")),
        ("segmentation", ("segmentation", "sourcefinder")),
    ):
        if name in names:
            return kind
    raise ValueError(f"Unknown starfinder type: {starfinder}")


def _select_kwargs(func: type, kwargs: dict) -> dict:
    """Return the items of ``kwargs`` that are parameters of ``func``."""
    names = set(inspect.signature(func).parameters)
    return {k: v for k, v in kwargs.items() if k in names}


def _empty_catalog() -> Table:
    return Table(names=_CATALOG_COLUMNS, dtype=(int, float, float, float))


def filter_catalog_by_bounding_box(
    catalog: Table, bounding_box: tuple[tuple[float, float], tuple[float, float]] | None
) -> Table:
    """Keep only sources strictly inside a WCS bounding box (as the official step does).

    Parameters
    ----------
    catalog : astropy.table.Table
        Catalog with ``x`` and ``y`` columns (0-based pixels).
    bounding_box : tuple or None
        ``((xmin, xmax), (ymin, ymax))``; `None` keeps everything.

    Returns
    -------
    astropy.table.Table
        The filtered catalog (a new table).
    """
    if bounding_box is None or len(catalog) == 0:
        return catalog
    (xmin, xmax), (ymin, ymax) = bounding_box
    x = np.asarray(catalog["x"], dtype=float)
    y = np.asarray(catalog["y"], dtype=float)
    keep = (x > xmin) & (x < xmax) & (y > ymin) & (y < ymax)
    return catalog[keep]


def make_tweakreg_catalog(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    err: np.ndarray | None = None,
    starfinder: str = "iraf",
    snr_threshold: float = 10.0,
    kernel_fwhm: float = 2.5,
    bkg_boxsize: int = 400,
    minsep_fwhm: float = 0.0,
    sigma_radius: float = 1.5,
    sharplo: float = 0.5,
    sharphi: float = 2.0,
    roundlo: float = 0.0,
    roundhi: float = 0.2,
    brightest: int | None = 200,
    peakmax: float | None = None,
    npixels: int = 10,
    connectivity: int = 8,
    nlevels: int = 32,
    contrast: float = 0.001,
    multithresh_mode: str = "exponential",
    localbkg_width: int = 0,
    apermask_method: str = "correct",
    kron_params: Sequence[float] | None = None,
    deblend: bool = True,
    bounding_box: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> Table:
    """Detect sources for alignment, as the official ``tweakreg`` step does.

    Parameters
    ----------
    data : numpy.ndarray
        2D science array ``(ny, nx)`` (assumed background-subtracted or not; a 2D
        background is estimated and removed anyway).
    mask : numpy.ndarray or None, optional
        Boolean coverage mask, `True` for pixels to exclude (the official step uses
        ``DO_NOT_USE | NON_SCIENCE``; see `coverage_mask_from_dq`).
    err : numpy.ndarray or None, optional
        Error array, used only by the ``'segmentation'`` finder (``SourceCatalog`` errors).
    starfinder : {'iraf', 'dao', 'segmentation'}, optional
        Finder: ``IRAFStarFinder``, ``DAOStarFinder`` or ``SourceFinder`` + ``SourceCatalog``.
    snr_threshold : float, optional
        Detection threshold in units of the background RMS.
    kernel_fwhm : float, optional
        FWHM (pixels) of the Gaussian kernel.
    bkg_boxsize : int, optional
        Background mesh size in pixels.
    minsep_fwhm, sigma_radius, sharplo, sharphi, roundlo, roundhi, brightest, peakmax
        ``'iraf'``/``'dao'`` options with the official meaning (``brightest`` keeps the
        brightest N objects; ``peakmax`` rejects objects with peaks >= ``peakmax``).
    npixels, connectivity, nlevels, contrast, multithresh_mode, localbkg_width
        ``'segmentation'`` options with the official meaning.
    apermask_method, kron_params, deblend
        ``'segmentation'`` options with the official meaning.
    bounding_box : tuple or None, optional
        If given, ``((xmin, xmax), (ymin, ymax))`` of the WCS: sources outside are dropped,
        as the official step does before alignment.

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``x``, ``y`` (0-based detector pixels) and ``flux``; empty (with
        those columns) when nothing was found or the background failed.

    Raises
    ------
    ValueError
        If ``starfinder`` is not a known finder.
    """
    finder = finder_kind(starfinder)
    data = np.asarray(data, dtype=float)
    coverage_mask = None if mask is None else np.asarray(mask, dtype=bool)

    usable = np.isfinite(data) if coverage_mask is None else np.isfinite(data) & ~coverage_mask
    if not usable.any():  # an exposure without a valid pixel: the pipeline says so, once
        log.debug("No finite pixel outside the coverage mask: empty catalog")
        return _empty_catalog()
    try:
        bkg = _background(data, bkg_boxsize, coverage_mask)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            threshold_img = snr_threshold * bkg.background_rms
        sub = data - bkg.background
    except ValueError as e:
        log.warning("Error determining sky background: %s", e.args[0])
        return _empty_catalog()

    options = {
        "sigma_radius": sigma_radius,
        "min_separation": max(2, int(minsep_fwhm * kernel_fwhm + 0.5)),
        "sharpness_range": (sharplo, sharphi),
        "roundness_range": (roundlo, roundhi),
        "peak_max": peakmax,
        "n_brightest": brightest,
        "n_pixels": npixels,
        "connectivity": int(connectivity),
        "n_levels": nlevels,
        "contrast": contrast,
        "mode": multithresh_mode,
        "error": err,
        "local_bkg_width": localbkg_width,
        "aperture_mask_method": apermask_method,
        "kron_params": kron_params,
        "deblend": deblend,
    }

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        warnings.filterwarnings("ignore", category=AstropyUserWarning)
        if finder in ("iraf", "dao"):
            cls = IRAFStarFinder if finder == "iraf" else DAOStarFinder
            threshold = float(np.median(threshold_img))
            star_finder = cls(threshold, kernel_fwhm, **_select_kwargs(cls, options))
            with use_future_column_names(), fast_ring_verification():
                sources = star_finder(sub, mask=coverage_mask)
        else:
            sources = _segmentation_sources(sub, threshold_img, kernel_fwhm, coverage_mask, options)

    if not sources:
        log.warning("No sources found in the image.")
        return _empty_catalog()

    catalog = _empty_catalog()
    colnames = sources.colnames
    xcol = next(c for c in ("x_centroid", "xcentroid") if c in colnames)
    ycol = next(c for c in ("y_centroid", "ycentroid") if c in colnames)
    fcol = "segment_flux" if "segment_flux" in colnames else "flux"
    idcol = "label" if "label" in colnames else "id"
    catalog = Table(
        {
            "id": np.asarray(sources[idcol], dtype=int),
            "x": np.asarray(sources[xcol], dtype=float),
            "y": np.asarray(sources[ycol], dtype=float),
            "flux": np.asarray(getattr(sources[fcol], "value", sources[fcol]), dtype=float),
        }
    )
    return filter_catalog_by_bounding_box(catalog, bounding_box)


def _segmentation_sources(
    data: np.ndarray,
    threshold_img: np.ndarray,
    kernel_fwhm: float,
    mask: np.ndarray | None,
    options: dict,
) -> Table | None:
    """Run ``SourceFinder`` + ``SourceCatalog`` as the official segmentation wrapper does."""
    if kernel_fwhm > 0:
        kernel = Gaussian2DKernel(kernel_fwhm * gaussian_fwhm_to_sigma)
        conv = convolve(data, kernel, mask=mask)
    else:
        conv = data
    finder_kwargs = _select_kwargs(SourceFinder, {"progress_bar": False, **options})
    catalog_kwargs = _select_kwargs(SourceCatalog, options)
    if catalog_kwargs.get("kron_params", 0) is None:
        catalog_kwargs["kron_params"] = (2.5, 1.4, 0.0)
    segm = SourceFinder(**finder_kwargs)(conv, threshold_img, mask=mask)
    if segm is None:
        return None
    with use_future_column_names():
        cat = SourceCatalog(data, segm, mask=mask, convolved_data=conv, **catalog_kwargs)
        return cat.to_table(columns=["label", "x_centroid", "y_centroid", "segment_flux"])

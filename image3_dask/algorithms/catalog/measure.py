"""Measurements and columns of the official ``*_cat.ecsv`` (jwst 3.0).

:func:`measure_sources` measures given segments on a cutout (segment
properties with ``photutils.segmentation.SourceCatalog``, circular aperture
photometry at the encircled-energy radii with a sigma-clipped local background
in an annulus, DAOFind sharpness/roundness).  Every value depends only on the
pixels of the segment's bounding box or of a disc around its centroid, so a
cutout with :func:`measurement_margin` pixels around the segments gives the
same numbers as the whole mosaic.  :func:`finalize_catalog` then builds the
official table (magnitudes, concentration indices, ``is_extended``, nearest
neighbours, sky coordinates, formats, descriptions, metadata) from all
sources at once.
"""

from __future__ import annotations

import datetime
import math
import warnings
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from typing import Any

import astropy.units as u
import numpy as np
from astropy.convolution import Gaussian2DKernel
from astropy.coordinates import SkyCoord
from astropy.nddata.utils import NoOverlapError, extract_array
from astropy.stats import SigmaClip, gaussian_fwhm_to_sigma
from astropy.table import QTable, vstack
from astropy.utils.exceptions import AstropyUserWarning
from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry
from photutils.segmentation import SegmentationImage, SourceCatalog
from scipy import ndimage
from scipy.spatial import KDTree

from .detection import kernel_half_size

__all__ = [
    "catalog_colnames",
    "column_descriptions",
    "daofind_kernel",
    "finalize_catalog",
    "flux_to_abmag",
    "measure_sources",
    "measurement_margin",
    "sky_angle",
]


# --------------------------------------------------------------------------- names
def _aper_names(aperture_ee: Sequence[int], kind: str) -> list[str]:
    names = []
    for ee in aperture_ee:
        names += [f"aper{ee}_{kind}", f"aper{ee}_{kind}_err"]
    return names + [f"aper_total_{kind}", f"aper_total_{kind}_err"]


def _ci_pairs() -> tuple[tuple[int, int], ...]:
    return (0, 1), (1, 2), (0, 2)


def catalog_colnames(aperture_ee: Sequence[int] = (30, 50, 70)) -> list[str]:
    """Column names, in order, of the official source catalog.

    Parameters
    ----------
    aperture_ee : sequence of 3 int
        Encircled energies of the apertures.

    Returns
    -------
    list of str
        The column names.
    """
    ee = list(aperture_ee)
    names = [
        "label",
        "xcentroid",
        "ycentroid",
        "sky_centroid",
        "aper_bkg_flux",
        "aper_bkg_flux_err",
    ]
    for kind in ("flux", "abmag", "vegamag"):
        names += _aper_names(ee, kind)
    names += [f"CI_{ee[j]}_{ee[i]}" for i, j in _ci_pairs()]
    names += ["is_extended", "sharpness", "roundness", "nn_label", "nn_dist"]
    names += [
        "isophotal_flux",
        "isophotal_flux_err",
        "isophotal_abmag",
        "isophotal_abmag_err",
        "isophotal_vegamag",
        "isophotal_vegamag_err",
        "isophotal_area",
        "semimajor_sigma",
        "semiminor_sigma",
        "ellipticity",
        "orientation",
        "sky_orientation",
        "sky_bbox_ll",
        "sky_bbox_ul",
        "sky_bbox_lr",
        "sky_bbox_ur",
    ]
    return names


def column_descriptions(aperture_ee: Sequence[int] = (30, 50, 70)) -> dict[str, str]:
    """Column descriptions written in the ECSV header (same text as jwst 3.0).

    Parameters
    ----------
    aperture_ee : sequence of 3 int
        Encircled energies of the apertures.

    Returns
    -------
    dict
        Column name to description.
    """
    ee = list(aperture_ee)
    d = {
        "label": "Unique source identification label number",
        "xcentroid": "X pixel value of the source centroid (0 indexed)",
        "ycentroid": "Y pixel value of the source centroid (0 indexed)",
        "sky_centroid": "ICRS Sky coordinate of the source centroid",
        "aper_bkg_flux": "The local background value calculated as the sigma-clipped "
        "median value in the background annulus aperture",
        "aper_bkg_flux_err": "The standard error of the sigma-clipped median background value",
    }
    for kind, ftype, ftype2 in (
        ("flux", "Flux", "flux"),
        ("abmag", "AB magnitude", "AB magnitude"),
        ("vegamag", "Vega magnitude", "Vega magnitude"),
    ):
        names = _aper_names(ee, kind)
        for k, e in enumerate(ee):
            d[names[2 * k]] = f"{ftype} within the {e}% encircled energy circular aperture"
            d[names[2 * k + 1]] = (
                f"{ftype} error within the {e}% encircled energy circular aperture"
            )
        for suffix, extra in ((-2, ""), (-1, " error")):
            d[names[suffix]] = (
                f"Total aperture-corrected {ftype2}{extra} based on the {ee[-1]}% encircled "
                "energy circular aperture; should be used only for unresolved sources."
            )
    flux_names = _aper_names(ee, "flux")
    for i, j in _ci_pairs():
        d[f"CI_{ee[j]}_{ee[i]}"] = (
            f"Concentration index calculated as ({flux_names[2 * j]} / {flux_names[2 * i]})"
        )
    d.update(
        {
            "is_extended": "Flag indicating whether the source is extended",
            "sharpness": "The DAOFind source sharpness statistic",
            "roundness": "The DAOFind source roundness statistic",
            "nn_label": "The label number of the nearest neighbor",
            "nn_dist": "The distance in pixels to the nearest neighbor",
            "isophotal_flux": "Isophotal flux",
            "isophotal_flux_err": "Isophotal flux error",
            "isophotal_abmag": "Isophotal AB magnitude",
            "isophotal_abmag_err": "Isophotal AB magnitude error",
            "isophotal_vegamag": "Isophotal Vega magnitude",
            "isophotal_vegamag_err": "Isophotal Vega magnitude error",
            "isophotal_area": "Isophotal area",
            "semimajor_sigma": "1-sigma standard deviation along the semimajor axis of the 2D "
            "Gaussian function that has the same second-order central moments as the source",
            "semiminor_sigma": "1-sigma standard deviation along the semiminor axis of the 2D "
            "Gaussian function that has the same second-order central moments as the source",
            "ellipticity": "1 minus the ratio of the 1-sigma lengths of the semimajor and "
            "semiminor axes",
            "orientation": "The angle (degrees) between the positive X axis and the major axis "
            "(increases counter-clockwise)",
            "sky_orientation": "The position angle (degrees) from North of the major axis",
        }
    )
    for corner, name in (
        ("ll", "lower-left"),
        ("ul", "upper-left"),
        ("lr", "lower-right"),
        ("ur", "upper-right"),
    ):
        d[f"sky_bbox_{corner}"] = (
            f"Sky coordinate of the {name} vertex of the minimal bounding box of the source"
        )
    return d


# --------------------------------------------------------------------------- helpers
def flux_to_abmag(flux: u.Quantity, flux_err: u.Quantity | None) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitude and error of fluxes in Jy (NaN for negative fluxes).

    Parameters
    ----------
    flux : astropy.units.Quantity
        Fluxes in Jy.
    flux_err : astropy.units.Quantity or None
        Flux errors in Jy.

    Returns
    -------
    abmag, abmag_err : numpy.ndarray
        ``-2.5 log10(F/Jy) + 8.9`` and ``2.5 log10(1 + err/F)``.
    """
    fval = u.Quantity(flux, u.Jy).value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        abmag = -2.5 * np.log10(fval) + 8.9
        if flux_err is None or np.all(np.isnan(flux_err)):
            abmag_err = np.full_like(abmag, np.nan)
        else:
            abmag_err = 2.5 * np.log10(1.0 + u.Quantity(flux_err, u.Jy).value / fval)
    neg = fval < 0
    abmag[neg] = np.nan
    abmag_err[neg] = np.nan
    return abmag, abmag_err


def daofind_kernel(kernel_fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-sum DAOFind kernel and its circular footprint (for sharpness/roundness).

    Parameters
    ----------
    kernel_fwhm : float
        Detection kernel FWHM in pixels.

    Returns
    -------
    kernel, footprint : numpy.ndarray
        Odd-sized kernel and 0/1 footprint.
    """
    sigma = kernel_fwhm * gaussian_fwhm_to_sigma
    radius = max(2.0, 1.5 * sigma)
    size = 2 * int(radius) + 1
    center = size // 2
    yy, xx = np.mgrid[0:size, 0:size]
    footprint = (np.hypot(xx - center, yy - center) <= radius).astype(int)
    kern = Gaussian2DKernel(sigma, x_size=size, y_size=size).array
    kern = kern / kern.max() * footprint
    npix = footprint.sum()
    denom = np.sum(kern**2) - kern.sum() ** 2 / npix
    return ((kern - kern.sum() / npix) / denom) * footprint, footprint


def measurement_margin(kernel_fwhm: float, aperture_params: dict[str, Any]) -> int:
    """Pixels to add around segment bounding boxes so cutout measurements are exact.

    Parameters
    ----------
    kernel_fwhm : float
        Detection kernel FWHM.
    aperture_params : dict
        Aperture parameters (see :mod:`.refdata`).

    Returns
    -------
    int
        The margin in pixels.
    """
    rmax = max(
        float(np.max(aperture_params["aperture_radii"])),
        float(aperture_params["bkg_aperture_outer_radius"]),
    )
    dao = daofind_kernel(kernel_fwhm)[0].shape[0]
    return int(max(kernel_half_size(kernel_fwhm) + 1, math.ceil(rmax) + 2, dao + 1))


def sky_angle(wcs: Any, pixel: tuple[float, float]) -> u.Quantity:
    """Angle from the +x axis to North at a pixel (counter-clockwise).

    Parameters
    ----------
    wcs : gwcs.WCS or astropy.wcs.WCS
        Mosaic WCS (shared astropy WCS API).
    pixel : tuple of float
        0-based ``(x, y)`` (jwst uses CRPIX - 1).

    Returns
    -------
    astropy.units.Quantity
        Angle in degrees.
    """
    sky = wcs.pixel_to_world(pixel[0], pixel[1])
    x0, y0 = wcs.world_to_pixel(sky)
    x1, y1 = wcs.world_to_pixel(sky.directional_offset_by(0.0, 1 * u.arcsec))
    return (np.arctan2(y1 - y0, x1 - x0) * u.radian).to(u.deg)


def _local_background(data: np.ndarray, xy: np.ndarray, rin: float, rout: float):
    annulus = CircularAnnulus(xy, rin, rout)
    sigclip = SigmaClip(sigma=3.0)
    med, std, nval = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=AstropyUserWarning)
        masks = annulus.to_mask(method="center")
        for mask in masks if isinstance(masks, list) else [masks]:
            values = sigclip(mask.get_values(data), masked=False)
            nval.append(values.size)
            med.append(np.median(values))
            std.append(np.std(values))
        nval = np.array(nval)
        err = np.sqrt(np.pi / (2.0 * nval)) * np.array(std)
    return np.array(med), err


def _dao_cutouts(image: np.ndarray, shape: tuple[int, int], xy: np.ndarray) -> np.ndarray:
    out = []
    for x, y in xy:
        try:
            out.append(extract_array(image, shape, (y, x), fill_value=0.0))
        except NoOverlapError:
            out.append(np.zeros(shape))
    return np.array(out).reshape((len(xy), *shape))


def _sharp_round(data: np.ndarray, xy: np.ndarray, kernel_fwhm: float):
    kern, footprint = daofind_kernel(kernel_fwhm)
    c = kern.shape[0] // 2
    conv = ndimage.convolve(data, kern, mode="constant", cval=0.0)
    cut = _dao_cutouts(data, kern.shape, xy)
    cutc = _dao_cutouts(conv, kern.shape, xy)
    npix = footprint.sum() - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        peak = cut[:, c, c]
        mean = (np.sum(cut * footprint, axis=(1, 2)) - peak) / npix
        sharp = (peak - mean) / cutc[:, c, c]
        cutc = cutc.copy()
        cutc[:, c, c] = 0.0
        q1 = cutc[:, 0 : c + 1, c + 1 :].sum(axis=(1, 2))
        q2 = cutc[:, 0:c, 0 : c + 1].sum(axis=(1, 2))
        q3 = cutc[:, c:, 0:c].sum(axis=(1, 2))
        q4 = cutc[:, c + 1 :, c:].sum(axis=(1, 2))
        sum2 = -q1 + q2 - q3 + q4
        sum2[sum2 == 0] = 0.0
        sum4 = np.abs(cutc).sum(axis=(1, 2))
        sum4[sum4 == 0] = np.nan
        rnd = 2.0 * sum2 / sum4
    return sharp, rnd


# --------------------------------------------------------------------------- measure
def measure_sources(
    data: u.Quantity,
    background: np.ndarray,
    convolved: u.Quantity,
    error: u.Quantity,
    segmentation: np.ndarray,
    coverage_mask: np.ndarray | None,
    *,
    aperture_params: dict[str, Any],
    kernel_fwhm: float = 2.0,
    labels: Sequence[int] | None = None,
    origin: tuple[int, int] = (0, 0),
    aperture_mask_method: str = "correct",
    local_bkg_width: int = 0,
) -> QTable:
    """Measure segments on an image or a cutout of the mosaic.

    Parameters
    ----------
    data : astropy.units.Quantity
        Image in Jy, *not* background subtracted (aperture photometry uses it
        with a local annulus background, as jwst does).
    background : numpy.ndarray
        Global 2D background on the same pixels (plain values in Jy).
    convolved : astropy.units.Quantity
        Convolved background-subtracted image (exact on the segments).
    error : astropy.units.Quantity
        Total error in Jy.
    segmentation : numpy.ndarray
        int labels on the same pixels; only ``labels`` are measured.
    coverage_mask : numpy.ndarray or None
        True where there is no coverage.
    aperture_params : dict
        ``aperture_radii`` (pixels), ``aperture_corrections``,
        ``aperture_ee``, ``bkg_aperture_inner_radius``,
        ``bkg_aperture_outer_radius``.
    kernel_fwhm : float, optional
        Detection kernel FWHM (DAOFind sharpness/roundness).
    labels : sequence of int, optional
        Labels to measure (default: all labels in ``segmentation``).
    origin : tuple of int, optional
        Global ``(y0, x0)`` of the cutout; output positions are global.
    aperture_mask_method, local_bkg_width
        Passed to ``SourceCatalog`` (they only affect Kron/local-background
        columns, which the official catalog does not keep).

    Returns
    -------
    astropy.table.QTable
        One row per label, sorted by label: ``label`` (the input label),
        ``xcentroid``, ``ycentroid`` (global), global ``bbox_xmin/xmax/ymin/ymax``,
        ``aper_bkg_flux[_err]``, ``aper{ee}_flux[_err]``,
        ``isophotal_flux[_err]``, ``isophotal_area``, ``semimajor_sigma``,
        ``semiminor_sigma``, ``ellipticity``, ``orientation``, ``sharpness``,
        ``roundness``.
    """
    segm_data = np.asarray(segmentation)
    if labels is None:
        labels = np.unique(segm_data[segm_data > 0])
    labels = np.sort(np.asarray(labels, dtype=np.int64))
    ee = list(aperture_params["aperture_ee"])
    out = QTable()
    if labels.size == 0:
        return out
    keep = np.isin(segm_data, labels)
    segm = SegmentationImage(np.where(keep, segm_data, 0).astype(np.int32))
    unit = data.unit
    sub = data - (background << unit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=AstropyUserWarning)
        cat = SourceCatalog(
            sub,
            segm,
            convolved_data=convolved,
            error=error,
            mask=coverage_mask,
            local_bkg_width=local_bkg_width,
            aperture_mask_method=aperture_mask_method,
            progress_bar=False,
        )
        y0, x0 = origin
        xcen = np.atleast_1d(cat.x_centroid) + x0
        ycen = np.atleast_1d(cat.y_centroid) + y0
        out["label"] = np.atleast_1d(cat.label).astype(np.int64)
        out["xcentroid"] = xcen
        out["ycentroid"] = ycen
        for name, off in (
            ("bbox_xmin", x0),
            ("bbox_xmax", x0),
            ("bbox_ymin", y0),
            ("bbox_ymax", y0),
        ):
            out[name] = np.atleast_1d(getattr(cat, name)) + off

        xy_local = np.transpose((xcen - x0, ycen - y0))
        xy_local[~np.isfinite(xy_local)] = -1000.0
        bkg_med, bkg_err = _local_background(
            data.value,
            xy_local,
            aperture_params["bkg_aperture_inner_radius"],
            aperture_params["bkg_aperture_outer_radius"],
        )
        out["aper_bkg_flux"] = bkg_med << unit
        out["aper_bkg_flux_err"] = bkg_err << unit
        apertures = [CircularAperture(xy_local, r) for r in aperture_params["aperture_radii"]]
        phot = aperture_photometry(data, apertures, error=error)
        for i, (aper, e) in enumerate(zip(apertures, ee, strict=True)):
            out[f"aper{e}_flux"] = phot[f"aperture_sum_{i}"] - out["aper_bkg_flux"] * aper.area
            out[f"aper{e}_flux_err"] = phot[f"aperture_sum_err_{i}"]

        out["isophotal_flux"] = np.atleast_1d(cat.segment_flux)
        out["isophotal_flux_err"] = np.atleast_1d(cat.segment_flux_err)
        out["isophotal_area"] = np.atleast_1d(cat.area)
        out["semimajor_sigma"] = np.atleast_1d(cat.semimajor_axis)
        out["semiminor_sigma"] = np.atleast_1d(cat.semiminor_axis)
        out["ellipticity"] = np.atleast_1d(cat.ellipticity)
        out["orientation"] = u.Quantity(np.atleast_1d(cat.orientation), u.deg)
        sharp, rnd = _sharp_round(data.value, xy_local, kernel_fwhm)
        out["sharpness"] = sharp
        out["roundness"] = rnd
    return out


# --------------------------------------------------------------------------- final table
def _formats(catalog: QTable) -> None:
    for name in catalog.colnames:
        if name in ("xcentroid", "ycentroid") or "CI_" in name:
            catalog[name].info.format = ".4f"
        if "flux" in name:
            catalog[name].info.format = ".6e"
        if (
            "abmag" in name
            or "vegamag" in name
            or name in ("nn_dist", "sharpness", "roundness")
            or name
            in (
                "semimajor_sigma",
                "semiminor_sigma",
                "ellipticity",
                "orientation",
                "sky_orientation",
            )
        ):
            catalog[name].info.format = ".6f"


def _versions() -> dict[str, str]:
    import platform

    out = {"Python": platform.python_version()}
    for pkg in ("numpy", "scipy", "astropy", "photutils", "gwcs", "image3-dask"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def finalize_catalog(
    measured: QTable | Sequence[QTable],
    *,
    wcs: Any,
    aperture_params: dict[str, Any],
    abvega_offset: float = 0.0,
    ci_star_thresholds: tuple[float, float] = (2.0, 1.8),
    reference_pixel: tuple[float, float] | None = None,
    shape: tuple[int, int] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> QTable:
    """Build the official catalog table from measured sources.

    Parameters
    ----------
    measured : astropy.table.QTable or sequence of QTable
        Output(s) of :func:`measure_sources` whose ``label`` column already
        holds the final source ids.
    wcs : gwcs.WCS or astropy.wcs.WCS
        Mosaic WCS (pixel 0-based).
    aperture_params : dict
        As in :func:`measure_sources`.
    abvega_offset : float, optional
        ``m_AB - m_Vega``.
    ci_star_thresholds : tuple of float, optional
        ``(ci1_star_threshold, ci2_star_threshold)``.
    reference_pixel : tuple of float, optional
        0-based ``(x, y)`` where the North angle for ``sky_orientation`` is
        measured (jwst: ``CRPIX - 1``). Default: centre of ``shape``.
    shape : tuple of int, optional
        Mosaic shape, for the default reference pixel.
    extra_meta : dict, optional
        Added to the table metadata.

    Returns
    -------
    astropy.table.QTable
        Columns, units, dtypes and order of jwst 3.0's catalog, sorted by label.
    """
    if isinstance(measured, QTable):
        measured = [measured]
    parts = [t for t in measured if len(t)]
    ee = list(aperture_params["aperture_ee"])
    if not parts:
        return QTable()
    raw = (
        vstack(parts, join_type="exact", metadata_conflicts="silent")
        if len(parts) > 1
        else parts[0]
    )
    raw = raw[np.argsort(np.asarray(raw["label"]), kind="stable")]
    n = len(raw)
    x = np.asarray(raw["xcentroid"], dtype=float)
    y = np.asarray(raw["ycentroid"], dtype=float)
    label = np.asarray(raw["label"]).astype(np.int32)

    cols: dict[str, Any] = {"label": label, "xcentroid": x, "ycentroid": y}
    cols["sky_centroid"] = wcs.pixel_to_world(x, y)
    cols["aper_bkg_flux"] = raw["aper_bkg_flux"]
    cols["aper_bkg_flux_err"] = raw["aper_bkg_flux_err"]
    apcorr = aperture_params["aperture_corrections"]
    flux_names = _aper_names(ee, "flux")
    fluxes = {}
    for e in ee:
        fluxes[f"aper{e}_flux"] = raw[f"aper{e}_flux"]
        fluxes[f"aper{e}_flux_err"] = raw[f"aper{e}_flux_err"]
    fluxes["aper_total_flux"] = apcorr[-1] * raw[f"aper{ee[-1]}_flux"]
    fluxes["aper_total_flux_err"] = apcorr[-1] * raw[f"aper{ee[-1]}_flux_err"]
    cols.update(fluxes)
    mags: dict[str, Any] = {}
    for k in range(0, len(flux_names), 2):
        ab, ab_err = flux_to_abmag(fluxes[flux_names[k]], fluxes[flux_names[k + 1]])
        mags[flux_names[k].replace("flux", "abmag")] = ab
        mags[flux_names[k + 1].replace("flux", "abmag")] = ab_err
        mags[flux_names[k].replace("flux", "vegamag")] = ab - abvega_offset
        mags[flux_names[k + 1].replace("flux", "vegamag")] = ab_err
    cols.update(mags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        ci = [
            fluxes[f"aper{ee[j]}_flux"].value / fluxes[f"aper{ee[i]}_flux"].value
            for i, j in _ci_pairs()
        ]
    for (i, j), value in zip(_ci_pairs(), ci, strict=True):
        cols[f"CI_{ee[j]}_{ee[i]}"] = value
    cols["is_extended"] = (ci[0] > ci_star_thresholds[0]) & (ci[1] > ci_star_thresholds[1])
    cols["sharpness"] = raw["sharpness"]
    cols["roundness"] = raw["roundness"]

    xy = np.transpose((x, y))
    bad = ~np.isfinite(xy).all(axis=1)
    if n == 1:
        cols["nn_label"] = np.array([-1], dtype=np.int32)
        cols["nn_dist"] = np.array([np.nan]) * u.pix
    else:
        xyf = xy.copy()
        xyf[~np.isfinite(xyf)] = -1000.0
        dist, idx = KDTree(xyf).query(xyf, k=[2])
        nn_label = label[idx[:, 0]]
        nn_label[bad] = -1
        dist = dist[:, 0]
        dist[bad] = np.nan
        cols["nn_label"] = nn_label
        cols["nn_dist"] = dist * u.pix

    cols["isophotal_flux"] = raw["isophotal_flux"]
    cols["isophotal_flux_err"] = raw["isophotal_flux_err"]
    ab, ab_err = flux_to_abmag(raw["isophotal_flux"], raw["isophotal_flux_err"])
    cols["isophotal_abmag"] = ab
    cols["isophotal_abmag_err"] = ab_err
    cols["isophotal_vegamag"] = ab - abvega_offset
    cols["isophotal_vegamag_err"] = ab_err
    for name in (
        "isophotal_area",
        "semimajor_sigma",
        "semiminor_sigma",
        "ellipticity",
        "orientation",
    ):
        cols[name] = raw[name]
    if reference_pixel is None:
        if shape is None:
            raise ValueError("reference_pixel or shape is required")
        reference_pixel = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    angle = sky_angle(wcs, reference_pixel)
    cols["sky_orientation"] = ((180.0 * u.deg) - angle + raw["orientation"]) % (360 * u.deg)
    bx0 = np.asarray(raw["bbox_xmin"], dtype=float)
    # photutils uses the exclusive bounding-box stop for the upper/right corners
    bx1 = np.asarray(raw["bbox_xmax"], dtype=float) + 1.0
    by0 = np.asarray(raw["bbox_ymin"], dtype=float)
    by1 = np.asarray(raw["bbox_ymax"], dtype=float) + 1.0
    for corner, (cx, cy) in {
        "ll": (bx0 - 0.5, by0 - 0.5),
        "ul": (bx0 - 0.5, by1 + 0.5),
        "lr": (bx1 + 0.5, by0 - 0.5),
        "ur": (bx1 + 0.5, by1 + 0.5),
    }.items():
        cols[f"sky_bbox_{corner}"] = wcs.pixel_to_world(cx, cy)

    catalog = QTable()
    desc = column_descriptions(ee)
    for name in catalog_colnames(ee):
        value = cols[name]
        if isinstance(value, SkyCoord) and value.isscalar:
            value = value.reshape((1,))
        catalog[name] = value
        catalog[name].info.description = desc[name]
    _formats(catalog)
    catalog.meta.update(
        {
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "version": _versions(),
            "aperture_params": dict(aperture_params),
            "abvega_offset": abvega_offset,
        }
    )
    if extra_meta:
        catalog.meta.update(extra_meta)
    return catalog

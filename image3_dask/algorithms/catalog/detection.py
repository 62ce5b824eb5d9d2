"""Detection image, threshold labelling and deblending of the source catalog step.

Mirrors the ``segmentation`` star finder of jwst 3.0
(``jwst.tweakreg.tweakreg_catalog._sourcefinder_wrapper`` with
``photutils.segmentation.SourceFinder``): the background-subtracted image is
convolved with a normalised Gaussian kernel (astropy ``convolve``, masked
pixels interpolated), pixels with ``convolved > snr_threshold * rms`` outside
the coverage mask are labelled with 4- or 8-connectivity, segments smaller
than ``n_pixels`` are dropped, and each segment of at least ``2 * n_pixels``
is deblended on its own bounding box.  Convolution is local (kernel
half-size), labelling is joined across tiles in :mod:`.tiled`, and deblending
only sees one segment's bounding box, so everything here runs on cutouts.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
from astropy.convolution import Gaussian2DKernel, convolve
from astropy.stats import gaussian_fwhm_to_sigma
from astropy.utils.exceptions import AstropyUserWarning
from photutils.segmentation import SegmentationImage, deblend_sources
from scipy import ndimage

__all__ = [
    "convolve_detection",
    "deblend_segment",
    "detection_kernel",
    "kernel_half_size",
    "label_above_threshold",
    "structure",
]


def detection_kernel(kernel_fwhm: float) -> np.ndarray:
    """Normalised Gaussian detection kernel (astropy default size, 8 sigma, odd).

    Parameters
    ----------
    kernel_fwhm : float
        FWHM in pixels (step parameter ``kernel_fwhm``).

    Returns
    -------
    numpy.ndarray
        The kernel array.
    """
    return Gaussian2DKernel(kernel_fwhm * gaussian_fwhm_to_sigma).array


def kernel_half_size(kernel_fwhm: float) -> int:
    """Half size of the detection kernel (0 when no convolution).

    Parameters
    ----------
    kernel_fwhm : float
        FWHM in pixels.

    Returns
    -------
    int
        ``max(kernel.shape) // 2``.
    """
    if kernel_fwhm <= 0:
        return 0
    return int(max(detection_kernel(kernel_fwhm).shape) // 2)


def structure(connectivity: int) -> np.ndarray:
    """Binary structuring element for 4- or 8-connectivity.

    Parameters
    ----------
    connectivity : {4, 8}
        Pixel connectivity.

    Returns
    -------
    numpy.ndarray
        3x3 boolean structure.
    """
    if int(connectivity) == 8:
        return np.ones((3, 3), dtype=bool)
    if int(connectivity) == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, not {connectivity}")


def convolve_detection(
    data: np.ndarray, kernel_fwhm: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """Convolve the background-subtracted image as the official step does.

    Parameters
    ----------
    data : numpy.ndarray or astropy.units.Quantity
        Background-subtracted image (or cutout with a margin of at least
        :func:`kernel_half_size`; values within that margin of a cutout edge
        that is not a mosaic edge are not exact).
    kernel_fwhm : float
        Kernel FWHM in pixels; ``<= 0`` returns ``data`` unchanged.
    mask : numpy.ndarray, optional
        Coverage mask; masked pixels are interpolated over.

    Returns
    -------
    numpy.ndarray or astropy.units.Quantity
        Convolved image, same type and unit as ``data``.
    """
    if kernel_fwhm <= 0:
        return data
    kernel = Gaussian2DKernel(kernel_fwhm * gaussian_fwhm_to_sigma)
    with warnings.catch_warnings():
        warnings.filterwarnings(action="ignore", category=AstropyUserWarning)
        return convolve(data, kernel, mask=mask)


def label_above_threshold(
    convolved: np.ndarray,
    threshold: np.ndarray,
    mask: np.ndarray | None,
    connectivity: int = 8,
) -> tuple[np.ndarray, int]:
    """Label connected pixels above the threshold (no size cut, no deblending).

    Parameters
    ----------
    convolved : numpy.ndarray or astropy.units.Quantity
        Convolved detection image.
    threshold : numpy.ndarray or astropy.units.Quantity
        Per-pixel threshold (``snr_threshold * rms``), same unit.
    mask : numpy.ndarray or None
        Coverage mask (never part of a source).
    connectivity : {4, 8}
        Pixel connectivity.

    Returns
    -------
    labels : numpy.ndarray
        int32 labels in raster order of the first pixel (``scipy.ndimage.label``).
    nlabels : int
        Number of labels.
    """
    conv = u.Quantity(convolved).value if isinstance(convolved, u.Quantity) else convolved
    thr = u.Quantity(threshold).value if isinstance(threshold, u.Quantity) else threshold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        above = conv > thr
    if mask is not None:
        above &= ~mask
    labels, nlabels = ndimage.label(above, structure=structure(connectivity))
    return labels.astype(np.int32, copy=False), int(nlabels)


def deblend_segment(
    convolved: np.ndarray,
    segment_mask: np.ndarray,
    *,
    n_pixels: int = 25,
    n_levels: int = 32,
    contrast: float = 0.001,
    mode: str = "exponential",
    connectivity: int = 8,
) -> np.ndarray | None:
    """Deblend one segment on its minimal bounding box.

    Parameters
    ----------
    convolved : numpy.ndarray or astropy.units.Quantity
        Convolved image on exactly the minimal bounding box of the segment
        (as ``photutils.segmentation.deblend_sources`` slices it).
    segment_mask : numpy.ndarray
        True on the pixels of the segment, same shape.
    n_pixels, n_levels, contrast, mode, connectivity
        Step parameters ``npixels``, ``nlevels``, ``contrast``,
        ``multithresh_mode`` and ``connectivity``.

    Returns
    -------
    numpy.ndarray or None
        int32 child labels ``1..k`` (0 outside the segment) in the order the
        official deblending numbers them, or None if the segment is kept whole.
    """
    if np.count_nonzero(segment_mask) < 2 * n_pixels or contrast == 1:
        return None
    segm = SegmentationImage(segment_mask.astype(np.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = deblend_sources(
            convolved,
            segm,
            n_pixels,
            n_levels=n_levels,
            contrast=contrast,
            mode=mode,
            connectivity=int(connectivity),
            relabel=True,
            n_processes=1,
            progress_bar=False,
        )
    if not out.deblended_labels.size:
        return None
    return out.data.astype(np.int32)

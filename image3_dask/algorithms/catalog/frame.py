"""Single-frame source catalog (the whole mosaic in memory).

Runs the tiled building blocks with a single tile, so the single-frame and
tiled catalogs share every computation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from astropy.table import QTable

from .background import estimate_background
from .measure import finalize_catalog
from .refdata import FALLBACK_APERTURE_PARAMS
from .tiled import (
    CatalogParams,
    assign_source_ids,
    coverage_mask,
    detect_tile,
    join_tile_labels,
    measure_group,
    segmentation_tile,
    to_jy,
)

__all__ = ["make_source_catalog"]


def make_source_catalog(
    sci: np.ndarray,
    err: np.ndarray,
    wcs: Any,
    *,
    wht: np.ndarray | None = None,
    pixel_area_sr: float,
    aperture_params: dict[str, Any] | None = None,
    abvega_offset: float = 0.0,
    reference_pixel: tuple[float, float] | None = None,
    params: CatalogParams | None = None,
    **overrides: Any,
) -> tuple[QTable, np.ndarray]:
    """Source catalog and segmentation image of a drizzled mosaic.

    Parameters
    ----------
    sci, err : numpy.ndarray
        Mosaic ``SCI`` and total ``ERR`` in MJy/sr.
    wcs : gwcs.WCS or astropy.wcs.WCS
        Mosaic WCS.
    wht : numpy.ndarray, optional
        Mosaic ``WHT``; coverage is ``~(isnan(err) | wht == 0)``.
    pixel_area_sr : float
        Mosaic pixel area in steradians (MJy/sr -> Jy).
    aperture_params : dict, optional
        From :mod:`.refdata`; default: jwst's no-APCORR fallback.
    abvega_offset : float, optional
        ``m_AB - m_Vega``.
    reference_pixel : tuple of float, optional
        0-based ``(x, y)`` for ``sky_orientation`` (jwst: ``CRPIX - 1``);
        default: mosaic centre.
    params : CatalogParams, optional
        Step parameters (jwst names); keyword ``overrides`` replace fields.
    **overrides
        Field overrides of ``params``, e.g. ``npixels=5``.

    Returns
    -------
    catalog : astropy.table.QTable
        jwst 3.0 columns; empty table if nothing is detected.
    segmentation : numpy.ndarray
        int32 segmentation image with the catalog labels.
    """
    params = replace(params or CatalogParams(), **overrides)
    if aperture_params is None:
        aperture_params = dict(FALLBACK_APERTURE_PARAMS)
    shape = sci.shape
    cover = coverage_mask(err, wht)
    data = to_jy(sci, pixel_area_sr)
    error = to_jy(err, pixel_area_sr)
    empty = (QTable(), np.zeros(shape, dtype=np.int32))
    try:
        mesh = estimate_background(data.value, cover, params.bkg_boxsize)
    except ValueError:
        return empty
    full = (slice(0, shape[0]), slice(0, shape[1]))
    tile = detect_tile(data, cover, mesh, window=full, core=full, params=params)
    parents, luts = join_tile_labels([tile], n_pixels=params.npixels, shape=shape)
    if len(parents) == 0:
        return empty
    group = measure_group(
        data,
        error,
        cover,
        mesh,
        parents,
        window=full,
        aperture_params=aperture_params,
        params=params,
    )
    idmap = assign_source_ids([group.table])
    catalog = finalize_catalog(
        group.table,
        wcs=wcs,
        aperture_params=aperture_params,
        abvega_offset=abvega_offset,
        ci_star_thresholds=(params.ci1_star_threshold, params.ci2_star_threshold),
        reference_pixel=reference_pixel,
        shape=shape,
        extra_meta={
            "local_bkg_width": params.localbkg_width,
            "aperture_mask_method": params.apermask_method,
            "kron_params": (2.5, 1.4, 0.0),
        },
    )
    segm = segmentation_tile(tile, luts[0], group.patches, idmap)
    return catalog, segm

"""Source catalog of the drizzled mosaic (``source_catalog`` step of calwebb_image3).

Pure functions on numpy arrays, astropy tables and WCS objects.  Single frame:
:func:`make_source_catalog`.  Tiled: see :mod:`.tiled` for the flow
(:func:`detect_tile`, :func:`join_tile_labels`, :func:`measure_group`,
:func:`assign_source_ids`, :func:`finalize_catalog`, :func:`segmentation_tile`).
"""

from .background import (
    BackgroundMesh,
    SeparableZoomInterpolator,
    background_from_mesh,
    effective_box_size,
    estimate_background,
    finalize_mesh,
    mesh_statistics,
    use_separable_zoom,
)
from .frame import make_source_catalog
from .measure import catalog_colnames, finalize_catalog, measure_sources, measurement_margin
from .refdata import (
    SIMULATED_DEFAULTS,
    GaussianPSF,
    abvega_offset_from_table,
    apcorr_table_from_psf,
    aperture_params_from_table,
    default_refdata,
)
from .tiled import (
    CatalogParams,
    GroupResult,
    IdMap,
    TileDetection,
    assign_source_ids,
    coverage_mask,
    detect_tile,
    detection_halo,
    group_window,
    join_tile_labels,
    measure_group,
    segment_weights,
    segmentation_tile,
    split_group,
    to_jy,
)

__all__ = [
    "SIMULATED_DEFAULTS",
    "BackgroundMesh",
    "CatalogParams",
    "GaussianPSF",
    "GroupResult",
    "IdMap",
    "SeparableZoomInterpolator",
    "TileDetection",
    "abvega_offset_from_table",
    "aperture_params_from_table",
    "apcorr_table_from_psf",
    "assign_source_ids",
    "background_from_mesh",
    "catalog_colnames",
    "coverage_mask",
    "default_refdata",
    "detect_tile",
    "detection_halo",
    "effective_box_size",
    "estimate_background",
    "finalize_catalog",
    "finalize_mesh",
    "group_window",
    "join_tile_labels",
    "make_source_catalog",
    "measure_group",
    "measure_sources",
    "measurement_margin",
    "mesh_statistics",
    "segment_weights",
    "segmentation_tile",
    "split_group",
    "to_jy",
    "use_separable_zoom",
]

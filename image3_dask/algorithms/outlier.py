"""Outlier detection (jwst 3.0 ``outlier_detection``, imaging mode) as tileable pieces.

Flow in the tiled design (``resample_data=True``):

1. per tile: drizzle each group's single image into the tile; per group
   :func:`weight_stats` of the tile's weights (disjoint tiles);
2. per group: :func:`combine_weight_stats` over all tiles, then
   :func:`weight_threshold` (``maskpt``);
3. per tile: :func:`median_tile` with the group thresholds;
4. per exposure: read :func:`blot_region_bounds` of the median,
   :func:`blot_median` with the exposure's drizzle pixel map, then
   :func:`flag_outliers`.

For ``resample_data=False`` replace 1-3 by :func:`median_tile` of the aligned
exposures themselves (each exposure's threshold from the :func:`weight_stats` of its
whole weight map) and call :func:`flag_outliers` with ``resample_data=False`` and the
median itself.

The implementations live in :mod:`.median`, :mod:`.blot` and
:mod:`.outlier_flags`; this module re-exports them.
"""

from __future__ import annotations

from image3_dask.algorithms.blot import blot_median, blot_region_bounds
from image3_dask.algorithms.median import (
    WeightStats,
    combine_weight_stats,
    median_tile,
    nanmedian_stack,
    weight_stats,
    weight_threshold,
)
from image3_dask.algorithms.outlier_flags import (
    DO_NOT_USE,
    OUTLIER,
    flag_outliers,
    match_nans_and_flags,
    parse_pair,
)

__all__ = [
    "DO_NOT_USE",
    "OUTLIER",
    "WeightStats",
    "blot_median",
    "blot_region_bounds",
    "combine_weight_stats",
    "flag_outliers",
    "match_nans_and_flags",
    "median_tile",
    "nanmedian_stack",
    "parse_pair",
    "weight_stats",
    "weight_threshold",
]

"""Worker preload: import the heavy libraries and load the datamodel schemas at worker start.

A fresh worker process spends 2-4 s on the first exposure it opens (importing stdatamodels,
gwcs, asdf and their extensions, loading the ImageModel schemas); done at start, this overlaps
with the client's own start-up instead of delaying the first tasks. The local cluster
(:func:`image3_dask.pipeline.cluster.connect`) preloads it; for a cluster started by hand::

    dask worker tcp://scheduler:8786 --preload image3_dask.pipeline.worker_setup
"""

from __future__ import annotations

import logging
import time
import warnings

log = logging.getLogger("image3_dask")


def warm_up() -> float:
    """Import and initialise what the tasks use; return the seconds it took."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import asdf  # noqa: F401
        import drizzle.resample  # noqa: F401
        import gwcs  # noqa: F401
        import photutils.background  # noqa: F401
        import photutils.detection  # noqa: F401
        import photutils.segmentation  # noqa: F401
        import scipy.ndimage  # noqa: F401
        import tweakwcs  # noqa: F401
        from stdatamodels.jwst import datamodels

        import image3_dask.graph.catalog  # noqa: F401
        import image3_dask.graph.outlier  # noqa: F401
        import image3_dask.graph.resample  # noqa: F401
        import image3_dask.graph.skymatch  # noqa: F401
        import image3_dask.graph.tweakreg  # noqa: F401

        # builds the ImageModel schema (the slow part of the first datamodels.open)
        model = datamodels.ImageModel((2, 2))
        model.validate()
        model.close()
    return time.perf_counter() - t0


def dask_setup(worker=None) -> None:  # noqa: ARG001 - the preload protocol passes the worker
    """Called by Dask when the worker starts (``--preload image3_dask.pipeline.worker_setup``)."""
    try:
        log.debug("image3-dask worker warm-up took %.1f s", warm_up())
    except Exception as exc:  # a failed warm-up only costs the time it saves
        log.warning("image3-dask worker warm-up failed: %s", exc)

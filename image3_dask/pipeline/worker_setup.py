"""Worker preload: malloc thresholds, and the heavy imports and datamodel schemas at worker start.

A fresh worker process spends 2-4 s on the first exposure it opens (importing stdatamodels,
gwcs, asdf and their extensions, loading the ImageModel schemas); done at start, this overlaps
with the client's own start-up instead of delaying the first tasks. The local cluster
(:func:`image3_dask.pipeline.cluster.connect`) preloads it; for a cluster started by hand::

    dask worker tcp://scheduler:8786 --preload image3_dask.pipeline.worker_setup
"""

from __future__ import annotations

import logging
import os
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


def tune_malloc(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 64 * 2**20) -> bool:
    """Let glibc's malloc keep array-sized blocks instead of mapping and unmapping each one.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any malloc
    tunable switches off glibc's sliding mmap threshold, so every allocation above 128 kB
    (every image-sized numpy temporary) becomes its own ``mmap``: the kernel zero-fills it
    page by page on first touch and unmaps it on free. On the 16-exposure MIRI mosaic that
    was about a third of the workers' CPU time, spent in the kernel. This sets the two
    thresholds to the values glibc's sliding threshold reaches by itself (32 MiB blocks are
    still mapped; free memory above 64 MiB at the top of the heap is returned to the OS).

    Returns
    -------
    bool
        True when ``mallopt`` was called (glibc), False elsewhere.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold)
    )


def dask_setup(worker=None) -> None:  # noqa: ARG001 - the preload protocol passes the worker
    """Called by Dask when the worker starts (``--preload image3_dask.pipeline.worker_setup``)."""
    # IMAGE3_DASK_MALLOC=dask keeps the nanny's malloc settings (to compare, or if it matters)
    if os.environ.get("IMAGE3_DASK_MALLOC", "") != "dask":
        log.debug("malloc thresholds set: %s", tune_malloc())
    try:
        log.debug("image3-dask worker warm-up took %.1f s", warm_up())
    except Exception as exc:  # a failed warm-up only costs the time it saves
        log.warning("image3-dask worker warm-up failed: %s", exc)

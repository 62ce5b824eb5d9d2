"""Worker preload: malloc thresholds, and the heavy imports and datamodel schemas at worker start.

A fresh worker process spends 2-4 s on the first exposure it opens (importing stdatamodels,
gwcs, asdf and their extensions, loading the ImageModel schemas); done at start, this overlaps
with the client's own start-up instead of delaying the first tasks. The local cluster
(:func:`image3_dask.pipeline.cluster.connect`) preloads it; for a cluster started by hand::

    dask worker tcp://scheduler:8786 --preload image3_dask.pipeline.worker_setup
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings

from distributed.diagnostics.plugin import WorkerPlugin

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


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library already loaded in this process, when it is glibc (else None).

    ``dlopen(NULL)`` rather than ``ctypes.util.find_library``, which runs ``ldconfig`` in a
    subprocess: a worker starting must not fork children of its own.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - glibc has both; musl and macOS have no malloc_trim
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 64 * 2**20) -> bool:
    """Let glibc's malloc keep array-sized blocks instead of mapping and unmapping each one.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any malloc
    tunable switches off glibc's sliding mmap threshold, so every allocation above 128 kB
    (every image-sized numpy temporary) becomes its own ``mmap``: the kernel zero-fills it
    page by page on first touch and unmaps it on free. On the 16-exposure MIRI mosaic that
    was about a third of the workers' CPU time, spent in the kernel. This sets the two
    thresholds to the values glibc's sliding threshold reaches by itself; what a task leaves
    free in the heap is given back to the system when it ends (:class:`TrimAfterTask`).

    Returns
    -------
    bool
        True when ``mallopt`` was called (glibc), False elsewhere.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        libc.mallopt(m_trim_threshold, trim_threshold)
    )


#: Without a memory limit, heap memory above this is given back after a task.
UNLIMITED_TRIM_BYTES = 4 * 2**30


class TrimAfterTask(WorkerPlugin):
    """Worker plugin: ``malloc_trim(0)`` when a task ends and the worker holds too much.

    With :func:`tune_malloc`'s thresholds a task reuses the heap for its temporaries, and the
    heap keeps the high-water mark of the largest task. Dask counts that as the worker's
    memory and pauses a worker above 80 % of its limit, never to resume it while nothing
    frees memory (a one-worker NIRCam run stopped so). When a task ends and the process
    holds more than the worker's memory target (``distributed.worker.memory.target``, 60 %
    of the limit by default), the free heap memory is given back. Trimming after every task
    would fault each task's pages in anew: 3 CPU-seconds more on the 16-exposure MIRI mosaic.
    """

    name = "image3-dask-trim"

    def __init__(self) -> None:
        self._limit: float = UNLIMITED_TRIM_BYTES
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def setup(self, worker=None) -> None:
        """Read the worker's memory limit and target fraction."""
        import dask

        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        target = dask.config.get("distributed.worker.memory.target", 0.6) or 0.6
        if limit:
            self._limit = float(limit) * float(target)

    def teardown(self, worker=None) -> None:  # noqa: ARG002
        """Nothing to undo."""

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def transition(self, key, start: str, finish: str, **kwargs) -> None:  # noqa: ARG002
        """When a task leaves the ``executing`` state (done or failed), trim if needed."""
        libc = _glibc()
        if start == "executing" and libc is not None and self._rss() > self._limit:
            libc.malloc_trim(0)


def dask_setup(worker=None):
    """Called by Dask when the worker starts (``--preload image3_dask.pipeline.worker_setup``).

    Returns the coroutine that adds :class:`TrimAfterTask` (Dask awaits it) when malloc was
    tuned.
    """
    # IMAGE3_DASK_MALLOC=dask keeps the nanny's malloc settings (to compare, or if it matters)
    tuned = os.environ.get("IMAGE3_DASK_MALLOC", "") != "dask" and tune_malloc()
    log.debug("malloc thresholds set: %s", tuned)
    try:
        log.debug("image3-dask worker warm-up took %.1f s", warm_up())
    except Exception as exc:  # a failed warm-up only costs the time it saves
        log.warning("image3-dask worker warm-up failed: %s", exc)
    if tuned and worker is not None and hasattr(worker, "plugin_add"):
        return worker.plugin_add(TrimAfterTask(), name=TrimAfterTask.name)
    return None

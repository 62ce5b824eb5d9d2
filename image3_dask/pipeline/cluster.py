"""Where the graph runs: a local multiprocess cluster (default) or an existing Dask scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from image3_dask.errors import Image3Error

log = logging.getLogger(__name__)

__all__ = ["ClusterError", "connect", "default_workers"]


class ClusterError(Image3Error):
    """The scheduler cannot be reached or the cluster cannot be started."""


def default_workers() -> int:
    """One worker process per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = "auto",
    dashboard_address: str = "127.0.0.1:8787",
    security=None,
    timeout: float = 20.0,
    client=None,
) -> Iterator:
    """Yield a :class:`distributed.Client` for the run.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port`` or ``tls://...``). A local cluster
        of worker processes with one thread each is started when omitted: the drizzle kernel
        holds the GIL, so threads would not run it in parallel.
    n_workers : int, optional
        Local worker processes (default: one per core).
    memory_limit : str or int, optional
        Memory limit per local worker (``"2GB"``, bytes, or ``"auto"``).
    dashboard_address : str
        Where the local dashboard listens; localhost unless told otherwise.
    security : distributed.Security, optional
        TLS settings for a ``tls://`` scheduler.
    timeout : float
        Seconds to wait for a remote scheduler.
    client : distributed.Client, optional
        An existing client to use as is (it is not closed).
    """
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    if scheduler:
        try:
            c = Client(scheduler, timeout=timeout, security=security)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = n_workers or default_workers()
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit if memory_limit is not None else "auto",
        dashboard_address=dashboard_address,
        silence_logs=logging.ERROR,
    )
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()

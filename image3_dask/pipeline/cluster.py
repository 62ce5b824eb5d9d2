"""Where the graph runs: a local cluster (default), a running Dask scheduler, or Slurm jobs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image3_dask.errors import Image3Error

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_KINDS",
    "ClusterError",
    "check_memory_limit",
    "connect",
    "default_workers",
    "load_jobqueue_config",
    "make_slurm_cluster",
]

#: Values of ``--cluster``.
CLUSTER_KINDS = ("local", "slurm")


class ClusterError(Image3Error):
    """The scheduler cannot be reached or the cluster cannot be started."""


#: Module every local worker preloads (imports and schema warm-up at start).
WORKER_PRELOAD = "image3_dask.pipeline.worker_setup"


#: Smallest memory limit per local worker: a worker needs about this much to import its modules.
MIN_WORKER_MEMORY = 256 * 2**20


def check_memory_limit(memory_limit: str | int | float | None, n_workers: int | None = None):
    """The bytes per local worker of ``--memory-limit`` (``None``: no limit), checked.

    Accepted as Dask does: ``"auto"`` (the machine's memory shared by the workers), a size
    (``"4GB"``, ``"512MiB"``, a number of bytes), a fraction of the machine's memory
    (``0.5``), or ``0`` for no limit.

    Raises
    ------
    ClusterError
        When the value is not understood, is negative, or leaves a worker less than
        :data:`MIN_WORKER_MEMORY`; the message names ``--memory-limit``.
    """
    from distributed.worker_memory import parse_memory_limit

    value = "auto" if memory_limit is None else memory_limit
    text = str(value).strip()
    hint = "give e.g. 4GB, 512MiB, a fraction of the machine's memory such as 0.5, auto, or 0"
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number != number:
        raise ClusterError(f"--memory-limit {text}: not a number; {hint}")
    if text.startswith("-"):
        raise ClusterError(f"--memory-limit {text}: a memory limit cannot be negative; {hint}")
    quiet = logging.getLogger("image3_dask.memory_limit")
    quiet.disabled = True  # dask's "Ignoring provided memory limit" is logged when it starts
    try:
        limit = parse_memory_limit(
            value, 1, total_cores=n_workers or default_workers(), logger=quiet
        )
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"--memory-limit {text}: not understood ({exc}); {hint}") from None
    if limit is not None and limit < MIN_WORKER_MEMORY:
        raise ClusterError(
            f"--memory-limit {text}: {limit} bytes per worker is too little (at least "
            f"{MIN_WORKER_MEMORY // 2**20} MiB); {hint}"
        )
    return limit


def default_workers() -> int:
    """One worker process per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def load_jobqueue_config(path: str | os.PathLike, kind: str = "slurm") -> dict[str, Any]:
    """Read a dask-jobqueue configuration file and return the settings of one scheduler kind.

    Parameters
    ----------
    path : path-like
        YAML file in dask-jobqueue's format (``jobqueue: {slurm: {cores: ..., ...}}``), as in
        ``deploy/slurm/jobqueue.yaml``; a flat mapping of the ``slurm`` settings is accepted too.
    kind : str
        Section to read (``slurm``).

    Returns
    -------
    dict
        Settings with dask's dashed key names (``job-extra-directives``...).

    Raises
    ------
    ClusterError
        When the file is missing, is not YAML, or holds an unknown setting.
    """
    import dask
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{p}: jobqueue configuration file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"{p}: not a readable YAML file ({exc})") from None
    if not isinstance(raw, dict):
        raise ClusterError(f"{p}: expected a mapping with a 'jobqueue: {kind}:' section")
    section = raw.get("jobqueue", {}).get(kind) if "jobqueue" in raw else raw
    if not isinstance(section, dict):
        raise ClusterError(f"{p}: no 'jobqueue: {kind}:' section")
    known = set(dask.config.get(f"jobqueue.{kind}", {}))
    out = {}
    for key, value in section.items():
        name = str(key).replace("_", "-")
        if known and name not in known:
            raise ClusterError(
                f"{p}: unknown jobqueue.{kind} setting {key!r}; valid: {', '.join(sorted(known))}"
            )
        out[name] = value
    return out


def make_slurm_cluster(
    config_file: str | os.PathLike | None = None,
    *,
    dashboard_address: str | None = "127.0.0.1:8787",
    security=None,
    **overrides: Any,
):
    """Build (without submitting any job) a :class:`dask_jobqueue.SLURMCluster`.

    Parameters
    ----------
    config_file : path-like, optional
        dask-jobqueue YAML (``deploy/slurm/jobqueue.yaml``); dask's own configuration
        (``~/.config/dask/jobqueue.yaml``) is used when omitted.
    dashboard_address : str, optional
        Where the scheduler's dashboard listens (on the node running image3-dask).
    security : distributed.Security, optional
        TLS for the scheduler and the workers (the job script passes the certificates on).
    **overrides
        SLURMCluster keyword arguments that win over the file (``cores=``, ``queue=``...).

    Returns
    -------
    dask_jobqueue.SLURMCluster
        Call ``cluster.job_script()`` to see the batch script, ``cluster.scale(jobs=n)`` to
        submit.

    Raises
    ------
    ClusterError
        When dask-jobqueue is not installed or the configuration is invalid.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError(
            "--cluster slurm needs dask-jobqueue: pip install 'image3-dask[cluster]'"
        ) from None
    settings = load_jobqueue_config(config_file) if config_file else {}
    # Passed as keyword arguments (dask-jobqueue reads its config lazily, when a job is made).
    kwargs = {
        k.replace("-", "_"): v
        for k, v in settings.items()
        if v is not None and k != "scheduler-options"
    }
    kwargs.update(overrides)
    sched_opts = dict(
        kwargs.pop("scheduler_options", None) or settings.get("scheduler-options") or {}
    )
    if dashboard_address is not None:
        sched_opts.setdefault("dashboard_address", dashboard_address)
    if security is not None:
        kwargs["security"] = security
        kwargs.setdefault("protocol", "tls://")
    where = f" ({config_file})" if config_file else ""
    try:
        cluster = SLURMCluster(scheduler_options=sched_opts, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"cannot configure the Slurm cluster{where}: {exc}") from None
    try:
        cluster.job_script()  # settings are checked here, before any job is submitted
    except (TypeError, ValueError) as exc:
        cluster.scale = lambda *a, **k: None  # nothing to scale down when closing
        cluster.close()
        msg = " ".join(str(exc).split())
        raise ClusterError(f"cannot configure the Slurm cluster{where}: {msg}") from None
    return cluster


def _client(address_or_file: str, timeout: float, security, scheduler_file: bool = False):
    from distributed import Client

    what = "scheduler file" if scheduler_file else "Dask scheduler at"
    if scheduler_file and not Path(address_or_file).is_file():
        raise ClusterError(f"{address_or_file}: scheduler file not found")
    if not scheduler_file and address_or_file.startswith("tls://") and security is None:
        raise ClusterError(
            f"{address_or_file} is a TLS address: give --tls-ca-file, --tls-cert and --tls-key"
        )
    if not scheduler_file and security is not None and getattr(security, "require_encryption", 0):
        if not address_or_file.startswith("tls://"):
            raise ClusterError(
                f"TLS certificates were given but {address_or_file} is not a tls:// address"
            )
    kw = {"scheduler_file": address_or_file} if scheduler_file else {"address": address_or_file}
    try:
        return Client(**kw, timeout=timeout, security=security)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the {what} {address_or_file}: {msg}") from None


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = "auto",
    dashboard_address: str = "127.0.0.1:8787",
    security=None,
    timeout: float = 20.0,
    client=None,
    *,
    cluster: str = "local",
    scheduler_file: str | os.PathLike | None = None,
    jobqueue_config: str | os.PathLike | None = None,
    jobs: int | None = None,
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
        TLS settings for a ``tls://`` scheduler (or for the Slurm cluster).
    timeout : float
        Seconds to wait for a remote scheduler.
    client : distributed.Client, optional
        An existing client to use as is (it is not closed).
    cluster : {"local", "slurm"}
        Kind of cluster to start when neither ``scheduler`` nor ``scheduler_file`` is given.
    scheduler_file : path-like, optional
        JSON file written by ``dask scheduler --scheduler-file`` (instead of ``scheduler``).
    jobqueue_config : path-like, optional
        dask-jobqueue YAML for ``cluster="slurm"``.
    jobs : int, optional
        Slurm jobs to submit (default 1).

    Raises
    ------
    ClusterError
        When the scheduler cannot be reached or the cluster cannot be started; the message
        names the address.
    """
    from distributed import Client

    if client is not None:
        yield client
        return
    if scheduler and scheduler_file:
        raise ClusterError("give either --scheduler or --scheduler-file, not both")
    if scheduler or scheduler_file:
        c = _client(
            str(scheduler or scheduler_file), timeout, security, scheduler_file=bool(scheduler_file)
        )
        try:
            yield c
        finally:
            c.close()
        return
    if cluster not in CLUSTER_KINDS:
        raise ClusterError(f"unknown cluster kind {cluster!r}; valid: {', '.join(CLUSTER_KINDS)}")
    if cluster == "slurm":
        if shutil.which("sbatch") is None:
            raise ClusterError(
                "--cluster slurm submits worker jobs with sbatch, which is not on PATH: "
                "run image3-dask on a Slurm login node"
            )
        slurm = make_slurm_cluster(
            jobqueue_config, dashboard_address=dashboard_address, security=security
        )
        try:
            slurm.scale(jobs=jobs or 1)
            log.info("submitted %d Slurm job(s); tasks start as workers join", jobs or 1)
            c = Client(slurm, security=security)
            try:
                yield c
            finally:
                c.close()
        finally:
            slurm.close()
        return
    from image3_dask.pipeline.local_cluster import start_local_cluster

    t0 = time.perf_counter()
    local = start_local_cluster(n_workers, memory_limit, dashboard_address, security)
    try:
        c = Client(local, security=security)
        try:
            local.wait_until_ready(c)
            log.info("Local cluster ready in %.1f s", time.perf_counter() - t0)
            yield c
        finally:
            c.close()
    finally:
        local.close()

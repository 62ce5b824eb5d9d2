"""The local cluster: a scheduler in this process, each worker a ``dask worker`` program.

Dask's ``LocalCluster`` starts its workers with :mod:`multiprocessing` ("spawn"), whose children
re-run the caller's ``__main__`` module: a plain script without an ``if __name__ ==
"__main__":`` guard would start the pipeline again in every worker (``Nanny failed to start``),
and a script read from standard input (``python -``) cannot be re-run at all. Here each worker
is started as its own program, ``python -m distributed.cli.dask_worker`` (with its nanny, one
thread, the memory limit and the :mod:`image3_dask.pipeline.worker_setup` preload), so it never
sees the caller's ``__main__``; scripts, ``python -c``, notebooks and programs already using
:mod:`multiprocessing` all work. The scheduler and its dashboard run in this process, as with
``LocalCluster``.

Each worker program runs in its own session, so Ctrl-C in the terminal (SIGINT to the
foreground process group) reaches only the caller, which stops the workers itself: SIGTERM to
each worker's nanny, SIGKILL to the worker's process group when it does not exit in time. That
also holds when the interrupt comes while the cluster is still starting (the workers spawned so
far are stopped, none is spawned after) and, as a last resort, at the caller's exit
(:func:`stop_worker_programs`): no worker outlives the caller to print its tracebacks later.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from image3_dask.pipeline.cluster import WORKER_PRELOAD, ClusterError, default_workers

log = logging.getLogger("image3_dask")

__all__ = [
    "LocalProcessCluster",
    "WorkerProcess",
    "start_local_cluster",
    "stop_worker_programs",
    "worker_command",
]

#: Seconds a worker waits for a scheduler that has gone before it exits.
DEATH_TIMEOUT = 60
#: Seconds a worker's nanny gets to exit after SIGTERM before its process group is killed.
STOP_GRACE = 5.0

#: Process group ids (= pids: each worker is a session leader) of the worker programs started
#: by this process and not yet seen to exit.
_RUNNING: set[int] = set()
#: Set when a start was interrupted: a worker the start spawns after that is not started.
_ABANDONED = threading.Event()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_worker_programs(grace: float = STOP_GRACE) -> None:
    """Stop every worker program this process started that still runs (and its children).

    SIGTERM to each worker's process group, then SIGKILL to those still there after
    ``grace`` seconds. Called when a cluster's start is interrupted and at exit; a cluster
    closed normally has stopped its workers already.
    """
    groups = [g for g in list(_RUNNING) if _group_alive(g)]
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = [g for g in groups if _group_alive(g)]
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    _RUNNING.clear()


atexit.register(stop_worker_programs, 2.0)


def _register_spawned(spawn: asyncio.Future) -> None:
    """Record a spawned worker program in :data:`_RUNNING` (a done callback of its spawn)."""
    if not spawn.cancelled() and spawn.exception() is None:
        _RUNNING.add(spawn.result().pid)


def worker_command(
    scheduler: str, name: str, memory_limit: int | None, tls: dict[str, str] | None = None
) -> list[str]:
    """The command line of one local worker (a nanny and its single-threaded worker)."""
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler]
    cmd += ["--name", str(name), "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
    cmd += ["--dashboard-address", "127.0.0.1:0"]  # its HTTP server (/health...): else 0.0.0.0
    cmd += ["--memory-limit", str(memory_limit or 0), "--nanny"]
    cmd += ["--death-timeout", str(DEATH_TIMEOUT), "--preload", WORKER_PRELOAD]
    for option, path in (tls or {}).items():
        cmd += [f"--{option}", path]
    return cmd


def _worker_env() -> dict[str, str]:
    """The environment of the workers: ours, with this image3_dask importable and quiet logs."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    # Worker-side messages below ERROR are not for users (as LocalCluster's silence_logs).
    env.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spec_base():
    from distributed.deploy.spec import ProcessInterface

    return ProcessInterface


class WorkerProcess(_spec_base()):
    """One local worker, started as its own ``dask worker`` process.

    Parameters
    ----------
    scheduler : str
        Address of the scheduler.
    name : str or int
        Worker name (as LocalCluster names them: 0, 1, ...).
    memory_limit : int, optional
        Bytes per worker (``None``: no limit).
    tls : dict, optional
        ``{"tls-ca-file": path, "tls-cert": path, "tls-key": path}`` for a ``tls://`` scheduler.
    """

    def __init__(self, scheduler: str, name, memory_limit: int | None = None, tls=None):
        self.scheduler = scheduler
        self.command = worker_command(scheduler, name, memory_limit, tls)
        self.process: asyncio.subprocess.Process | None = None
        super().__init__(scheduler=scheduler, name=name)

    async def start(self) -> None:
        if _ABANDONED.is_set():  # the caller was interrupted while the cluster started
            raise ClusterError("the local cluster's start was interrupted")
        # Its own session: Ctrl-C in the terminal reaches only the caller, which stops the
        # workers (the workers' own SIGINT tracebacks are not for users).
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self.command,
                stdin=subprocess.DEVNULL,
                env=_worker_env(),
                start_new_session=True,
            )
        )
        # the program is registered as soon as it exists, even when this start is cancelled
        # (an interrupted cluster start closes it) while the spawn is under way: it would
        # otherwise be left running, to print its "Nanny failed to start" 30 s later
        spawn.add_done_callback(_register_spawned)
        try:
            self.process = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            proc = await spawn
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        if _ABANDONED.is_set():  # interrupted while it was being spawned: the cluster closes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await super().start()  # the cluster's close then finds it stopped

    @property
    def returncode(self) -> int | None:
        """The exit code of the worker program, ``None`` while it runs."""
        return None if self.process is None else self.process.returncode

    async def close(self) -> None:
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.terminate()  # the nanny closes its worker and exits
            try:
                await asyncio.wait_for(proc.wait(), timeout=STOP_GRACE)
            except TimeoutError:
                # e.g. a nanny still connecting to the scheduler that has gone: it would
                # print its traceback when that times out
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a worker the nanny left behind
            _RUNNING.discard(proc.pid)
        await super().close()


def _spec_cluster():
    from distributed import SpecCluster

    return SpecCluster


class LocalProcessCluster(_spec_cluster()):
    """A :class:`distributed.SpecCluster` whose workers are :class:`WorkerProcess` programs."""

    n_expected: int = 0

    async def _close(self) -> None:
        # Ctrl-C while the cluster starts cancels Dask's task that starts the workers after
        # it created them but before it listed them in ``self.workers``; SpecCluster closes
        # only those listed, then requires every worker it created to be closed (the
        # "AssertionError: Status.created" traceback at exit). Those left out are closed here,
        # once a start under way (which holds the worker's lock) has ended.
        from distributed.core import Status

        listed = {id(w) for w in self.workers.values()}
        for w in [w for w in list(self._created) if id(w) not in listed]:
            async with w.lock:
                pass
            if w.status not in (Status.closing, Status.closed, Status.failed):
                await w.close()
        await super()._close()

    def wait_until_ready(self, client, timeout: float = 120.0) -> float:
        """Wait until every worker has joined; return the seconds it took.

        Raises
        ------
        ClusterError
            When a worker program exits before joining, or they do not all join in
            ``timeout`` seconds.
        """
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while True:
            try:
                client.wait_for_workers(self.n_expected, timeout=0.5)
                return time.perf_counter() - t0
            except TimeoutError:
                pass
            dead = {
                name: w.returncode
                for name, w in self.workers.items()
                if isinstance(w, WorkerProcess) and w.returncode is not None
            }
            if dead:
                name, code = next(iter(dead.items()))
                raise ClusterError(
                    f"local worker {name} exited with code {code} while starting "
                    f"(its messages are above); command: {' '.join(self.workers[name].command)}"
                )
            if time.perf_counter() > deadline:
                joined = len(client.scheduler_info(n_workers=-1)["workers"])
                raise ClusterError(
                    f"only {joined} of {self.n_expected} local workers joined in {timeout:.0f} s"
                )


def _tls_files(security) -> tuple[object, dict[str, str] | None]:
    """The scheduler's Security and the workers' ``--tls-*`` options for ``security``."""
    if security is None or not getattr(security, "require_encryption", False):
        return security, None
    from distributed import Security

    ca, cert, key = security.tls_ca_file, security.tls_client_cert, security.tls_client_key
    if not (ca and cert and Path(str(ca)).is_file() and Path(str(cert)).is_file()):
        raise ClusterError("a local TLS cluster needs the certificates as files (--tls-*)")
    files = {"tls-ca-file": str(ca), "tls-cert": str(cert)}
    if key:
        files["tls-key"] = str(key)
    sched = Security(
        tls_ca_file=ca,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    return sched, files


def start_local_cluster(
    n_workers: int | None = None,
    memory_limit: str | int | None = "auto",
    dashboard_address: str | None = "127.0.0.1:8787",
    security=None,
) -> LocalProcessCluster:
    """Start the scheduler here and ``n_workers`` worker programs; return without waiting.

    Call :meth:`LocalProcessCluster.wait_until_ready` with a client to wait for them. A busy
    dashboard port is one log line (the dashboard moves to a free port), not Dask's warning.

    Raises
    ------
    ClusterError
        When the memory limit is not understood or the scheduler cannot start.
    """
    from distributed import Scheduler
    from distributed.worker_memory import parse_memory_limit

    n = n_workers or default_workers()
    try:
        limit = parse_memory_limit(
            memory_limit if memory_limit is not None else "auto", 1, total_cores=n, logger=log
        )
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"memory limit {memory_limit!r} not understood: {exc}") from None
    each = f"{limit / 2**30:.1f} GiB each" if limit else "no memory limit"
    log.info(
        "Starting a local Dask cluster: %d worker process%s (1 thread, %s)...",
        n,
        "es" if n != 1 else "",
        each,
    )
    sched_security, tls = _tls_files(security)
    _ABANDONED.clear()
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": "127.0.0.1",
            "port": 0,
            "protocol": "tls://" if tls else "tcp://",
            "security": sched_security,
            "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address,
        },
    }
    worker = {"cls": WorkerProcess, "options": {"memory_limit": limit, "tls": tls}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cluster = LocalProcessCluster(
                scheduler=scheduler,
                workers={i: worker for i in range(n)},
                worker=worker,
                name="image3-dask-local",
                silence_logs=logging.ERROR,
                security=sched_security,
            )
        except OSError as exc:
            stop_worker_programs()
            raise ClusterError(f"cannot start the local scheduler: {exc}") from None
        except BaseException:  # Ctrl-C while starting: no cluster object to close
            _ABANDONED.set()
            stop_worker_programs()
            raise
    cluster.n_expected = n
    for w in caught:
        text = str(w.message)
        if "already in use" in text:
            port = text.split()[1]
            log.warning(
                "Dashboard port %s is in use (another Dask cluster?); the dashboard moves to "
                "another port (see the dashboard line below)",
                port,
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cluster

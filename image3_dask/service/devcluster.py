"""A scheduler and workers started as separate processes on this machine, as a user would.

``ProcessCluster`` runs the ``dask scheduler`` and ``dask worker`` commands, so that tests and a
quick try-out exercise the same path as a real deployment: separate processes, a scheduler file,
optional TLS, workers that can be killed and restarted by their nanny.

Everything listens on the loopback interface only (:data:`LOOPBACK_ARGS`): Dask's defaults bind
the scheduler's HTTP server (``/health``, ``/metrics``, and the dashboard when there is one) to
``0.0.0.0:8787`` and each worker's to ``0.0.0.0`` even with ``--no-dashboard``, so the addresses
are given explicitly; there is no dashboard (the HTTP server that Dask always starts answers
only ``/health``-like routes, on a free loopback port).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from image3_dask.pipeline.cluster import ClusterError

__all__ = ["LOOPBACK_ARGS", "ProcessCluster"]

#: Options that keep each program's listening sockets on 127.0.0.1 (random free ports).
LOOPBACK_ARGS = {
    "scheduler": ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
    "worker": ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
}


def _dask_command() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dask")
    if found:
        return [found]
    return [sys.executable, "-m", "dask"]


class ProcessCluster:
    """``dask scheduler`` plus ``dask worker`` processes listening on 127.0.0.1 only.

    Parameters
    ----------
    folder : path-like
        Where the scheduler file and the processes' logs go.
    n_workers : int
        Worker processes started by :meth:`start`.
    nthreads : int
        Threads per worker.
    memory_limit : str
        Memory limit per worker.
    nanny : bool
        Start each worker under a nanny, which restarts it when it dies.
    tls : dict, optional
        ``{"ca": path, "cert": path, "key": path}``: a ``tls://`` scheduler and workers.
    resources : str, optional
        ``--resources`` of the workers (``"image3-driver=1"``).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        n_workers: int = 1,
        nthreads: int = 1,
        memory_limit: str = "2GB",
        nanny: bool = True,
        tls: dict | None = None,
        resources: str | None = None,
    ):
        self.folder = Path(folder)
        self.n_workers = n_workers
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.nanny = nanny
        self.tls = tls
        self.resources = resources
        self.scheduler_file = self.folder / "scheduler.json"
        self.address: str | None = None
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return [
            "--tls-ca-file",
            str(self.tls["ca"]),
            "--tls-cert",
            str(self.tls["cert"]),
            "--tls-key",
            str(self.tls["key"]),
        ]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.folder.mkdir(parents=True, exist_ok=True)
        logf = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(logf)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            _dask_command() + args, stdout=logf, stderr=subprocess.STDOUT, env=env
        )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> ProcessCluster:
        """Start the scheduler and the workers; return when all workers have joined."""
        self.scheduler_file.unlink(missing_ok=True)
        args = ["scheduler", *LOOPBACK_ARGS["scheduler"], "--port", "0"]
        args += ["--scheduler-file", str(self.scheduler_file)]
        if self.tls:
            args += ["--protocol", "tls", *self._tls_args()]
        sched = self._spawn("scheduler", args)
        t0 = time.monotonic()
        while not self.scheduler_file.is_file():
            if sched.poll() is not None or time.monotonic() - t0 > timeout:
                self.close()
                raise ClusterError(f"the scheduler did not start; see {self.folder}/scheduler.log")
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written in one go, but be safe with a slow disk
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        for _ in range(self.n_workers):
            self.add_worker()
        self.wait_for_workers(self.n_workers, timeout=timeout)
        return self

    def add_worker(self) -> subprocess.Popen:
        """Start one more ``dask worker`` process (with its nanny unless ``nanny=False``)."""
        n = sum(1 for p in self.folder.glob("worker-*.log"))
        args = [
            "worker",
            "--scheduler-file",
            str(self.scheduler_file),
            *LOOPBACK_ARGS["worker"],
            "--nthreads",
            str(self.nthreads),
            "--memory-limit",
            self.memory_limit,
            "--nanny" if self.nanny else "--no-nanny",
            "--death-timeout",
            "60",
            "--local-directory",
            str(self.folder / f"worker-space-{n}"),
            "--preload",
            "image3_dask.pipeline.worker_setup",
            *self._tls_args(),
        ]
        if self.resources:
            args += ["--resources", self.resources]
        return self._spawn(f"worker-{n}", args)

    def client(self, timeout: float = 30.0):
        """A new :class:`distributed.Client` of the scheduler (close it when done)."""
        from distributed import Client

        from image3_dask.service.security import security_from_files

        sec = (
            security_from_files(self.tls["ca"], self.tls["cert"], self.tls["key"])
            if self.tls
            else None
        )
        return Client(self.address, timeout=timeout, security=sec)

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` workers are connected."""
        with self.client() as c:
            c.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the worker process (not of its nanny)."""
        with self.client() as c:
            return {addr: int(pid) for addr, pid in c.run(os.getpid).items()}

    def close(self) -> None:
        """Stop the workers, then the scheduler (by pid), and wait for them."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for f in self._logs:
            f.close()
        self.procs.clear()
        self._logs.clear()

    def __enter__(self) -> ProcessCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

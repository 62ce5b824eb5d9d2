"""Lock files in the output folder: two runs never write (or read) the same file at once.

A run locks its product (``.<product>.image3-dask.lock``) and every per-exposure file it writes
there that another run could also write (the ``_crf`` files: their names come from the exposure
and the association id, not the product). Each lock file holds ``<host> <pid> <product>``; the
lock of a run that died on this host is taken over, that of a live run (or of another host) is
an error naming both.

On an object store the lock objects are created by a conditional write (S3's ``If-None-Match:
*``, :func:`image3_dask.io.storage.create_exclusive`): of two runs creating the same lock, the
store lets exactly one succeed. Stores without conditional writes get check-then-write.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from image3_dask.errors import Image3Error
from image3_dask.io.storage import Location, RemotePath, create_exclusive, location

__all__ = ["OutputLock", "OutputLockedError", "check_free", "lock_path", "pid_alive", "release_locks_of"]

#: Lock files are plain files readable by everyone (they name the holder; they hold no secret).
LOCK_MODE = 0o644


class OutputLockedError(Image3Error):
    """Another run is writing the same product (or one of the same files) in the same folder."""


def lock_path(output_dir: Location, name: str) -> Location:
    """The lock file of ``name`` (a product root or a file name) in ``output_dir``."""
    return output_dir / f".{name}.image3-dask.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a lock held by a dead run may be taken over)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Hold the lock files of a product and of the per-exposure files a run writes.

    Parameters
    ----------
    output_dir : Path or RemotePath
        The output folder (local, or on an object store).
    product : str
        The product root name (``<product>_i2d.fits``, ...).
    files : iterable of str
        Names of other files the run writes in ``output_dir`` and another run may write too
        (``<exposure>_<asn_id>_crf.fits``).

    Raises
    ------
    OutputLockedError
        On entering, when a live run holds the product or one of the files. Nothing is left
        locked then.
    """

    def __init__(self, output_dir: Location | str, product: str, files: Iterable[str] = ()):
        self.output_dir = location(output_dir)
        self.product = product
        self.names = [product, *sorted(set(files))]
        self._held: list[Location] = []

    def __enter__(self) -> OutputLock:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.names:
                self._take(name, what="product" if name == self.product else "file")
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock files this object holds."""
        while self._held:
            self._held.pop().unlink(missing_ok=True)

    def _take(self, name: str, what: str) -> None:
        path = lock_path(self.output_dir, name)
        me = f"{socket.gethostname()} {os.getpid()} {self.product}"
        for _ in range(2):
            try:
                if isinstance(path, RemotePath):
                    if not create_exclusive(path, me):
                        raise FileExistsError(str(path))
                    self._held.append(path)
                    return
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, LOCK_MODE)
            except FileExistsError:
                holder = _holder(path)
                if holder.stale:
                    path.unlink(missing_ok=True)  # stale lock of a dead run on this host
                    continue
                raise holder.refusal(self.output_dir, path, what, name, self.product) from None
            os.fchmod(fd, LOCK_MODE)  # whatever the umask
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self._held.append(path)
            return
        raise OutputLockedError(f"cannot lock {path}")


def check_free(output_dir: Location, product: str) -> None:
    """Raise :class:`OutputLockedError` when a live run holds ``product`` in ``output_dir``.

    For a client about to hand a run to a cluster: the run itself takes the lock.
    """
    path = lock_path(output_dir, product)
    if not path.exists():
        return
    holder = _holder(path) if path.is_file() else _Holder("", "", "")
    if not holder.stale:
        raise holder.refusal(output_dir, path, "product", product, product)


def release_locks_of(output_dir: Location, host: str, pid: int | str) -> list[Location]:
    """Remove the lock files in ``output_dir`` held by process ``pid`` of ``host``.

    For a process known to be dead on another host (a job's driver on a worker that died),
    which :class:`OutputLock` cannot take over by itself. Returns the removed files.
    """
    removed = []
    for path in location(output_dir).glob(".*.image3-dask.lock"):
        holder = _holder(path)
        if (holder.host, holder.pid) == (str(host), str(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass(frozen=True)
class _Holder:
    """Who holds a lock file: ``<host> <pid> <product>`` as :class:`OutputLock` writes it."""

    host: str
    pid: str
    product: str

    @property
    def stale(self) -> bool:
        """Held by a process of this host that is no longer alive (the lock may be taken)."""
        return self.host == socket.gethostname() and self.pid.isdigit() and not pid_alive(
            int(self.pid)
        )

    def refusal(
        self, output_dir: Location, path: Location, what: str, name: str, product: str
    ) -> OutputLockedError:
        """The error for a run of ``product`` that wants ``name`` (a ``what``) held here."""
        run = f"{self.host} {self.pid}".strip() or "unknown"
        if self.product and self.product != product:
            run += f", product {self.product}"
        return OutputLockedError(
            f"{output_dir}: another run ({run}) is writing {what} {name} here; wait for it to "
            f"finish or use another --output-dir (remove {path} if that run is dead)"
        )


def _holder(path: Location) -> _Holder:
    return _Holder(*(_read(path).split(" ", 2) + ["", "", ""])[:3])


def _read(path: Location) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""

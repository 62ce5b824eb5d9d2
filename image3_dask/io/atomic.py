"""Products appear whole or not at all: written under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from image3_dask.io.storage import RemotePath, upload

__all__ = ["atomic_output"]

# the process umask, read once (os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike | RemotePath, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary file gets the permissions an ordinary new file would (``0666 & ~umask``,
    not ``mkstemp``'s ``0600``), so products are readable by the other users of a shared
    cluster. On any exception the temporary file is removed and nothing appears under ``path``.

    For an object (:class:`~image3_dask.io.storage.RemotePath`) the temporary file is a local
    spool file, uploaded as one object when the block succeeds
    (:func:`~image3_dask.io.storage.upload`: an interrupted upload is aborted).
    """
    if isinstance(path, RemotePath):
        with _spooled(path, suffix) as tmp_path:
            yield tmp_path
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _spooled(dest: RemotePath, suffix: str) -> Iterator[Path]:
    """A local temporary file uploaded to ``dest`` when the block succeeds; always removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        upload(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)

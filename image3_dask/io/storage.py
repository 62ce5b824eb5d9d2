"""Where files live: local paths stay :class:`pathlib.Path`, object-store URLs become :class:`RemotePath`.

Every file the pipeline reads or writes goes through a location made by :func:`location`:

- a local path (or a ``file://`` URL) is a plain :class:`pathlib.Path`, so local runs keep the
  speed and behaviour of the standard library (memory maps, renames, ``O_EXCL`` locks);
- any other fsspec URL (``s3://``, ``gs://``, ``az://``, ``https://``...) is a
  :class:`RemotePath`, a small Path-like object on an fsspec file system (``/``, ``name``,
  ``parent``, ``exists``, ``read_text``, ``write_bytes``, ``glob``...).

A :class:`RemotePath` carries its fsspec ``storage_options`` (credentials, endpoint), so a
task that receives one can open it on any worker; they are never part of its ``str``,
``repr`` or equality, hence never of a log line, an error message or a task key. Without
options the file system finds credentials where its client library looks (for S3: the
``AWS_*`` variables including ``AWS_ENDPOINT_URL``, ``~/.aws`` profiles, instance roles).

The helpers here cover what local code does with :mod:`os` and :mod:`shutil`:
:func:`rmtree`, :func:`stat_token` (what a file's identity is for resume fingerprints),
:func:`create_exclusive` (the output lock), :func:`upload` (one whole object, an interrupted
multipart upload aborted), :func:`open_fits` (ranged reads of FITS sections) and
:func:`zarr_store`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image3_dask.errors import InputError

__all__ = [
    "Location",
    "RemotePath",
    "StorageError",
    "check_remote_folder",
    "create_exclusive",
    "is_remote",
    "location",
    "open_fits",
    "rmtree",
    "stat_token",
    "upload",
    "zarr_store",
]

#: Protocols whose file systems take whole URLs (read only here).
WEB_PROTOCOLS = ("http", "https")
#: Object stores whose fsspec file systems would otherwise cache folder listings.
LISTING_CACHE_OFF = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
#: Bytes per part of a multipart upload (S3's minimum part is 5 MiB).
UPLOAD_PART = 16 * 2**20
#: Read block of the fsspec file objects behind FITS sections: small, as sections read rows.
FITS_BLOCK = 2**16


class StorageError(InputError):
    """An object store could not be reached or used (bad URL, missing bucket, no credentials)."""


class RemotePath:
    """A file or folder on an fsspec file system, with the parts of :class:`pathlib.Path` we use.

    Parameters
    ----------
    url : str
        ``protocol://bucket/key`` (any fsspec protocol).
    storage_options : dict, optional
        Keyword arguments of the fsspec file system (credentials, ``endpoint_url``...). Kept
        out of ``str``/``repr``/``==``.
    """

    __slots__ = ("protocol", "path", "storage_options", "_fs")

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        protocol, _, rest = str(url).partition("://")
        if not rest:
            raise StorageError(f"{url}: not a URL (protocol://bucket/key expected)")
        self.protocol = protocol.lower()
        self.path = rest.rstrip("/") if rest.strip("/") else rest
        self.storage_options = dict(storage_options or {})
        self._fs = None

    # --- names -------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:  # no storage options: they may hold secrets
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __reduce__(self):
        return (RemotePath, (str(self), self.storage_options))

    def __truediv__(self, other: str | os.PathLike) -> RemotePath:
        joined = posixpath.normpath(f"{self.path}/{os.fspath(other).lstrip('/')}")
        return RemotePath(f"{self.protocol}://{joined}", self.storage_options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0] if "." in self.name[1:] else self.name

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> RemotePath:
        head = posixpath.dirname(self.path)
        return RemotePath(f"{self.protocol}://{head or self.path}", self.storage_options)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.parent / (self.stem + suffix)

    def resolve(self) -> RemotePath:
        return self

    def is_absolute(self) -> bool:
        return True

    def relative_to(self, other: RemotePath) -> str:
        if not str(self).startswith(str(other).rstrip("/") + "/"):
            raise ValueError(f"{self} is not under {other}")
        return str(self)[len(str(other).rstrip("/")) + 1 :]

    # --- the file system ------------------------------------------------------------------
    @property
    def key(self) -> str:
        """What the file system's methods take: the path without protocol, or the whole URL
        for web file systems (``http``, ``https``)."""
        return str(self) if self.protocol in WEB_PROTOCOLS else self.path

    def _from_key(self, key: str) -> RemotePath:
        url = key if self.protocol in WEB_PROTOCOLS else f"{self.protocol}://{key}"
        return RemotePath(url, self.storage_options)

    @property
    def fs(self):
        """The fsspec file system (fsspec caches one instance per protocol and options)."""
        if self._fs is None:
            import fsspec

            _quiet_client_loggers()

            options = dict(self.storage_options)
            if self.protocol in LISTING_CACHE_OFF:
                # a worker lives through many runs and other processes write the same folders:
                # listings are asked every time, never cached
                options.setdefault("use_listings_cache", False)
            try:
                self._fs = fsspec.filesystem(self.protocol, **options)
            except (ImportError, ValueError) as exc:
                raise StorageError(f"{self}: cannot use this storage ({exc})") from None
        return self._fs

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args)``, with a store's failure turned into one :class:`StorageError` line."""
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
            raise
        except Exception as exc:
            raise StorageError(f"{self}: cannot {what} ({describe_error(exc)})") from None

    def _type(self) -> str | None:
        """``file``, ``directory`` or None (missing); a store that fails is an error, not None.

        (fsspec's ``exists``/``isfile`` answer False for any failure, so missing credentials
        would read as a missing file.)
        """
        try:
            info = self._call("check it", self.fs.info, self.key)
        except FileNotFoundError:
            return None
        return str(info.get("type") or "file")

    def exists(self) -> bool:
        return self._type() is not None

    def is_file(self) -> bool:
        return self._type() == "file"

    def is_dir(self) -> bool:
        return self._type() == "directory"

    def info(self) -> dict[str, Any]:
        """The store's description of the object (size, ETag, version...)."""
        return self._call("read its details", self.fs.info, self.key)

    def open(self, mode: str = "rb", **kwargs):
        return self._call("open it", self.fs.open, self.key, mode, **kwargs)

    def read_bytes(self) -> bytes:
        return self._call("read it", self.fs.cat_file, self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` as one object (a single PUT: never seen partial)."""
        self._call("write it", self.fs.pipe_file, self.key, bytes(data))

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._call("delete it", self.fs.rm_file, self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object stores have no folders (keys make them)."""

    def iterdir(self) -> Iterator[RemotePath]:
        try:
            names = self._call("list it", self.fs.ls, self.key, detail=False)
        except FileNotFoundError:
            return
        for n in sorted(names):
            if n.rstrip("/") != self.key:
                yield self._from_key(n)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        for n in sorted(self._call("list it", self.fs.glob, f"{self.key}/{pattern}")):
            yield self._from_key(n)

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        return self.glob(f"**/{pattern}")


def _quiet_client_loggers() -> None:
    """botocore logs "Found credentials in ..." at INFO on every connection: keep it to warnings.

    Only loggers nobody configured (level NOTSET) are changed.
    """
    for name in ("botocore", "aiobotocore", "s3fs", "fsspec"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


#: A place for a file or folder: local or on an object store.
Location = Path | RemotePath


def is_url(value: object) -> bool:
    """Whether ``value`` is a ``protocol://`` string (Windows drive letters are not)."""
    s = str(value)
    head, sep, _ = s.partition("://")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").isalnum()


def location(value: str | os.PathLike | RemotePath, storage_options: dict | None = None) -> Location:
    """The :class:`pathlib.Path` or :class:`RemotePath` for a path or URL.

    ``file://`` URLs and plain paths give a ``Path``; other URLs a ``RemotePath`` with
    ``storage_options`` (an existing ``RemotePath`` keeps its own unless it has none).
    """
    if isinstance(value, RemotePath):
        if storage_options and not value.storage_options:
            return RemotePath(str(value), storage_options)
        return value
    if isinstance(value, Path):
        return value
    s = os.fspath(value)
    if is_url(s):
        if s.lower().startswith("file://"):
            return Path(s[len("file://") :])
        return RemotePath(s, storage_options)
    return Path(s)


def is_remote(value: object) -> bool:
    """Whether ``value`` is (or names) a location on an object store."""
    if isinstance(value, RemotePath):
        return True
    return isinstance(value, str) and is_url(value) and not value.lower().startswith("file://")


def describe_error(exc: BaseException) -> str:
    """One line for a store's exception (botocore's are long; credentials never appear)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or --storage-options"
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return "the bucket does not exist"
    return f"{name}: {text}" if text else name


def check_remote_folder(path: RemotePath, what: str) -> None:
    """Refuse, in one line naming ``path``, a folder URL whose store cannot be used.

    Lists the bucket (or container) at the root of ``path``: a missing bucket, missing or
    refused credentials, or an unreachable endpoint are found here, before anything starts.
    An object under the folder's own name is refused too.

    Raises
    ------
    StorageError
        Naming ``what`` and the URL.
    """
    if path.protocol in WEB_PROTOCOLS:
        raise StorageError(
            f"{what} {path}: {path.protocol}:// URLs are read only; write to a folder or an "
            "object store (s3://, gs://, az://...)"
        )
    bucket = path.path.split("/", 1)[0]
    try:
        fs = path.fs
        fs.ls(bucket, detail=False)
        if path.path.strip("/") != bucket and fs.isfile(path.path):
            raise StorageError(f"{what} {path}: is an object, not a folder; give a folder URL")
    except StorageError as exc:
        if str(exc).startswith(what):
            raise
        raise StorageError(f"{what} {path}: {str(exc).split(': ', 1)[-1]}") from None
    except FileNotFoundError:
        raise StorageError(f"{what} {path}: the bucket {bucket!r} does not exist") from None
    except PermissionError as exc:
        raise StorageError(f"{what} {path}: access denied ({describe_error(exc)})") from None
    except Exception as exc:
        raise StorageError(f"{what} {path}: cannot be used ({describe_error(exc)})") from None


def rmtree(path: Location) -> None:
    """Remove a folder and everything under it; nothing if it does not exist."""
    if isinstance(path, RemotePath):
        with contextlib.suppress(FileNotFoundError):
            if path.fs.exists(path.key):
                path.fs.rm(path.key, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def stat_token(path: Location) -> list:
    """What identifies a file's content for resume fingerprints, without reading it.

    Local files: size and modification time (ns). Objects: size and the store's version id,
    else its ETag (a hash of the content on S3), else its modification time.
    """
    if isinstance(path, RemotePath):
        info = path.info()
        ident = (
            info.get("VersionId")
            or info.get("ETag")
            or info.get("etag")
            or info.get("md5Hash")
            or str(info.get("LastModified") or info.get("mtime") or info.get("last_modified"))
        )
        return [int(info.get("size") or 0), str(ident).strip('"')]
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def create_exclusive(path: Location, text: str) -> bool:
    """Create ``path`` holding ``text`` only if it does not exist; whether it was created.

    Local files use ``O_CREAT | O_EXCL``. On S3 the object is written with a conditional PUT
    (``If-None-Match: *``), which AWS S3 and recent S3-compatible servers (moto, MinIO) honour.
    Other stores get the check-then-write fallback, which two runs starting in the same
    instant can both pass.
    """
    if isinstance(path, RemotePath):
        if path.protocol in ("s3", "s3a"):
            try:
                path._call("create it", path.fs.pipe_file, path.key, text.encode(), mode="create")
            except FileExistsError:
                return False
            except StorageError as exc:
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    return False
                raise
            return True
        if path.exists():
            return False
        path.write_text(text)
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def upload(local: str | os.PathLike, dest: RemotePath, part_size: int = UPLOAD_PART) -> None:
    """Copy the local file ``local`` to ``dest`` as one object, visible only when complete.

    S3 makes an object visible only when its (multipart) upload completes; if anything
    interrupts this one (an error, a signal, ``KeyboardInterrupt``), the multipart upload is
    aborted, so neither the object nor its stored parts remain.
    """
    fs = dest.fs
    try:
        out = fs.open(dest.key, "wb", block_size=part_size)
    except Exception as exc:
        raise StorageError(f"{dest}: cannot write it ({describe_error(exc)})") from None
    try:
        with open(local, "rb") as src:
            while chunk := src.read(part_size):
                out.write(chunk)
    except BaseException:
        discard = getattr(out, "discard", None)
        if discard is not None:
            with contextlib.suppress(Exception):
                discard()  # S3: aborts the multipart upload; nothing appears under dest
        with contextlib.suppress(Exception):
            out.closed = True  # discarded: closing it (also on garbage collection) must not commit
        raise
    try:
        out.close()
    except Exception as exc:
        raise StorageError(f"{dest}: cannot write it ({describe_error(exc)})") from None


@contextlib.contextmanager
def open_fits(path: Location, **kwargs: Any) -> Iterator[Any]:
    """``astropy.io.fits.open`` for a local path or an object, read lazily.

    For objects the file is an fsspec file with a small read-ahead block, the HDUs are
    loaded lazily (``lazy_load_hdus=True``) and never memory-mapped, so ``hdul[name].header``
    reads the headers up to ``name`` and ``.section[rows]`` only those rows: ranged reads.
    """
    from astropy.io import fits

    if not isinstance(path, RemotePath):
        with fits.open(path, **kwargs) as hdul:
            yield hdul
        return
    kwargs = {**kwargs, "memmap": False}
    kwargs.setdefault("lazy_load_hdus", True)
    fh = path.open("rb", block_size=FITS_BLOCK, cache_type="readahead")
    try:
        with fits.open(fh, **kwargs) as hdul:
            yield hdul
    finally:
        fh.close()


def zarr_store(path: Location, read_only: bool = False) -> Any:
    """What ``zarr.open_group``/``open_array`` take for ``path``: the path, or an FsspecStore."""
    if not isinstance(path, RemotePath):
        return path
    from zarr.storage import FsspecStore

    options = dict(path.storage_options)
    if path.protocol in LISTING_CACHE_OFF:
        options.setdefault("use_listings_cache", False)
    return FsspecStore.from_url(str(path), storage_options=options or None, read_only=read_only)


def read_bytes_range(path: Location, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file (one ranged GET on an object store)."""
    if isinstance(path, RemotePath):
        return path._call("read it", path.fs.cat_file, path.key, start=start, end=end)
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def copy_to_local_bytes(path: Location) -> io.BytesIO:
    """The whole file in memory (small files: catalogs, JSON, npz)."""
    return io.BytesIO(path.read_bytes())

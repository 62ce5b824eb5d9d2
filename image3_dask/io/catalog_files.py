"""Files of the tweakreg and skymatch steps: source catalogs, reference catalogs, sky lists.

* ``catfile`` (tweakreg ``use_custom_catalogs``): a text file of ``<exposure file> [<catalog>]``
  lines, read with jwst's rules (catalog paths relative to the catfile's folder; a line with
  no catalog means "find sources for this exposure").
* Source catalogs (custom ones, and the ``save_catalogs`` outputs ``<input stem>_cat.<fmt>``)
  and the ``abs_refcat`` reference catalog are astropy tables in ECSV or FITS.
* ``skylist`` (skymatch ``skymethod='user'``): ``<image name> <sky value>`` lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from astropy.table import Table

from image3_dask.errors import InputError

__all__ = [
    "CATALOG_FORMATS",
    "GAIA_CATALOGS",
    "catalog_output_name",
    "file_root",
    "parse_catfile",
    "read_refcat",
    "read_skylist",
    "read_source_catalog",
    "write_catalog",
]

#: ``catalog_format`` -> astropy table format.
CATALOG_FORMATS = {"ecsv": "ascii.ecsv", "fits": "fits"}

#: ``abs_refcat`` values that name an online Gaia catalog (jwst's ``SINGLE_GROUP_REFCAT``).
GAIA_CATALOGS = ("GAIAREFCAT", "GAIADR3", "GAIADR2", "GAIADR1")

# Product suffixes stripped from file names when matching them to exposures (the common ones
# of jwst's ``remove_suffix``).
_SUFFIXES = (
    "cal",
    "crf",
    "rate",
    "rateints",
    "calints",
    "i2d",
    "s2d",
    "skymatch",
    "tweakreg",
    "outlier_i2d",
    "bsub",
    "flat",
    "photom",
    "resamp",
    "assign_wcs",
    "uncal",
)


def file_root(name: str | os.PathLike) -> str:
    """File name without folder, extension and product suffix (``jw..._mirimage``).

    Parameters
    ----------
    name : str or path-like
        A file name such as ``path/jw01234001001_02101_00001_mirimage_cal.fits``.

    Returns
    -------
    str
        ``jw01234001001_02101_00001_mirimage``.
    """
    stem = Path(str(name).strip()).name
    for ext in (".fits.gz", ".fits", ".fit", ".asdf"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if stem.endswith("_" + suffix):
            return stem[: -len(suffix) - 1]
    return stem


def parse_catfile(catfile: str | os.PathLike) -> dict[str, str | None]:
    """Read a ``catfile``: exposure file name -> custom catalog path (or `None`).

    Parameters
    ----------
    catfile : str or path-like
        Text file with one ``<exposure file> [<catalog file>]`` entry per line; ``#`` starts
        a comment line. Catalog paths are taken relative to the catfile's folder, as jwst does.

    Returns
    -------
    dict
        Exposure file name (as written in the file) -> catalog path, or `None` for a line
        without a catalog (sources are then found in that exposure).

    Raises
    ------
    InputError
        When the file is missing or a line has more than two columns.
    """
    path = Path(catfile)
    if not path.is_file():
        raise InputError(f"{path}: catfile not found")
    out: dict[str, str | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        model, *cat = s.split()
        if len(cat) > 1:
            raise InputError(f"{path}, line {n}: 'catfile' can contain at most two columns")
        out[model] = str(path.parent / cat[0]) if cat else None
    return out


def read_source_catalog(path: str | os.PathLike) -> Table:
    """Read a custom source catalog (ECSV, FITS or any format astropy recognises).

    Parameters
    ----------
    path : str or path-like
        The catalog; it needs ``x``/``y`` (or ``xcentroid``/``ycentroid``) columns.

    Returns
    -------
    astropy.table.Table
        The catalog, with ``x`` and ``y`` columns (0-based pixels).

    Raises
    ------
    InputError
        When the file is missing, unreadable or lacks position columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: custom source catalog not found")
    try:
        cat = Table.read(path)
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise InputError(
            f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})"
        ) from None
    for axis in ("x", "y"):
        if axis in cat.colnames:
            continue
        for long_name in (axis + "centroid", axis + "_centroid"):
            if long_name in cat.colnames:
                cat.rename_column(long_name, axis)
                break
        else:
            raise InputError(
                f"{path}: a tweakreg catalog must have a column {axis!r}, "
                f"'{axis}centroid' or '{axis}_centroid'"
            )
    return cat


def catalog_output_name(input_path: str | os.PathLike, catalog_format: str = "ecsv") -> str:
    """Name jwst gives a saved tweakreg catalog: ``<input file name>`` with ``.fits`` -> ``_cat.<fmt>``.

    Raises
    ------
    InputError
        When ``catalog_format`` is neither ``'ecsv'`` nor ``'fits'``.
    """
    if catalog_format not in CATALOG_FORMATS:
        raise InputError(f"catalog_format must be 'ecsv' or 'fits', not {catalog_format!r}")
    return Path(input_path).name.replace(".fits", f"_cat.{catalog_format}")


def write_catalog(catalog: Table, path: str | os.PathLike, catalog_format: str = "ecsv") -> Path:
    """Write a source catalog (overwriting), as jwst's ``save_catalogs`` does."""
    if catalog_format not in CATALOG_FORMATS:
        raise InputError(f"catalog_format must be 'ecsv' or 'fits', not {catalog_format!r}")
    from image3_dask.io.atomic import atomic_output
    from image3_dask.io.storage import RemotePath, location

    path = location(path)
    if not isinstance(path, RemotePath):
        Table(catalog).write(path, format=CATALOG_FORMATS[catalog_format], overwrite=True)
        return path
    with atomic_output(path, f".{catalog_format}") as tmp:
        Table(catalog).write(tmp, format=CATALOG_FORMATS[catalog_format], overwrite=True)
    return path


def read_refcat(path: str | os.PathLike) -> Table:
    """Read an ``abs_refcat`` reference catalog file (ECSV/FITS table with RA/Dec).

    Parameters
    ----------
    path : str or path-like
        The catalog file.

    Returns
    -------
    astropy.table.Table
        The table as read, its ``meta['name']`` set to the file name.

    Raises
    ------
    InputError
        When the file is missing or unreadable.
    """
    path = Path(str(path).strip())
    if not path.is_file():
        raise InputError(
            f"{path}: abs_refcat is neither an existing catalog file nor one of "
            f"{', '.join(GAIA_CATALOGS)}"
        )
    try:
        cat = Table.read(path)
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise InputError(
            f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})"
        ) from None
    cat.meta["name"] = path.name
    return cat


def read_skylist(path: str | os.PathLike) -> dict[str, float]:
    """Read a ``skylist``: image root name (see :func:`file_root`) -> sky value.

    Raises
    ------
    InputError
        When the file is missing, a line is malformed, or a name is listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: skylist not found")
    out: dict[str, float] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) != 2:
            raise InputError(f"{path}, line {n}: expected '<image name> <sky value>'")
        try:
            value = float(parts[1])
        except ValueError:
            raise InputError(f"{path}, line {n}: {parts[1]!r} is not a number") from None
        root = file_root(parts[0])
        if root in out:
            raise InputError(
                f"{path}: image with stem '{root}' found multiple times in the skylist"
            )
        out[root] = value
    return out

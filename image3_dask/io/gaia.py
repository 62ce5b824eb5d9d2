"""Gaia reference catalogs for absolute astrometry (``tweakreg.abs_refcat = GAIADR3``...).

jwst (through stcal) asks STScI's catalog web service for the sources of a Gaia release
within a radius of the field's centre, at the epoch of the observation::

    <service>/vo/CatalogSearch.aspx?RA=<deg>&DEC=<deg>&EPOCH=<decimal year>&SR=<deg>&FORMAT=CSV&CAT=<name>

The service is ``https://gsss.stsci.edu/webservices`` unless the ``ASTROMETRIC_CATALOG_URL``
environment variable names another (the variable stcal reads); image3-dask also takes it from
``tweakreg.abs_refcat_url``. The answer is CSV (``#`` comment lines, a header line, one row
per source with at least ``ra``, ``dec``, ``mag``, ``objID``, ``epoch``, and ``pmra``/``pmdec``);
``No data records`` means an empty field. With an epoch, rows without proper motion are
dropped (the service returns them uncorrected), as stcal does.

Here the client makes the query once, for the footprints of all the exposures (before the
relative alignment, so the radius gets a margin of ``abs_searchrad`` for the corrections that
alignment will make), writes the catalog next to the products (``fit_<name>_ref.ecsv``, the
name jwst gives it with ``save_abs_catalog``) and hands the table to the alignment task.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from image3_dask.errors import InputError
from image3_dask.io.catalog_files import GAIA_CATALOGS

log = logging.getLogger("image3_dask")

__all__ = [
    "DEFAULT_SERVICE_URL",
    "GAIA_CATALOGS",
    "SERVICE_URL_ENV",
    "TIMEOUT",
    "fetch_gaia_catalog",
    "field_of_view",
    "gaia_query_url",
    "parse_gaia_csv",
    "service_url",
]

#: STScI's catalog web service (jwst's and stcal's default).
DEFAULT_SERVICE_URL = "https://gsss.stsci.edu/webservices"
#: Environment variable naming another service (stcal's).
SERVICE_URL_ENV = "ASTROMETRIC_CATALOG_URL"
#: Seconds to wait for the service (stcal's).
TIMEOUT = 30.0


def service_url(parameter: str | None = None) -> str:
    """The catalog service: the parameter, else ``ASTROMETRIC_CATALOG_URL``, else STScI's.

    Parameters
    ----------
    parameter : str, optional
        ``tweakreg.abs_refcat_url``.

    Returns
    -------
    str
        Base URL without a trailing slash.
    """
    url = (parameter or "").strip() or os.environ.get(SERVICE_URL_ENV, "") or DEFAULT_SERVICE_URL
    return url.rstrip("/")


def gaia_query_url(
    base: str, ra: float, dec: float, radius: float, catalog: str, epoch: float | None
) -> str:
    """The query of stcal's ``get_catalog``: centre, radius (degrees), epoch, catalog.

    Parameters
    ----------
    base : str
        Service URL (:func:`service_url`).
    ra, dec : float
        Centre in degrees.
    radius : float
        Search radius in degrees.
    catalog : str
        ``GAIADR3``, ``GAIADR2``, ``GAIADR1`` or ``GAIAREFCAT``.
    epoch : float or None
        Decimal year the positions are wanted at (None: the catalog's own epoch).

    Returns
    -------
    str
        The URL.
    """
    spec = f"RA={ra}&DEC={dec}"
    if epoch is not None:
        spec += f"&EPOCH={epoch}"
    spec += f"&SR={radius}&FORMAT=CSV&CAT={catalog}"
    return f"{base}/vo/CatalogSearch.aspx?{spec}"


def parse_gaia_csv(text: str, epoch: float | None) -> Table:
    """The service's CSV answer as a table (sources without proper motion dropped at an epoch).

    Parameters
    ----------
    text : str
        The answer.
    epoch : float or None
        The epoch of the query.

    Returns
    -------
    astropy.table.Table
        Columns as the service names them (``ra``, ``dec``, ``mag``, ``objID``, ``epoch``...).
    """
    if not text.strip() or text.startswith("No data records"):
        return Table(names=("ra", "dec", "mag", "objID", "epoch"), dtype=(float,) * 5)
    table = Table.read(text, format="ascii.csv", comment="#")
    if epoch is not None and len(table):
        keep = np.ones(len(table), dtype=bool)
        for name in ("pmra", "pmdec"):
            col = table[name] if name in table.colnames else None
            if col is not None and hasattr(col, "mask"):
                keep &= ~np.asarray(col.mask, dtype=bool)
        table = table[keep]
    return table


def field_of_view(
    footprints: Sequence[np.ndarray], margin_arcsec: float = 0.0
) -> tuple[float, float, float]:
    """Centre and radius (degrees) of a circle holding every footprint corner, plus a margin.

    The centre is the normalised mean of the corners' unit vectors; the radius the largest
    angular distance from it to a corner.

    Parameters
    ----------
    footprints : sequence of numpy.ndarray
        ``(n, 2)`` arrays of (RA, Dec) corners in degrees.
    margin_arcsec : float
        Added to the radius.

    Returns
    -------
    ra, dec, radius : float
        Degrees.
    """
    corners = np.concatenate([np.asarray(f, dtype=float).reshape(-1, 2) for f in footprints])
    ra, dec = np.deg2rad(corners[:, 0]), np.deg2rad(corners[:, 1])
    xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)
    centre = xyz.mean(axis=0)
    centre /= np.linalg.norm(centre)
    radius = np.rad2deg(np.arccos(np.clip(xyz @ centre, -1.0, 1.0))).max()
    c_ra = float(np.rad2deg(np.arctan2(centre[1], centre[0])) % 360.0)
    c_dec = float(np.rad2deg(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    return c_ra, c_dec, float(radius + margin_arcsec / 3600.0)


def fetch_gaia_catalog(
    catalog: str,
    footprints: Sequence[np.ndarray],
    epoch: float | None,
    *,
    url: str | None = None,
    margin_arcsec: float = 0.0,
    out_path: str | os.PathLike | None = None,
    timeout: float = TIMEOUT,
) -> Table:
    """Query the catalog service once for the field and return (and save) the reference catalog.

    Parameters
    ----------
    catalog : str
        One of :data:`GAIA_CATALOGS` (any case).
    footprints : sequence of numpy.ndarray
        The exposures' footprints, ``(n, 2)`` (RA, Dec) in degrees.
    epoch : float or None
        Decimal year of the observation.
    url : str, optional
        Service URL (see :func:`service_url`).
    margin_arcsec : float
        Added to the field's radius (the alignment's search radius).
    out_path : path-like, optional
        Where to write the catalog (ECSV).
    timeout : float
        Seconds to wait for the service.

    Returns
    -------
    astropy.table.Table
        ``RA``, ``DEC``, ``mag``, ``objID``, ``epoch`` sorted faint to bright (as stcal), with
        ``meta['name']`` the catalog's name.

    Raises
    ------
    InputError
        When the service cannot be reached or its answer cannot be read: one message naming
        the URL and suggesting a catalog file.
    """
    name = catalog.strip().upper()
    if name not in GAIA_CATALOGS:
        raise InputError(f"abs_refcat={catalog}: not one of {', '.join(GAIA_CATALOGS)}")
    base = service_url(url)
    ra, dec, radius = field_of_view(footprints, margin_arcsec)
    query = gaia_query_url(base, ra, dec, radius, name, epoch)
    log.info("tweakreg: querying %s for the field (radius %.4f deg)", query, radius)
    hint = (
        "give tweakreg.abs_refcat the path of a catalog file instead (ECSV or FITS with RA and "
        f"DEC columns, e.g. fit_{name.lower()}_ref.ecsv saved by an earlier run), or point "
        f"{SERVICE_URL_ENV} / tweakreg.abs_refcat_url at a reachable service"
    )
    try:
        request = urllib.request.Request(query, headers={"Content-Type": "text/csv"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise InputError(
            f"tweakreg.abs_refcat={name}: the catalog service {base} answered HTTP "
            f"{exc.code} ({exc.reason}) to {query}; {hint}"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"tweakreg.abs_refcat={name}: cannot reach the catalog service {base} ({reason}); "
            f"{hint}"
        ) from None
    try:
        table = parse_gaia_csv(text, epoch)
        missing = {"ra", "dec"} - set(table.colnames)
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))} column")
    except Exception as exc:  # astropy raises many kinds for text that is not CSV
        raise InputError(
            f"tweakreg.abs_refcat={name}: the answer of {query} is not the catalog service's "
            f"CSV ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    cols: dict[str, Any] = {
        "RA": np.asarray(table["ra"], dtype=float),
        "DEC": np.asarray(table["dec"], dtype=float),
    }
    for col in ("mag", "objID", "epoch"):
        if col in table.colnames:
            cols[col] = np.asarray(table[col])
    ref = Table(cols)
    if "mag" in ref.colnames and len(ref):
        ref = ref[np.argsort(-np.asarray(ref["mag"], dtype=float), kind="stable")]
    ref.meta["catalog"] = name
    ref.meta["name"] = name
    ref.meta["query"] = query
    log.info("tweakreg: %d %s sources around RA=%.6f Dec=%.6f", len(ref), name, ra, dec)
    if out_path is not None:
        from image3_dask.io.atomic import atomic_output

        with atomic_output(out_path, ".ecsv") as tmp:
            ref.write(tmp, format="ascii.ecsv", overwrite=True)
        log.info("tweakreg: reference catalog written to %s", out_path)
    return ref

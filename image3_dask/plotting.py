"""Pictures of the products, as jwst's notebooks draw them.

:func:`plot_i2d` shows a mosaic (``<product>_i2d.fits``) on a logarithmic scale with a colour
bar, the pixels without data (NaN) in their own colour, and the sources of the catalog
(``<product>_cat.ecsv``) circled with photutils apertures, as the MIRI Image3 notebook does::

    from image3_dask import Image3Pipeline, plot_i2d
    products = Image3Pipeline.call("asn.json", output_dir="out")
    plot_i2d(products["i2d"], products["cat"], png="out/mosaic_log.png")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["log_limits", "plot_i2d"]


def log_limits(data: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Limits of a logarithmic scale: percentiles of the positive finite pixels.

    Returns ``(vmin, vmax)`` with ``0 < vmin < vmax`` (``(1, 10)`` when no pixel is positive).
    """
    good = data[np.isfinite(data) & (data > 0)]
    if good.size == 0:
        return 1.0, 10.0
    vmin, vmax = np.percentile(good, [low, high])
    vmin = float(max(vmin, np.finfo(np.float32).tiny))
    return vmin, float(max(vmax, vmin * 10))


def plot_i2d(
    i2d: str | os.PathLike,
    catalog: str | os.PathLike | None = None,
    *,
    ax=None,
    png: str | os.PathLike | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    radius: float = 6.0,
    cmap: str = "jet",
    nan_color: str = "black",
    circle_color: str = "yellow",
):
    """Draw a mosaic on a LogNorm scale with a colour bar and its catalog's sources circled.

    Parameters
    ----------
    i2d : path-like
        The ``_i2d.fits`` product (its ``SCI`` extension is drawn).
    catalog : path-like, optional
        The ``_cat.ecsv`` product: a :class:`photutils.aperture.CircularAperture` of ``radius``
        pixels at each ``xcentroid``, ``ycentroid``.
    ax : matplotlib.axes.Axes, optional
        Where to draw (a new 8x8 inch figure when omitted).
    png : path-like, optional
        Save the figure there (and close it).
    vmin, vmax : float, optional
        Limits of the scale (default: :func:`log_limits` of the data).
    radius : float
        Circle radius in pixels.
    cmap, nan_color, circle_color : str
        Colour map, colour of the pixels without data (NaN; pixels at or below ``vmin`` take
        the lowest colour of the map), colour of the circles.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    import matplotlib

    if ax is None and png is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from astropy.io import fits
    from matplotlib.colors import LogNorm

    with fits.open(i2d) as hdul:
        data = np.asarray(hdul["SCI"].data, dtype=float)
        unit = hdul["SCI"].header.get("BUNIT", "")
    lo, hi = log_limits(data)
    norm = LogNorm(vmin=vmin if vmin is not None else lo, vmax=vmax if vmax is not None else hi)
    colours = plt.get_cmap(cmap).copy()
    colours.set_bad(nan_color)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 8))
    else:
        fig = ax.figure
    # NaN (no data) in its own colour; pixels at or below the scale's floor in its lowest one
    shown = np.where(np.isfinite(data), np.maximum(data, norm.vmin), np.nan)
    im = ax.imshow(shown, cmap=colours, norm=norm, origin="lower", interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(unit or "surface brightness")
    title = f"{Path(i2d).name}"
    if catalog is not None and Path(catalog).exists():
        from astropy.table import Table
        from photutils.aperture import CircularAperture

        sources = Table.read(catalog, format="ascii.ecsv")
        if len(sources):
            positions = np.transpose([sources["xcentroid"], sources["ycentroid"]])
            CircularAperture(positions, r=radius).plot(ax=ax, color=circle_color, lw=1.5, alpha=0.8)
        title += f" with {len(sources)} detected sources"
    ax.set_title(title)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    if png is not None:
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
    return ax

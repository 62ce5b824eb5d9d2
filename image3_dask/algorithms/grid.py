"""The output (mosaic) grid of the resample step, computed as jwst 3.0 computes it.

jwst 3.0 (``jwst.resample.resample_utils.resampled_wcs_from_models``) builds the output WCS
from the ``S_REGION`` footprints of all inputs and the FITS ``wcsinfo`` of the first input:

- the pixel scale is ``compute_scale`` of the first WCS at its ``(ra_ref, dec_ref)`` times
  ``pixel_scale_ratio``, unless an absolute ``pixel_scale`` is given (then the ratio is that
  scale over the square root of the first input's mean pixel area);
- the orientation comes from ``roll_ref``, ``v3yangle`` and ``vparity`` of the first input
  (or from ``rotation``, the position angle of the output Y axis);
- the reference point is the centre of the union of the footprints (or ``crval``) and the
  shape is the bounding box of all footprints projected on that tangent plane.

The last step is stcal's :func:`stcal.alignment.util.wcs_from_sregions`, which this module
calls (it takes plain arrays and WCS objects). Footprints are taken from ``S_REGION`` strings
when given, otherwise computed from each WCS exactly as jwst's ``update_s_region_imaging``
does (bounding-box corners, rounded to 9 decimals as in the keyword).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gwcs
import numpy as np
from astropy import coordinates as coord
from astropy.modeling import models as astmodels
from gwcs import coordinate_frames as cf

from image3_dask.errors import InputError

__all__ = [
    "GridTooLargeError",
    "OutputGrid",
    "compute_output_grid",
    "check_grid_size",
    "far_exposures",
    "footprint_from_sregion",
    "grid_shape_from_sregions",
    "grid_from_wcs",
    "pixel_scale_ratio_from_area",
    "sregion_footprint",
    "wcsinfo_from_wcs",
]


class GridTooLargeError(InputError):
    """The output grid would exceed ``max_pixels``; the message names suspicious exposures."""


@dataclass(frozen=True)
class OutputGrid:
    """The output mosaic grid: a celestial TAN WCS and an array shape.

    Attributes
    ----------
    wcs : gwcs.WCS
        Output WCS (pixel -> world, 0-based pixels). ``wcs.array_shape == shape``.
    shape : tuple of int
        ``(ny, nx)`` of the mosaic.
    pixel_scale : float
        Output pixel scale in arcsec.
    pixel_scale_ratio : float or None
        Output over input pixel scale (as jwst reports it in ``meta.resample``); `None` when
        unknown (custom WCS before any input has been seen).
    crpix : tuple of float
        0-based ``(x, y)`` pixel of the reference point.
    crval : tuple of float
        ``(ra, dec)`` of the reference point in degrees.
    rotation : float
        Position angle (degrees east of north) of the output +Y axis.
    pc : tuple of float
        The 2x2 rotation matrix (row-major) of the TAN transform, kept for exact rebuilding.
    """

    wcs: gwcs.WCS
    shape: tuple[int, int]
    pixel_scale: float
    pixel_scale_ratio: float | None
    crpix: tuple[float, float]
    crval: tuple[float, float]
    rotation: float
    pc: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)

    @property
    def npix(self) -> int:
        """Number of pixels of the mosaic."""
        return int(self.shape[0]) * int(self.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description from which :meth:`from_dict` rebuilds the grid.

        Returns
        -------
        dict
            Plain Python numbers and lists only.
        """
        return {
            "shape": [int(s) for s in self.shape],
            "pixel_scale": float(self.pixel_scale),
            "pixel_scale_ratio": None
            if self.pixel_scale_ratio is None
            else float(self.pixel_scale_ratio),
            "crpix": [float(c) for c in self.crpix],
            "crval": [float(c) for c in self.crval],
            "rotation": float(self.rotation),
            "pc": [float(p) for p in self.pc],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputGrid:
        """Rebuild a grid written by :meth:`to_dict`.

        Parameters
        ----------
        d : mapping
            Output of :meth:`to_dict`.

        Returns
        -------
        OutputGrid
            A grid whose WCS is a FITS-imaging TAN gwcs equal to the original one.
        """
        shape = (int(d["shape"][0]), int(d["shape"][1]))
        pc = tuple(float(p) for p in d["pc"])
        wcs = _tan_gwcs(
            crpix=tuple(d["crpix"]),
            crval=tuple(d["crval"]),
            pscale_deg=float(d["pixel_scale"]) / 3600.0,
            pc=np.reshape(pc, (2, 2)),
            shape=shape,
        )
        return cls(
            wcs=wcs,
            shape=shape,
            pixel_scale=float(d["pixel_scale"]),
            pixel_scale_ratio=d.get("pixel_scale_ratio"),
            crpix=(float(d["crpix"][0]), float(d["crpix"][1])),
            crval=(float(d["crval"][0]), float(d["crval"][1])),
            rotation=float(d["rotation"]),
            pc=pc,  # type: ignore[arg-type]
        )


def _tan_gwcs(
    crpix: Sequence[float],
    crval: Sequence[float],
    pscale_deg: float,
    pc: np.ndarray,
    shape: tuple[int, int],
    input_frame: cf.CoordinateFrame | None = None,
    output_frame: cf.CoordinateFrame | None = None,
) -> gwcs.WCS:
    """Build a FITS-imaging TAN gwcs the way stcal's ``wcs_from_sregions`` does."""
    from gwcs import FITSImagingWCSTransform

    fwcs = FITSImagingWCSTransform(
        astmodels.Pix2Sky_TAN(),
        crpix=tuple(float(c) for c in crpix),
        crval=tuple(float(c) for c in crval),
        cdelt=[pscale_deg, pscale_deg],
        pc=np.asarray(pc, dtype=float),
    )
    if input_frame is None:
        input_frame = cf.Frame2D(name="detector")
    if output_frame is None:
        output_frame = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    w = gwcs.WCS([gwcs.Step(input_frame, fwcs), gwcs.Step(output_frame, None)])
    w.bounding_box = ((-0.5, shape[1] - 0.5), (-0.5, shape[0] - 0.5))
    w.pixel_shape = (shape[1], shape[0])
    return w


def _bbox_of(
    wcs: gwcs.WCS, shape: Sequence[int]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Bounding box ``((xlo, xhi), (ylo, yhi))`` of ``wcs`` or of an array of ``shape``."""
    bb = wcs.bounding_box
    if bb is None:
        return ((-0.5, shape[-1] - 0.5), (-0.5, shape[-2] - 0.5))
    try:
        bb = bb.bounding_box(order="F")
    except AttributeError:
        bb = tuple(bb)
    return (tuple(bb[0]), tuple(bb[1]))  # type: ignore[return-value]


def sregion_footprint(wcs: gwcs.WCS, shape: Sequence[int]) -> np.ndarray:
    """Sky footprint of an exposure as jwst's ``update_s_region_imaging`` records it.

    The four corners of the WCS bounding box (pixel edges, ``center=False``), RA wrapped to
    [0, 360), rounded to the 9 decimals of the ``S_REGION`` keyword. The WCS is not modified.

    Parameters
    ----------
    wcs : gwcs.WCS
        Exposure WCS.
    shape : sequence of int
        ``(ny, nx)`` of the exposure (used when the WCS has no bounding box).

    Returns
    -------
    numpy.ndarray
        ``(4, 2)`` array of ``(ra, dec)`` in degrees.
    """
    bbox = _bbox_of(wcs, shape)
    (x0, x1), (y0, y1) = bbox
    x = np.array([x0, x0, x1, x1], dtype=float)
    y = np.array([y0, y1, y1, y0], dtype=float)
    ra, dec = wcs(x, y, with_bounding_box=False)[:2]
    fp = np.stack([np.mod(ra, 360.0), dec], axis=1)
    text = " ".join(f"{v:.9f}" for v in fp.ravel())
    return np.array(text.split(), dtype=float).reshape(-1, 2)


def footprint_from_sregion(s_region: str) -> list[np.ndarray]:
    """Parse an ``S_REGION`` string (possibly several ``POLYGON``) into ``(N, 2)`` arrays.

    Parameters
    ----------
    s_region : str
        ``"POLYGON ICRS ra1 dec1 ..."``, possibly repeated.

    Returns
    -------
    list of numpy.ndarray
        One ``(N, 2)`` array per polygon.
    """
    out = []
    for part in s_region.split("POLYGON"):
        vals = [t for t in part.replace("ICRS", " ").split() if t]
        if vals:
            out.append(np.array(vals, dtype=float).reshape(-1, 2))
    return out


def wcsinfo_from_wcs(wcs: gwcs.WCS, shape: Sequence[int]) -> dict[str, float]:
    """Estimate the FITS ``wcsinfo`` values the output grid needs, from a WCS alone.

    Used when the real ``roll_ref``/``v3yangle``/``vparity``/``ra_ref``/``dec_ref`` of the
    first exposure are not available. The reference point is the array centre and the
    orientation the local position angle and parity of the detector Y axis there, so the
    resulting grid is aligned with the detector like jwst's default (``rotation=None``).

    Parameters
    ----------
    wcs : gwcs.WCS
        Exposure WCS.
    shape : sequence of int
        ``(ny, nx)`` of the exposure.

    Returns
    -------
    dict
        Keys ``ra_ref``, ``dec_ref``, ``roll_ref``, ``v3yangle`` (0), ``vparity``.
    """
    cx, cy = (shape[-1] - 1) / 2.0, (shape[-2] - 1) / 2.0
    ra0, dec0 = wcs(cx, cy, with_bounding_box=False)[:2]
    c0 = coord.SkyCoord(ra0, dec0, unit="deg")
    xs = np.array([cx + 1.0, cx])
    ys = np.array([cy, cy + 1.0])
    ra, dec = wcs(xs, ys, with_bounding_box=False)[:2]
    off = c0.spherical_offsets_to(coord.SkyCoord(ra, dec, unit="deg"))
    dxi = off[0].to_value("deg")  # east offsets for +x, +y
    deta = off[1].to_value("deg")
    det = dxi[0] * deta[1] - dxi[1] * deta[0]
    vparity = 1 if det > 0 else -1
    pa_y = math.degrees(math.atan2(dxi[1], deta[1]))
    return {
        "ra_ref": float(ra0),
        "dec_ref": float(dec0),
        "roll_ref": float(pa_y),
        "v3yangle": 0.0,
        "vparity": vparity,
    }


def pixel_scale_ratio_from_area(output_pixel_scale: float, input_pixelarea_sr: float) -> float:
    """Pixel scale ratio stcal uses for a custom output WCS (from the first input's area).

    Parameters
    ----------
    output_pixel_scale : float
        Output pixel scale in arcsec.
    input_pixelarea_sr : float
        Nominal pixel area (``meta.photometry.pixelarea_steradians``) of the first input.

    Returns
    -------
    float
        ``output_pixel_scale / (3600 * degrees(sqrt(area)))``.
    """
    return output_pixel_scale / (3600.0 * np.rad2deg(math.sqrt(input_pixelarea_sr)))


def _unit_vectors(radec: np.ndarray) -> np.ndarray:
    lon, lat = np.deg2rad(radec[:, 0]), np.deg2rad(radec[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def far_exposures(
    footprints: Sequence[np.ndarray], names: Sequence[str] | None = None, factor: float = 3.0
) -> list[tuple[str, float]]:
    """Exposures whose footprint centre lies far from the median centre of all footprints.

    An exposure is "far" when its centre is more than ``factor`` times the largest footprint
    radius away from the median centre (the usual sign of a bad WCS, which blows up the
    mosaic).

    Parameters
    ----------
    footprints : sequence of numpy.ndarray
        ``(N, 2)`` ``(ra, dec)`` footprints, one per exposure.
    names : sequence of str, optional
        Exposure names (default ``"exposure <i>"``).
    factor : float, optional
        Distance threshold in units of the largest footprint radius.

    Returns
    -------
    list of (str, float)
        ``(name, distance in degrees)``, farthest first.
    """
    if names is None:
        names = [f"exposure {i}" for i in range(len(footprints))]
    centres = []
    radii = []
    for fp in footprints:
        u = _unit_vectors(np.asarray(fp, dtype=float))
        c = u.mean(axis=0)
        c /= np.linalg.norm(c)
        centres.append(c)
        radii.append(np.max(np.degrees(np.arccos(np.clip(u @ c, -1, 1)))))
    cen = np.array(centres)
    med = np.median(cen, axis=0)
    med /= np.linalg.norm(med)
    dist = np.degrees(np.arccos(np.clip(cen @ med, -1, 1)))
    thresh = factor * max(max(radii), 1e-6)
    far = [(names[i], float(dist[i])) for i in range(len(dist)) if dist[i] > thresh]
    return sorted(far, key=lambda t: -t[1])


def _rotation_from_pc(pc: np.ndarray) -> float:
    # intermediate = pc @ pixel; +Y pixel axis -> (pc[0,1], pc[1,1]) = (east, north)
    return float(np.degrees(np.arctan2(pc[0, 1], pc[1, 1])))


def check_grid_size(
    shape: Sequence[int],
    max_pixels: int | None,
    footprints: Sequence[np.ndarray] | None,
    names: Sequence[str],
) -> None:
    """Refuse an output grid of more than ``max_pixels`` (``steps.resample.max_output_pixels``).

    Raises
    ------
    GridTooLargeError
        Naming the parameter, the grid's size and the exposures whose footprint lies far from
        the others (:func:`far_exposures`), the usual cause.
    """
    if max_pixels is None or shape[0] * shape[1] <= max_pixels:
        return
    far = far_exposures(footprints, names) if footprints is not None else []
    if far:
        who = ", ".join(f"{n} ({d:.3g} deg from the others)" for n, d in far)
        hint = f" The footprint of {who} lies far from the rest: check its WCS."
    else:
        hint = (
            " No single exposure stands out; raise steps.resample.max_output_pixels or choose "
            "output_shape or a larger pixel_scale."
        )
    raise GridTooLargeError(
        f"The output grid would be {shape[1]} x {shape[0]} = {shape[0] * shape[1]} pixels,"
        f" more than steps.resample.max_output_pixels={max_pixels}.{hint}"
    )


def grid_shape_from_sregions(
    sregions: Sequence[str],
    ref_wcsinfo: dict[str, float],
    pixel_scale_deg: float,
    rotation: float | None = None,
    crpix: Sequence[float] | None = None,
    crval: Sequence[float] | None = None,
) -> tuple[tuple[int, int], list[np.ndarray]]:
    """The ``(ny, nx)`` of the output grid from ``S_REGION`` footprints alone (no gwcs).

    As :func:`compute_output_grid` with an absolute pixel scale: stcal's
    ``wcs_from_sregions`` with the orientation of ``ref_wcsinfo`` (``ra_ref``, ``dec_ref``,
    ``roll_ref``, ``v3yangle``, ``vparity``). Used to check the grid's size before anything
    runs.

    Returns
    -------
    shape : tuple of int
        ``(ny, nx)``.
    footprints : list of numpy.ndarray
        The first polygon of each ``S_REGION`` (for :func:`check_grid_size`'s message).

    Raises
    ------
    ValueError
        When an ``S_REGION`` cannot be read or the grid comes out smaller than 2 pixels.
    """
    from stcal.alignment.util import wcs_from_sregions

    polygons = [footprint_from_sregion(s) for s in sregions]
    if any(not p for p in polygons):
        raise ValueError("an S_REGION holds no polygon")
    frames = _tan_gwcs(
        (0.0, 0.0),
        (ref_wcsinfo["ra_ref"], ref_wcsinfo["dec_ref"]),
        pixel_scale_deg,
        np.eye(2),
        (2, 2),
    )  # only its frames are used: the pixel scale is given
    wcs = wcs_from_sregions(
        [fp for p in polygons for fp in p],
        ref_wcs=frames,
        ref_wcsinfo=ref_wcsinfo,
        pscale=pixel_scale_deg,
        rotation=rotation,
        crpix=None if crpix is None else tuple(crpix),
        crval=None if crval is None else tuple(crval),
    )
    return (int(wcs.array_shape[0]), int(wcs.array_shape[1])), [p[0] for p in polygons]


def compute_output_grid(
    wcs_list: Sequence[gwcs.WCS],
    shapes: Sequence[Sequence[int]],
    *,
    ref_wcsinfo: Mapping[str, float] | None = None,
    sregions: Sequence[str | np.ndarray] | None = None,
    pixel_scale_ratio: float = 1.0,
    pixel_scale: float | None = None,
    rotation: float | None = None,
    crpix: Sequence[float] | None = None,
    crval: Sequence[float] | None = None,
    output_shape: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> OutputGrid:
    """Compute the output mosaic grid from the union of the input footprints, as jwst 3.0.

    Parameters
    ----------
    wcs_list : sequence of gwcs.WCS
        Input exposure WCSs; the first one is the reference (scale, frames, orientation).
    shapes : sequence of (int, int)
        ``(ny, nx)`` of each exposure.
    ref_wcsinfo : mapping, optional
        ``ra_ref``, ``dec_ref``, ``roll_ref``, ``v3yangle``, ``vparity`` of the first exposure
        (its ``meta.wcsinfo``). Required for exact parity with jwst; when omitted they are
        estimated with :func:`wcsinfo_from_wcs`.
    sregions : sequence of str or numpy.ndarray, optional
        ``S_REGION`` strings (or ``(N, 2)`` footprints) of the exposures, as stored in their
        metadata; when omitted they are computed with :func:`sregion_footprint`.
    pixel_scale_ratio : float, optional
        Output over input pixel scale (ignored when ``pixel_scale`` is given).
    pixel_scale : float, optional
        Absolute output pixel scale in arcsec.
    rotation : float, optional
        Position angle of the output Y axis (degrees east of north); `None` keeps the
        orientation of the first exposure.
    crpix : (float, float), optional
        0-based ``(x, y)`` of the reference pixel.
    crval : (float, float), optional
        ``(ra, dec)`` of the reference pixel in degrees.
    output_shape : (int, int), optional
        ``(ny, nx)`` of the output (numpy order).
    names : sequence of str, optional
        Exposure names, used in error messages.
    max_pixels : int, optional
        Largest allowed ``ny * nx``; a larger grid raises :class:`GridTooLargeError` before
        any array is allocated.

    Returns
    -------
    OutputGrid
        The grid (its WCS has ``bounding_box`` and ``array_shape`` set as jwst sets them).

    Raises
    ------
    GridTooLargeError
        When the grid exceeds ``max_pixels``.
    ValueError
        When no inputs are given or the shape comes out smaller than 2 pixels.
    """
    from stcal.alignment.util import compute_scale, wcs_from_sregions
    from stcal.resample.utils import compute_mean_pixel_area

    if len(wcs_list) == 0:
        raise ValueError("No input WCS given.")
    if len(shapes) != len(wcs_list):
        raise ValueError("'shapes' must have one entry per WCS.")
    if names is None:
        names = [f"exposure {i}" for i in range(len(wcs_list))]

    if sregions is None:
        footprints = [sregion_footprint(w, s) for w, s in zip(wcs_list, shapes, strict=True)]
    else:
        footprints = []
        for s in sregions:
            if isinstance(s, str):
                footprints.extend(footprint_from_sregion(s))
            else:
                footprints.append(np.asarray(s, dtype=float))

    ref_wcs = wcs_list[0]
    ref_shape = tuple(shapes[0])
    if ref_wcsinfo is None:
        ref_wcsinfo = wcsinfo_from_wcs(ref_wcs, ref_shape)
    ref_wcsinfo = dict(ref_wcsinfo)

    if pixel_scale is None:
        pscale_in0 = compute_scale(
            ref_wcs, fiducial=np.array([ref_wcsinfo["ra_ref"], ref_wcsinfo["dec_ref"]])
        )
        pscale_deg = pscale_in0 * pixel_scale_ratio
        ratio = float(pixel_scale_ratio)
    else:
        pscale_deg = pixel_scale / 3600.0
        pscale_in0 = np.rad2deg(math.sqrt(compute_mean_pixel_area(ref_wcs, shape=ref_shape)))
        ratio = float(pscale_deg / pscale_in0)

    wcs = wcs_from_sregions(
        footprints,
        ref_wcs=ref_wcs,
        ref_wcsinfo=ref_wcsinfo,
        pscale_ratio=ratio,
        pscale=pscale_deg,
        rotation=rotation,
        shape=None if output_shape is None else tuple(int(s) for s in output_shape),
        crpix=None if crpix is None else tuple(crpix),
        crval=None if crval is None else tuple(crval),
    )
    shape = (int(wcs.array_shape[0]), int(wcs.array_shape[1]))

    check_grid_size(shape, max_pixels, footprints[: len(names)], names)

    tr = wcs.forward_transform
    pc = np.asarray(tr.pc, dtype=float)
    return OutputGrid(
        wcs=wcs,
        shape=shape,
        pixel_scale=float(3600.0 * pscale_deg),
        pixel_scale_ratio=ratio,
        crpix=(float(tr.crpix[0]), float(tr.crpix[1])),
        crval=(float(tr.crval[0]), float(tr.crval[1])),
        rotation=_rotation_from_pc(pc),
        pc=tuple(float(v) for v in pc.ravel()),  # type: ignore[arg-type]
    )


def grid_from_wcs(
    wcs: gwcs.WCS,
    shape: Sequence[int] | None = None,
    *,
    pixel_scale: float | None = None,
    pixel_scale_ratio: float | None = None,
) -> OutputGrid:
    """Wrap a user-supplied output WCS (e.g. jwst's ``output_wcs`` ASDF file) as a grid.

    Mirrors ``load_custom_wcs`` + ``Resample.__init__``: ``shape`` overrides the WCS shape,
    otherwise ``array_shape`` or the bounding box is used; the pixel scale, when not given,
    is the square root of the mean pixel area of the WCS. The WCS is copied, not modified.

    Parameters
    ----------
    wcs : gwcs.WCS
        Celestial output WCS.
    shape : (int, int), optional
        ``(ny, nx)``.
    pixel_scale : float, optional
        Pixel scale in arcsec (e.g. ``pixel_scale`` stored next to the WCS).
    pixel_scale_ratio : float, optional
        Known ratio to the input pixel scale; `None` lets the caller compute it from the first
        input with :func:`pixel_scale_ratio_from_area`, as stcal does.

    Returns
    -------
    OutputGrid
        The grid; ``crpix``/``crval``/``rotation`` are read from a FITS-imaging transform
        or estimated at the grid centre for other transforms.
    """
    import copy

    from stcal.resample.utils import compute_mean_pixel_area

    wcs = copy.deepcopy(wcs)
    if shape is not None:
        wcs.array_shape = tuple(int(s) for s in shape)
    elif wcs.array_shape is None:
        if wcs.bounding_box is None:
            raise ValueError("output_shape is required for a WCS without shape or bounding box.")
        bb = wcs.bounding_box.bounding_box(order="C")
        wcs.array_shape = tuple(int(axs[1] + 0.5) for axs in bb)
    shp = (int(wcs.array_shape[0]), int(wcs.array_shape[1]))
    if pixel_scale is None:
        pixel_scale = float(3600.0 * np.rad2deg(math.sqrt(compute_mean_pixel_area(wcs))))

    tr = wcs.forward_transform
    if all(hasattr(tr, a) for a in ("crpix", "crval", "pc")):
        crpix = (float(tr.crpix[0]), float(tr.crpix[1]))
        crval = (float(tr.crval[0]), float(tr.crval[1]))
        pc = np.asarray(tr.pc, dtype=float)
        rot = _rotation_from_pc(pc)
    else:
        info = wcsinfo_from_wcs(wcs, shp)
        crpix = ((shp[1] - 1) / 2.0, (shp[0] - 1) / 2.0)
        crval = (info["ra_ref"], info["dec_ref"])
        rot = info["roll_ref"]
        pc = np.eye(2)
    return OutputGrid(
        wcs=wcs,
        shape=shp,
        pixel_scale=float(pixel_scale),
        pixel_scale_ratio=pixel_scale_ratio,
        crpix=crpix,
        crval=crval,
        rotation=rot,
        pc=tuple(float(v) for v in pc.ravel()),  # type: ignore[arg-type]
    )

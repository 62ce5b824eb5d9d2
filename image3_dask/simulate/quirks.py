"""Features of real stage-2 (``calwebb_image2``) products that the simulator can imitate.

Archive ``*_cal.fits`` files carry things a plain simulation does not: subarrays, the DQ bits
and NaN pixels ``image2`` writes, a background already subtracted, several visits. The helpers
here describe them for :func:`image3_dask.simulate.simulate`:

- :class:`Subarray` and :func:`resolve_subarrays`: ``meta.subarray`` (1-based ``xstart``,
  ``ystart`` in the detector's science frame) and the subarray's place in the simulated detector
  array. Named subarrays are approximations of the SIAF apertures (MIRI ``SUB256``,
  ``BRIGHTSKY``, ``SUB128``, ``SUB64``; NIRCam ``SUB400P``, ``SUB160P``, ``SUB64P``, which real
  programs use on NRCB1).
- :func:`image2_dq`: saturated star cores, jump-flagged, low-QE, unflat-fielded and other bad
  pixels, a ``NON_SCIENCE`` block, with NaN in SCI/ERR/VAR wherever ``DO_NOT_USE`` is set (as
  jwst's ``calwebb_image2`` writes since jwst 1.13).
- :func:`visit_layout`: observation and visit of each exposure; exposure numbers restart at 1 in
  every visit, as in real programs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "DQ_EXTRA_FLAGS",
    "IMAGE2_BACKGROUND_MODES",
    "NAMED_SUBARRAYS",
    "Subarray",
    "VisitSlot",
    "image2_dq",
    "resolve_subarrays",
    "visit_layout",
]

#: ``(name, xstart, ystart, xsize, ysize)`` of named subarrays, per instrument (1-based starts
#: in the full detector frame; approximately the SIAF values).
NAMED_SUBARRAYS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "MIRI": {
        "SUB256": (413, 51, 256, 256),
        "BRIGHTSKY": (457, 51, 512, 512),
        "SUB128": (1, 889, 136, 128),
        "SUB64": (1, 779, 72, 64),
    },
    # the point-source subarrays, in the corner of NRCB1 far from the detector's readout
    # origin (e.g. SUB64P: xstart = ystart = 1985 in real NRCB1 files)
    "NIRCAM": {
        "SUB400P": (1649, 1649, 400, 400),
        "SUB160P": (1889, 1889, 160, 160),
        "SUB64P": (1985, 1985, 64, 64),
    },
}

#: Values of ``simulate(image2_background=...)``.
IMAGE2_BACKGROUND_MODES = ("bkg_subtract", "subtracted", "recorded", "undefined")


@dataclass(frozen=True)
class Subarray:
    """A subarray of the simulated detector array (``meta.subarray``).

    Attributes
    ----------
    name : str
        ``meta.subarray.name`` (``FULL``, ``SUB256``, ``GENERIC`` ...).
    xstart, ystart : int
        1-based first column and row in the detector array.
    xsize, ysize : int
        Size of the subarray (the SCI array is ``(ysize, xsize)``).
    """

    name: str
    xstart: int
    ystart: int
    xsize: int
    ysize: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the SCI array."""
        return (self.ysize, self.xsize)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the subarray in the detector array."""
        y0, x0 = self.ystart - 1, self.xstart - 1
        return slice(y0, y0 + self.ysize), slice(x0, x0 + self.xsize)

    @property
    def is_full(self) -> bool:
        """Whether this is the whole detector array (no subarray offset)."""
        return self.name == "FULL"

    def to_json(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


def _one_subarray(spec, inst_name: str, full_shape: tuple[int, int], det_shape) -> Subarray:
    ny, nx = det_shape
    if spec is None:
        name = "FULL" if tuple(det_shape) == tuple(full_shape) else "GENERIC"
        return Subarray(name, 1, 1, nx, ny)
    if isinstance(spec, Subarray):
        sub = spec
    elif isinstance(spec, str):
        named = NAMED_SUBARRAYS.get(inst_name, {})
        key = spec.upper()
        if key not in named:
            raise ValueError(
                f"unknown {inst_name} subarray {spec!r}; named ones are {sorted(named)} "
                "(or give a dict with xstart, ystart, xsize, ysize)"
            )
        if tuple(det_shape) != tuple(full_shape):
            raise ValueError(
                f"subarray {key} is placed on the full {inst_name} detector; do not crop it with "
                f"shape={tuple(det_shape)}"
            )
        sub = Subarray(key, *named[key])
    elif isinstance(spec, Mapping):
        try:
            sub = Subarray(
                str(spec.get("name", "GENERIC")),
                int(spec["xstart"]),
                int(spec["ystart"]),
                int(spec["xsize"]),
                int(spec["ysize"]),
            )
        except KeyError as exc:
            raise ValueError(f"subarray {dict(spec)} lacks {exc}") from None
    else:
        raise TypeError(f"subarray must be a name, a dict or None, not {type(spec).__name__}")
    if sub.xstart < 1 or sub.ystart < 1 or sub.xsize < 8 or sub.ysize < 8:
        raise ValueError(f"invalid subarray {sub}")
    if sub.xstart - 1 + sub.xsize > nx or sub.ystart - 1 + sub.ysize > ny:
        raise ValueError(f"subarray {sub} does not fit in the {ny}x{nx} detector array")
    if sub.is_full and sub.shape != tuple(det_shape):
        raise ValueError("a FULL subarray must cover the whole detector array")
    return sub


def resolve_subarrays(
    spec, n_exposures: int, inst_name: str, full_shape: tuple[int, int], det_shape
) -> list[Subarray]:
    """The subarray of every exposure.

    Parameters
    ----------
    spec : None, str, dict or sequence of them
        ``None``: the whole simulated detector array (``FULL`` when it is the full frame,
        ``GENERIC`` for a crop). A name from :data:`NAMED_SUBARRAYS` (the detector array must be
        the full frame). A dict with ``xstart``, ``ystart`` (1-based), ``xsize``, ``ysize`` and an
        optional ``name`` (default ``GENERIC``), within the simulated array. A sequence of those,
        one per exposure (mixed full-frame and subarray members).
    n_exposures : int
        Number of exposures.
    inst_name : str
        ``MIRI`` or ``NIRCAM``.
    full_shape, det_shape : tuple of int
        The instrument's full frame and the simulated detector array.

    Returns
    -------
    list of Subarray
        One per exposure (shared by all its detectors).
    """
    if spec is None or isinstance(spec, (str, Mapping, Subarray)):
        specs = [spec] * n_exposures
    elif isinstance(spec, Sequence):
        specs = list(spec)
        if len(specs) != n_exposures:
            raise ValueError(f"{len(specs)} subarrays given for {n_exposures} exposures")
    else:
        raise TypeError(f"subarray must be a name, a dict, a sequence or None, not {spec!r}")
    return [_one_subarray(s, inst_name, tuple(full_shape), tuple(det_shape)) for s in specs]


#: DQ bits :func:`image2_dq` adds, with whether they come with ``DO_NOT_USE``.
DQ_EXTRA_FLAGS = {
    "SATURATED": True,
    "OTHER_BAD_PIXEL": True,
    "NO_FLAT_FIELD": True,
    "JUMP_DET": False,
    "LOW_QE": False,
    "NON_SCIENCE": False,
}


def image2_dq(
    rng: np.random.Generator,
    model: np.ndarray,
    allowed: np.ndarray,
    saturation: float,
    fraction: float = 2e-3,
) -> np.ndarray:
    """Extra DQ of an image2 product: saturated cores, scattered flags, a ``NON_SCIENCE`` block.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random numbers (per file).
    model : numpy.ndarray
        Noise-free surface brightness of the file (MJy/sr).
    allowed : numpy.ndarray
        Pixels that may be flagged (not reference or bad pixels).
    saturation : float
        Pixels of ``model`` above it are ``SATURATED | DO_NOT_USE``.
    fraction : float
        Fraction of the pixels given each scattered flag (``OTHER_BAD_PIXEL | DO_NOT_USE``,
        ``NO_FLAT_FIELD | DO_NOT_USE``, ``JUMP_DET``, ``LOW_QE``).

    Returns
    -------
    numpy.ndarray
        ``uint32`` DQ bits to OR into the file's DQ. A block of about 6 % of the columns at the
        right edge is ``NON_SCIENCE`` without ``DO_NOT_USE`` (its pixels keep valid values, so a
        step that ignores ``NON_SCIENCE`` would use them).
    """
    from stdatamodels.jwst.datamodels import dqflags

    flag = dqflags.pixel
    dnu = flag["DO_NOT_USE"]
    dq = np.zeros(model.shape, np.uint32)
    dq[(model > saturation) & allowed] |= flag["SATURATED"] | dnu
    idx = np.flatnonzero(allowed.ravel())
    for name in ("OTHER_BAD_PIXEL", "NO_FLAT_FIELD", "JUMP_DET", "LOW_QE"):
        k = int(round(fraction * idx.size))
        pick = rng.choice(idx, size=k, replace=False) if k else np.zeros(0, int)
        bits = flag[name] | (dnu if DQ_EXTRA_FLAGS[name] else 0)
        dq.ravel()[pick] |= np.uint32(bits)
    ny, nx = model.shape
    width = max(2, int(round(0.06 * nx)))
    block = np.zeros(model.shape, bool)
    block[:, nx - width - 4 : nx - 4] = True
    dq[block & allowed] |= flag["NON_SCIENCE"]
    return dq


@dataclass(frozen=True)
class VisitSlot:
    """Where one exposure sits in the program: observation, visit and exposure number."""

    observation: str
    visit: str
    exposure_number: int
    visit_index: int


def visit_layout(visits, n_exposures: int, observation: str) -> list[VisitSlot]:
    """Observation, visit and exposure number of every exposure.

    Parameters
    ----------
    visits : int or sequence of (str, str)
        Number of visits of observation ``observation`` (``"001"``, ``"002"`` ...), or the
        ``(observation, visit)`` of each visit. The exposures are split into that many
        consecutive runs of (nearly) equal length; exposure numbers restart at 1 in every visit.
    n_exposures : int
        Number of exposures.
    observation : str
        The observation number when ``visits`` is an int.

    Returns
    -------
    list of VisitSlot
        One per exposure, in order.
    """
    if isinstance(visits, (int, np.integer)):
        if visits < 1:
            raise ValueError("visits must be at least 1")
        pairs = [(observation, f"{v + 1:03d}") for v in range(int(visits))]
    else:
        pairs = [(str(o), str(v)) for o, v in visits]
        if not pairs:
            raise ValueError("visits must not be empty")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"visits repeat: {pairs}")
    if len(pairs) > n_exposures:
        raise ValueError(f"{len(pairs)} visits for {n_exposures} exposures")
    out = []
    for k, chunk in enumerate(np.array_split(np.arange(n_exposures), len(pairs))):
        obs, visit = pairs[k]
        out.extend(VisitSlot(obs, visit, j + 1, k) for j in range(len(chunk)))
    return out

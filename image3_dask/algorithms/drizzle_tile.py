"""Drizzle of one output tile, computed as stcal's ``Resample`` computes the whole mosaic.

What stcal 1.20 (``stcal.resample.Resample.add_model`` / ``finalize``) does per exposure and
this module reproduces per tile:

- weight map ``build_driz_weight``: ``1/var_rnoise`` (ivm), measurement (or exposure) time
  (exptime) or 1, times the DQ "good" mask of ``good_bits``; see :func:`build_weight`;
- the science array minus ``meta.background.level`` when the background was not subtracted;
- SCI, WHT and CON: one drizzle with ``in_units="cps"``, ``iscale=1`` (stcal's intensity
  scale of imaging data), ``pixel_scale_ratio`` (kernel size), ``wht_scale=1``, the input
  range of the WCS bounding box; the context bit of an exposure is its index in the
  association (plane ``k // 32``, bit ``k % 32``), so a tile that sees only some exposures
  still sets the right bits;
- each variance ``v``: ``sqrt(v)`` drizzled alone (NaN fill, same kernel/weights), squared,
  then combined as ``sum(v_i w_i**2) / (sum w_i)**2`` where ``w_i`` is ``1 / resampled
  var_rnoise_i`` (ivm) or the measurement time (exptime), and finally divided by
  ``pixel_scale_ratio**2``;
- ERR: ``sqrt(nansum(variances))``, NaN where all are NaN (``compute_err="from_var"``), or
  drizzled input ERR divided by ``pixel_scale_ratio`` (``"driz_err"``).

Drizzle itself is the ``drizzle`` package: ``drizzle.resample.Drizzle``, and its C kernel
directly only where the context bits need the exposure's association index. A tile is
drizzled onto the tile grown by :func:`kernel_halo` (clipped to the mosaic, see
:meth:`image3_dask.algorithms.tiles.Tile.padded`) and cropped, which reproduces the
full-frame result: every output pixel receives the same contributions in the same order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from drizzle.resample import Drizzle

from image3_dask.io.dq_flags import jwst_pixel_flags

__all__ = [
    "CTX_PLANE_BITS",
    "KERNELS",
    "DrizzleInput",
    "build_weight",
    "drizzle_tile",
    "kernel_halo",
    "n_ctx_planes",
]

CTX_PLANE_BITS = 32
KERNELS = ("square", "gaussian", "point", "turbo", "lanczos2", "lanczos3")
VARIANCE_NAMES = ("var_rnoise", "var_flat", "var_poisson")


def n_ctx_planes(n_inputs: int) -> int:
    """Number of 32-bit context planes for ``n_inputs`` exposures (as drizzle allocates)."""
    return max(int(n_inputs) - 1, 0) // CTX_PLANE_BITS + 1


def kernel_halo(kernel: str, pixfrac: float = 1.0, pixel_scale_ratio: float = 1.0) -> int:
    """Reach of one input pixel on the output grid, in output pixels (rounded up, padded).

    Parameters
    ----------
    kernel : str
        Drizzle kernel name.
    pixfrac : float, optional
        Pixel shrink factor.
    pixel_scale_ratio : float, optional
        Output over input pixel scale.

    Returns
    -------
    int
        Margin such that any input pixel whose mapped centre is farther than it from a region
        cannot contribute to that region, plus a safety margin for distortion and drizzle's
        scan-line rounding.
    """
    s = max(float(pixel_scale_ratio), 1e-6)
    pf = float(pixfrac)
    k = kernel.lower()
    if k not in KERNELS:
        raise ValueError(f"Unsupported kernel '{kernel}'. Use one of {', '.join(KERNELS)}.")
    pixel = 0.5 * math.sqrt(2.0) / s  # half diagonal of an input pixel
    if k == "square":
        reach = max(pixel * pf, 0.5)
    elif k == "point":
        reach = 0.5
    elif k == "turbo":
        reach = 0.5 * pf / s * math.sqrt(2.0)
    elif k == "gaussian":
        reach = max(2.5 * pf / 2.3548 / s, 1.2 / s) * math.sqrt(2.0)
    else:  # lanczos: range is offset by one pixel in drizzle
        order = 2 if k == "lanczos2" else 3
        reach = (order * pf / s + 1.0) * math.sqrt(2.0)
    # 25% for distortion + whole input pixel that must fit inside drizzle's output array
    return int(math.ceil(1.25 * reach + 2.0 * pixel + 1.0))


def build_weight(
    dq: np.ndarray | None,
    var_rnoise: np.ndarray | None,
    *,
    weight_type: str | None,
    good_bits: int | str | None,
    exptime: float | None = None,
    shape: Sequence[int] | None = None,
    flag_name_map: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Drizzle weight map of an exposure (stcal ``build_driz_weight``).

    Parameters
    ----------
    dq : numpy.ndarray or None
        DQ bit array; `None` means all pixels good.
    var_rnoise : numpy.ndarray or None
        Read-noise variance (for ``"ivm"``); missing -> weight 1.
    weight_type : {"ivm", "exptime", None}
        ``"ivm"``: ``1/var_rnoise`` (0 where not finite); ``"exptime"``: ``exptime``
        (the measurement time when known); `None`: 1.
    good_bits : int, str or None
        DQ bits to ignore, with astropy ``bitmask`` semantics: an integer sum, a string such
        as ``"4,8"`` / ``"JUMP_DET+DROPOUT"``, a leading ``"~"`` to list the *bad* bits
        instead (jwst default ``"~DO_NOT_USE+NON_SCIENCE"``), or `None` to ignore DQ.
    exptime : float, optional
        Time for ``"exptime"`` weighting.
    shape : (int, int), optional
        Array shape when both ``dq`` and ``var_rnoise`` are `None`.
    flag_name_map : mapping, optional
        Mnemonic -> bit value; default the JWST pixel flags
        (:func:`image3_dask.io.dq_flags.jwst_pixel_flags`).

    Returns
    -------
    numpy.ndarray
        float32 weights, 0 for bad pixels: stcal's ``build_driz_weight`` of the arrays.
    """
    from stcal.resample.utils import build_driz_weight

    if shape is None:
        ref = dq if dq is not None else var_rnoise
        if ref is None:
            raise ValueError("Give 'shape' when neither 'dq' nor 'var_rnoise' is given.")
        shape = ref.shape
    shape = tuple(shape)
    if weight_type not in ("ivm", "exptime", None):
        raise ValueError(
            f"Invalid weight type: {weight_type!r}. Allowed: 'ivm', 'exptime' or None."
        )
    if weight_type == "exptime" and exptime is None:
        raise ValueError("'exptime' weighting needs 'exptime'.")
    if flag_name_map is None and isinstance(good_bits, str):
        flag_name_map = jwst_pixel_flags()
    model: dict[str, object] = {
        # stcal reads only the shape of "data"; a missing DQ array means all pixels good
        "data": np.broadcast_to(np.float32(0), shape),
        "dq": np.broadcast_to(np.uint32(0), shape) if dq is None else dq,
        "measurement_time": exptime,
        "exposure_time": exptime,
    }
    if var_rnoise is not None:
        model["var_rnoise"] = var_rnoise
    return build_driz_weight(
        model, weight_type=weight_type, good_bits=good_bits, flag_name_map=flag_name_map
    )


@dataclass
class DrizzleInput:
    """One exposure's contribution to a tile (arrays cropped with ``pixmap_for_region``).

    Attributes
    ----------
    sci : numpy.ndarray
        Science crop.
    pixmap : numpy.ndarray
        ``(ny, nx, 2)`` local map (output coordinates relative to the drizzled region).
    ctx_id : int
        Index of the exposure in the association (global, the same in every tile).
    exptime : float
        Exposure time (drizzle's ``exptime``; must be > 0).
    weight : numpy.ndarray or None
        Weight map crop (:func:`build_weight`); `None` means 1.
    var_rnoise, var_poisson, var_flat : numpy.ndarray or None
        Variance crops.
    err : numpy.ndarray or None
        ERR crop (only for ``compute_err="driz_err"``).
    dq : numpy.ndarray or None
        DQ crop (only for ``propagate_dq``).
    measurement_time : float or None
        Used for ``weight_type="exptime"`` variance weights (else ``exptime``).
    background_level : float or None
        ``meta.background.level``.
    background_subtracted : bool
        ``meta.background.subtracted``; when `False` the level is subtracted from ``sci``.
    in_range : (int, int, int, int) or None
        ``(xmin, xmax, ymin, ymax)`` of usable pixels in crop coordinates
        (:func:`image3_dask.algorithms.pixmap.local_range`); `None` means the whole crop.
    """

    sci: np.ndarray
    pixmap: np.ndarray
    ctx_id: int
    exptime: float
    weight: np.ndarray | None = None
    var_rnoise: np.ndarray | None = None
    var_poisson: np.ndarray | None = None
    var_flat: np.ndarray | None = None
    err: np.ndarray | None = None
    dq: np.ndarray | None = None
    measurement_time: float | None = None
    background_level: float | None = None
    background_subtracted: bool = True
    in_range: tuple[int, int, int, int] | None = None


class _ContextDrizzle:
    """SCI, WHT, CON (and DQ) of one region, each exposure setting its association-wide bit.

    The attributes and ``add_image`` mirror ``drizzle.resample.Drizzle``, which numbers
    context bits by the order of its ``add_image`` calls. A tile sees only some of the
    exposures and each must set the bit of its index in the association: that is the one
    place where ``cdrizzle.tdriz`` is called directly, with the arguments ``Drizzle`` passes.
    """

    def __init__(self, shape, kernel, fillval, nplanes: int):
        # Drizzle interprets fillval and allocates SCI and WHT as it does for stcal
        alloc = Drizzle(kernel=kernel, fillval=fillval, out_shape=shape, disable_ctx=True)
        self.fillval = alloc.fillval
        self.out_img = alloc.out_img
        self.out_wht = alloc.out_wht
        self.out_ctx = np.zeros((nplanes, *shape), dtype=np.int32)
        self.out_dq: np.ndarray | None = None
        self.kernel = kernel

    def add_image(
        self,
        data,
        *,
        ctx_id: int,
        exptime: float,
        pixmap,
        dq=None,
        pixel_scale_ratio: float,
        weight_map,
        wht_scale: float,
        pixfrac: float,
        in_units: str,
        xmin: int,
        xmax: int,
        ymin: int,
        ymax: int,
    ) -> None:
        """``Drizzle.add_image`` for ``in_units="cps"``, ``iscale=1``, setting bit ``ctx_id``."""
        from drizzle import cdrizzle

        if exptime <= 0.0:
            raise ValueError("'exptime' must be strictly positive.")
        if in_units != "cps":
            raise ValueError("only in_units='cps' is supported")
        plane, bit = divmod(int(ctx_id), CTX_PLANE_BITS)
        if dq is not None:
            dq = np.asarray(dq, dtype=np.uint32)
            if self.out_dq is None:
                self.out_dq = np.zeros(self.out_img.shape, dtype=np.uint32)
        cdrizzle.tdriz(
            input=np.asarray(data, dtype=np.float32),
            weights=np.asarray(weight_map, dtype=np.float32),
            pixmap=np.asarray(pixmap, dtype=np.float64),
            output=self.out_img,
            counts=self.out_wht,
            context=self.out_ctx[plane],
            input2=None,
            output2=None,
            dq=dq,
            outdq=self.out_dq if dq is not None else None,
            uniqid=bit + 1,
            xmin=xmin,
            xmax=xmax,
            ymin=ymin,
            ymax=ymax,
            iscale=1.0,
            pscale_ratio=pixel_scale_ratio,
            pixfrac=pixfrac,
            kernel=self.kernel,
            in_units="cps",
            expscale=1.0,
            wtscale=wht_scale,
            fillstr=self.fillval,
            fillstr2="INDEF",
        )


def _add_image(
    driz: Drizzle | _ContextDrizzle,
    data,
    inp: DrizzleInput,
    weight,
    pixfrac,
    scale_ratio,
    in_range,
    dq=None,
) -> None:
    """Drizzle one exposure's crop with stcal's ``add_image`` arguments."""
    xmin, xmax, ymin, ymax = in_range
    kwargs = {
        "exptime": inp.exptime,
        "pixmap": inp.pixmap,
        "dq": dq,
        "pixel_scale_ratio": scale_ratio,
        "weight_map": weight,
        "wht_scale": 1.0,
        "pixfrac": pixfrac,
        "in_units": "cps",
        "xmin": xmin,
        "xmax": xmax,
        "ymin": ymin,
        "ymax": ymax,
    }
    if isinstance(driz, _ContextDrizzle):
        kwargs["ctx_id"] = inp.ctx_id
    driz.add_image(data, **kwargs)


def drizzle_tile(
    inputs: Sequence[DrizzleInput],
    out_shape: Sequence[int],
    *,
    kernel: str = "square",
    pixfrac: float = 1.0,
    fillval: float | str | None = "NAN",
    pixel_scale_ratio: float | None = 1.0,
    weight_type: str | None = "ivm",
    enable_ctx: bool = True,
    enable_var: bool = True,
    compute_err: bool | str | None = True,
    propagate_dq: bool = False,
    n_inputs: int | None = None,
    crop: tuple[slice, slice] | None = None,
) -> dict[str, np.ndarray]:
    """Drizzle exposures onto one output region, as stcal ``Resample`` does for the mosaic.

    Parameters
    ----------
    inputs : sequence of DrizzleInput
        Contributions, in association order (the order fixes the floating-point sums).
    out_shape : (int, int)
        Shape of the drizzled region (the tile grown by a halo, see
        :meth:`image3_dask.algorithms.tiles.Tile.padded`).
    kernel : {"square", "gaussian", "point", "turbo", "lanczos2", "lanczos3"}
        Drizzle kernel.
    pixfrac : float
        Pixel shrink factor.
    fillval : float, str or None
        Value of pixels without contributions (jwst default ``"NAN"``; `None`/``"INDEF"``
        leave them NaN).
    pixel_scale_ratio : float or None
        Output over input pixel scale: sets kernel sizes and scales variances by its
        inverse square (ERR by its inverse for ``"driz_err"``). `None` means 1 and no scaling.
    weight_type : {"ivm", "exptime", None}
        How the resampled variances are weighted (the input weight maps are given).
    enable_ctx : bool
        Compute the context image.
    enable_var : bool
        Resample the variance arrays.
    compute_err : bool, {"from_var", "driz_err"} or None
        `True`/``"from_var"``: ERR from the variances (implies ``enable_var``);
        ``"driz_err"``: drizzle the input ERR; `False`/`None`: no ERR.
    propagate_dq : bool
        OR-combine the DQ of contributing input pixels into ``"dq"``.
    n_inputs : int, optional
        Number of exposures in the association (sets the number of context planes); by
        default ``max(ctx_id) + 1``.
    crop : (slice, slice), optional
        Keep only this part of the region (e.g. ``Tile.crop_in(region)``).

    Returns
    -------
    dict of numpy.ndarray
        ``sci``, ``wht`` (float32), ``con`` (int32, ``(nplanes, ny, nx)``) if enabled,
        ``var_rnoise``, ``var_poisson``, ``var_flat`` (float32) if enabled, ``err`` if
        requested, ``dq`` (uint32) if requested.
    """
    k = kernel.lower()
    if k not in KERNELS:
        raise ValueError(f"Unsupported kernel '{kernel}'. Use one of {', '.join(KERNELS)}.")
    if compute_err is True:
        compute_err = "from_var"
    elif compute_err is False:
        compute_err = None
    if compute_err not in (None, "from_var", "driz_err"):
        raise ValueError(f"Invalid compute_err: {compute_err!r}")
    if compute_err == "from_var":
        enable_var = True
    if weight_type is not None and not (weight_type.startswith("ivm") or weight_type == "exptime"):
        raise ValueError(f"Unexpected weight type: {weight_type!r}")

    shape = (int(out_shape[0]), int(out_shape[1]))
    if n_inputs is None:
        n_inputs = max((int(i.ctx_id) for i in inputs), default=0) + 1
    nplanes = n_ctx_planes(n_inputs) if enable_ctx else None
    scale_ratio = 1.0 if pixel_scale_ratio is None else float(pixel_scale_ratio)

    main = (
        Drizzle(kernel=k, fillval=fillval, out_shape=shape, disable_ctx=True)
        if nplanes is None
        else _ContextDrizzle(shape, k, fillval, nplanes)
    )
    err_driz = (
        Drizzle(kernel=k, fillval=fillval, out_shape=shape, disable_ctx=True)
        if compute_err == "driz_err"
        else None
    )
    var_info = {
        name: {
            "wsum": np.full(shape, np.nan, dtype=np.float32),
            "wt": np.zeros(shape, dtype=np.float32),
        }
        for name in (VARIANCE_NAMES if enable_var else ())
    }

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a flux-conserving kernel")
        for inp in inputs:
            data = np.asarray(inp.sci, dtype=np.float32)
            ny, nx = data.shape
            if inp.pixmap.shape[:2] != data.shape:
                raise ValueError("'pixmap' shape is not consistent with 'sci' shape.")
            if not inp.background_subtracted and inp.background_level is not None:
                data = data - inp.background_level
            in_range = inp.in_range if inp.in_range is not None else (0, nx - 1, 0, ny - 1)
            xmin, xmax, ymin, ymax = in_range
            in_range = (max(xmin, 0), min(xmax, nx - 1), max(ymin, 0), min(ymax, ny - 1))
            weight = (
                np.ones_like(data)
                if inp.weight is None
                else np.asarray(inp.weight, dtype=np.float32)
            )
            dq = inp.dq if propagate_dq else None
            _add_image(main, data, inp, weight, pixfrac, scale_ratio, in_range, dq=dq)
            if err_driz is not None and inp.err is not None:
                _add_image(err_driz, inp.err, inp, weight, pixfrac, scale_ratio, in_range)
            if enable_var:
                _add_variances(
                    var_info, inp, weight, pixfrac, scale_ratio, in_range, k, shape, weight_type
                )

    out: dict[str, np.ndarray] = {"sci": main.out_img, "wht": main.out_wht}
    if nplanes is not None:
        out["con"] = main.out_ctx
    if propagate_dq:
        # the DQ array is allocated with the first input that has one
        out["dq"] = main.out_dq if main.out_dq is not None else np.zeros(shape, np.uint32)

    if enable_var:
        scaling = 1.0 if pixel_scale_ratio is None else 1.0 / pixel_scale_ratio**2
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "invalid value*", RuntimeWarning)
            warnings.filterwarnings("ignore", "divide by zero*", RuntimeWarning)
            for name in VARIANCE_NAMES:
                info = var_info[name]
                out[name] = (info["wsum"] * scaling / info["wt"] / info["wt"]).astype(np.float32)

    if compute_err == "driz_err":
        assert err_driz is not None
        out["err"] = err_driz.out_img / (1.0 if pixel_scale_ratio is None else pixel_scale_ratio)
    elif compute_err == "from_var":
        comps = [out[name] for name in VARIANCE_NAMES]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN", RuntimeWarning)
            err = np.sqrt(np.nansum(comps, axis=0))
        err[np.all(np.isnan(comps), axis=0)] = np.nan
        out["err"] = err

    if crop is not None:
        sy, sx = crop
        out = {key: np.ascontiguousarray(val[..., sy, sx]) for key, val in out.items()}
    return out


def _footprint_box(
    inp: DrizzleInput, in_range, reach: int, shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """The part of the region that the usable pixels of ``inp`` can reach (or None)."""
    xmin, xmax, ymin, ymax = in_range
    pm = inp.pixmap[ymin : ymax + 1, xmin : xmax + 1]
    x, y = pm[..., 0], pm[..., 1]
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x, y = x[ok], y[ok]
    bx0 = max(int(math.floor(x.min())) - reach, 0)
    bx1 = min(int(math.ceil(x.max())) + reach + 1, shape[1])
    by0 = max(int(math.floor(y.min())) - reach, 0)
    by1 = min(int(math.ceil(y.max())) + reach + 1, shape[0])
    if bx1 <= bx0 or by1 <= by0:
        return None
    return slice(by0, by1), slice(bx0, bx1)


def _add_variances(
    var_info, inp, weight, pixfrac, scale_ratio, in_range, kernel, shape, weight_type
):
    """Drizzle and accumulate the variances of one input (stcal resample_variance_arrays).

    stcal drizzles each variance onto a whole output-sized array per input and combines them
    there; here the same is done on the box of the region that the input can reach (its
    mapped footprint grown by the kernel's reach), which gives the same values bit for bit
    (the pixel map is shifted by whole pixels, an exact operation) for a fraction of the
    array work when the input covers part of the region.
    """
    box = _footprint_box(inp, in_range, kernel_halo(kernel, pixfrac, scale_ratio), shape)
    if box is None:
        return
    sy, sx = box
    bshape = (sy.stop - sy.start, sx.stop - sx.start)
    if bshape != tuple(shape):
        shifted = inp.pixmap - np.array([sx.start, sy.start], dtype=inp.pixmap.dtype)
        inp = replace(inp, pixmap=shifted)
    resampled: dict[str, np.ndarray] = {}
    for name in VARIANCE_NAMES:
        v = getattr(inp, name)
        if v is None or v.size == 0 or v.shape != inp.sci.shape:
            continue
        # as stcal's _resample_one_variance_array: sqrt(variance) drizzled alone, squared
        driz = Drizzle(kernel=kernel, fillval=np.nan, out_shape=bshape, disable_ctx=True)
        _add_image(driz, np.sqrt(v), inp, weight, pixfrac, scale_ratio, in_range)
        resampled[name] = driz.out_img**2

    if weight_type is not None and weight_type.startswith("ivm"):
        rn = resampled.get("var_rnoise")
        w = np.zeros(bshape)
        if rn is not None:
            mask = (rn > 0) & np.isfinite(rn)
            w[mask] = np.reciprocal(rn[mask])
        else:
            # stcal has no defined behaviour here; weight 1 wherever a variance landed
            w[:] = 1.0
    else:
        t = inp.measurement_time if inp.measurement_time is not None else inp.exptime
        w = np.full(bshape, t)

    for name, var in resampled.items():
        wsum = var_info[name]["wsum"][sy, sx]
        wt = var_info[name]["wt"][sy, sx]
        mask = (var >= 0) & np.isfinite(var) & (w > 0)
        # stcal's sums on the masked pixels, evaluated on the whole box (the same operations
        # pixel by pixel, in float64, stored as float32) and kept where the mask holds:
        # boolean gathers and scatters cost more than the arithmetic
        with np.errstate(all="ignore"):
            add = var * w * w
            # np.nansum([old, add], axis=0) without stacking: NaN (nothing yet) + add = add
            np.copyto(wsum, np.where(np.isnan(wsum), add, wsum + add), where=mask, casting="unsafe")
            np.copyto(wt, wt + w, where=mask, casting="unsafe")

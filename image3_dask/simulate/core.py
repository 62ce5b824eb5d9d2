"""``simulate()``: level-2b JWST imaging exposures with known truth.

Every file is rendered and written one at a time, so hundreds of exposures never sit in memory
together. The simulation is deterministic for a given ``seed`` (and set of parameters).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stdatamodels.jwst.datamodels import dqflags

from image3_dask.io.asn import make_association, write_association
from image3_dask.simulate import wcs as simwcs
from image3_dask.simulate.detector import (
    bad_pixels,
    bad_pixels_in,
    cosmic_rays,
    electron_scale,
    image2_background_meta,
    is_whole_array,
    pixel_area,
    reference_pixel_mask,
    subarray_json,
)
from image3_dask.simulate.instruments import Instrument, get_instrument
from image3_dask.simulate.patterns import dither_pattern, field_extent_ideal, mosaic_pattern
from image3_dask.simulate.psf import get_psf
from image3_dask.simulate.quirks import (
    IMAGE2_BACKGROUND_MODES,
    Subarray,
    image2_dq,
    resolve_subarrays,
    visit_layout,
)
from image3_dask.simulate.render import render_flux
from image3_dask.simulate.scene import SERSIC_TRUNCATION, make_scene, sky_to_tangent
from image3_dask.simulate.truth import (
    TRUTH_FORMAT,
    TRUTH_VERSION,
    ExposureTruth,
    Truth,
    load_truth,
)
from image3_dask.simulate.writer import ExposureMeta, cal_filename, write_cal

log = logging.getLogger(__name__)

__all__ = ["SimulationResult", "simulate", "truth_image"]

DO_NOT_USE = dqflags.pixel["DO_NOT_USE"]
HOT = dqflags.pixel["HOT"]
DEAD = dqflags.pixel["DEAD"]
REFERENCE_PIXEL = dqflags.pixel["REFERENCE_PIXEL"]

FLAT_ERROR = 0.002  # relative flat-field uncertainty (VAR_FLAT)
_MJD0 = 60676.0  # 2025-01-01T00:00:00


@dataclass
class SimulationResult:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    asn_path : Path
        The ``image3`` association (``<out_dir>/asn.json``).
    cal_paths : list of Path
        The ``*_cal.fits`` files, in association order.
    truth_path : Path
        The truth JSON file (``<out_dir>/truth.json``).
    truth : Truth
        The loaded truth.
    """

    asn_path: Path
    cal_paths: list[Path]
    truth_path: Path
    truth: Truth


def simulate(
    instrument: str = "miri",
    n: int | None = 4,
    out_dir: str | os.PathLike = "sim",
    seed: int = 0,
    pattern: str = "dither",
    shape: tuple[int, int] | None = None,
    *,
    n_detectors: int = 1,
    pointing_error: float = 0.3,
    roll_error: float = 10.0,
    n_stars: int = 150,
    n_galaxies: int = 50,
    flux_range_jy: tuple[float, float] | None = None,
    sky: float | None = None,
    sky_variation: float = 0.1,
    cosmic_ray_rate: float = 3e-4,
    bad_pixel_fraction: float = 1e-3,
    noise: bool = True,
    rows: int | None = None,
    cols: int | None = None,
    overlap: float = 0.12,
    exposures_per_pointing: int = 1,
    ra: float = 53.16,
    dec: float = -27.78,
    roll: float = 30.0,
    program: str = "01234",
    observation: str = "001",
    product_name: str | None = None,
    asn_id: str = "a3001",
    oversample: int = 5,
    subarray: str | dict | Subarray | Sequence[str | dict | Subarray | None] | None = None,
    dq_extras: bool = False,
    image2_background: str | None = None,
    visits: int | Sequence[tuple[str, str]] = 1,
    visit_roll: float = 0.0,
    dither_scale: float = 1.0,
    detectors: Sequence[str] | None = None,
) -> SimulationResult:
    """Simulate a set of level-2b (``*_cal.fits``) imaging exposures with known truth.

    Parameters
    ----------
    instrument : {"miri", "nircam"}
        MIRI imager (F770W, 0.11"/pix) or NIRCam short wavelength (F200W, 0.031"/pix).
    n : int
        Number of exposures (each has ``n_detectors`` files). For a mosaic it may be ``None``
        when ``rows`` and ``cols`` are given.
    out_dir : path-like
        Output folder (created).
    seed : int
        Random seed; the output is deterministic for a given seed and parameters.
    pattern : {"dither", "mosaic"}
        A 4-point dither of a few arcsec, or a ``rows x cols`` mosaic.
    shape : tuple of int, optional
        Detector array shape ``(ny, nx)`` (a centred crop of the detector); default full frame.
    n_detectors : int
        Detectors per exposure (NIRCam: up to 8, NRCA1..4, NRCB1..4); all files of an exposure
        share the exposure number and so jwst's ``group_id``.
    pointing_error : float
        RMS (arcsec, per axis) of the pointing error injected in the written WCS.
    roll_error : float
        RMS (arcsec) of the roll error injected in the written WCS.
    n_stars, n_galaxies : int
        Mean numbers of stars and galaxies per *full* detector field of view (source densities;
        the totals scale with the area of the whole field, so a cropped ``shape`` holds fewer).
    flux_range_jy : tuple, optional
        Star flux range (Jy); default per instrument.
    sky : float, optional
        Mean sky level (MJy/sr); default per instrument. Each exposure gets
        ``sky * (1 + U(-sky_variation, sky_variation))`` (same for all its detectors).
    cosmic_ray_rate : float
        Cosmic-ray events per pixel and exposure (half single pixels, half 2-8 pixel tracks).
    bad_pixel_fraction : float
        Fraction of hot/dead pixels of each detector (flagged ``DO_NOT_USE`` + ``HOT``/``DEAD``).
    noise : bool
        Add noise (the variance arrays are always written).
    rows, cols, overlap, exposures_per_pointing
        Mosaic layout: grid size, overlap of adjacent tiles (fraction of the field), exposures
        per tile (dithered by about 3 % of the field).
    ra, dec, roll : float
        Field centre (deg) and position angle of V3 there (deg).
    program, observation : str
        ``meta.observation`` program and observation numbers.
    product_name : str, optional
        Association product name (default ``"<instrument>_<pattern>"``).
    asn_id : str
        Association id.
    oversample : int
        Sub-pixels per axis used to integrate the PSF.
    subarray : str, dict or sequence, optional
        Write subarray exposures (see :func:`image3_dask.simulate.quirks.resolve_subarrays`):
        a named subarray (MIRI ``SUB256``, ``BRIGHTSKY``, ``SUB128``, ``SUB64``; NIRCam
        ``SUB400P``, ``SUB160P``, ``SUB64P``; the detector array must be the full frame), a
        dict ``{"xstart", "ystart", "xsize", "ysize"[, "name"]}`` (1-based, within ``shape``),
        or one of those (or ``None`` for the whole array) per exposure, which mixes full-frame
        and subarray members. The file gets ``meta.subarray``, a SCI array of the subarray's
        shape, the gwcs jwst's ``assign_wcs`` builds for a subarray (``Shift(xstart - 1) &
        Shift(ystart - 1)`` before the detector distortion, bounding box of the subarray) and
        ``meta.wcsinfo`` referred to the subarray's centre, as the SIAF subarray apertures are.
    dq_extras : bool
        Write the DQ and NaNs of a real ``calwebb_image2`` product (jwst >= 1.13): saturated
        star cores (``SATURATED | DO_NOT_USE``), scattered ``OTHER_BAD_PIXEL | DO_NOT_USE``,
        ``NO_FLAT_FIELD | DO_NOT_USE``, ``JUMP_DET`` and ``LOW_QE`` pixels, a block of
        ``NON_SCIENCE`` columns without ``DO_NOT_USE`` (valid values), and NaN in SCI, ERR and
        the variances wherever ``DO_NOT_USE`` is set (hot and dead pixels included; without it
        they keep their values). See :func:`image3_dask.simulate.quirks.image2_dq`.
    image2_background : {None, "bkg_subtract", "subtracted", "recorded", "undefined"}
        What the image2 stage did with the background. ``"bkg_subtract"``: a background
        estimate (the sky within 1 %) is subtracted from SCI and ``cal_step.bkg_subtract`` is
        ``COMPLETE``, ``meta.background`` is left unset (jwst's image2 background step).
        ``"subtracted"``: the same subtraction, recorded as ``meta.background`` ``level``,
        ``subtracted=True``, ``method="local"`` (what skymatch with ``subtract=True`` writes).
        ``"recorded"``: SCI untouched, ``meta.background`` with ``subtracted=False`` (a file that
        has been through skymatch with ``subtract=False``). ``"undefined"``: a level with
        ``subtracted`` unset. The truth records what was subtracted
        (``ExposureTruth.background_subtracted``).
    visits : int or sequence of (str, str)
        Number of visits of ``observation``, or the ``(observation, visit)`` of each visit. The
        exposures are split into consecutive runs; exposure numbers restart at 1 in each visit
        (so only the visit tells their ``group_id`` apart) and each visit starts a day later.
    visit_roll : float
        Position angle change (deg) from one visit to the next.
    dither_scale : float
        Factor on the offsets of the ``"dither"`` pattern (about 2.5 arcsec per axis at 1;
        smaller keeps small crops of NIRCam's 0.031 arcsec pixels overlapping).
    detectors : sequence of str, optional
        The detectors of each exposure by name (e.g. ``["NRCB1"]``, where NIRCam's point-source
        subarrays are); overrides ``n_detectors``.

    Returns
    -------
    SimulationResult
        Paths of the association, the exposures and the truth, and the loaded truth.
    """
    t0 = time.perf_counter()
    inst = get_instrument(instrument)
    if detectors is not None:
        unknown = [d for d in detectors if d not in inst.detectors]
        if unknown or not detectors:
            raise ValueError(
                f"detectors {unknown or detectors}: {inst.name} has {sorted(inst.detectors)}"
            )
        dets = [inst.detectors[d] for d in detectors]
    else:
        dets = inst.detector_list(n_detectors)
    shape = tuple(int(v) for v in (shape or inst.shape))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    product_name = product_name or f"{inst.key}_{pattern}"
    sky = inst.sky_mjysr if sky is None else float(sky)
    psf = get_psf(inst)
    params = {
        "instrument": inst.key,
        "n": n,
        "seed": seed,
        "pattern": pattern,
        "shape": list(shape),
        "n_detectors": n_detectors,
        "detectors": None if detectors is None else list(detectors),
        "pointing_error": pointing_error,
        "roll_error": roll_error,
        "n_stars": n_stars,
        "n_galaxies": n_galaxies,
        "flux_range_jy": list(flux_range_jy or inst.flux_range_jy),
        "sky": sky,
        "sky_variation": sky_variation,
        "cosmic_ray_rate": cosmic_ray_rate,
        "bad_pixel_fraction": bad_pixel_fraction,
        "noise": noise,
        "rows": rows,
        "cols": cols,
        "overlap": overlap,
        "exposures_per_pointing": exposures_per_pointing,
        "ra": ra,
        "dec": dec,
        "roll": roll,
        "program": program,
        "observation": observation,
        "product_name": product_name,
        "asn_id": asn_id,
        "oversample": oversample,
        "subarray": None if subarray is None else subarray_json(subarray),
        "dq_extras": dq_extras,
        "image2_background": image2_background,
        "visits": visits if isinstance(visits, int) else [list(v) for v in visits],
        "visit_roll": visit_roll,
        "dither_scale": dither_scale,
    }
    if image2_background not in (None, *IMAGE2_BACKGROUND_MODES):
        raise ValueError(
            f"image2_background must be None or one of {IMAGE2_BACKGROUND_MODES}, "
            f"not {image2_background!r}"
        )
    ss = np.random.SeedSequence(seed)
    rng_point, rng_scene, rng_sky, rng_bad, ss_files = ss.spawn(5)
    rng_point = np.random.default_rng(rng_point)
    rng_scene = np.random.default_rng(rng_scene)
    rng_sky = np.random.default_rng(rng_sky)
    rng_bad = np.random.default_rng(rng_bad)

    coeffs = {d.name: simwcs.distortion_coefficients(inst, d) for d in dets}
    dists = {d.name: simwcs.distortion_model(inst, d, shape, coeffs[d.name]) for d in dets}
    primary = dets[0]

    # ---- pointings -----------------------------------------------------------------------
    extent = field_extent_ideal(inst, dets, shape, dists)
    cx, cy = 0.5 * (extent[0] + extent[1]), 0.5 * (extent[2] + extent[3])
    if pattern == "dither":
        if n is None:
            raise ValueError("n is required for a dither")
        pointings = dither_pattern(n, dither_scale)
    elif pattern == "mosaic":
        pointings = mosaic_pattern(n, extent, rows, cols, overlap, exposures_per_pointing)
    else:
        raise ValueError(f"pattern must be 'dither' or 'mosaic', not {pattern!r}")
    a = np.deg2rad(primary.v3yangle)
    p = primary.vparity
    ideal2v = np.array([[p * np.cos(a), np.sin(a)], [-p * np.sin(a), np.cos(a)]])

    slots = visit_layout(visits, len(pointings), observation)
    subarrays = resolve_subarrays(subarray, len(pointings), inst.name, inst.shape, shape)
    exposures = []
    (bx0, bx1), (by0, by1) = simwcs.bounding_box(inst, shape)
    corner_x = np.array([bx0, bx1, bx1, bx0])
    corner_y = np.array([by0, by0, by1, by1])
    det_corners = {d.name: dists[d.name](corner_x, corner_y, with_bounding_box=False) for d in dets}
    all_xi, all_eta = [], []
    for pt, slot in zip(pointings, slots, strict=True):
        # the field centre is seen at ideal position (centre of the detectors) - offset
        ideal = np.array([cx - pt.offset[0], cy - pt.offset[1]])
        v2a, v3a = ideal2v @ ideal + np.array([primary.v2_ref, primary.v3_ref])
        anchor = (float(v2a), float(v3a), roll + visit_roll * slot.visit_index, ra, dec)
        true_primary = simwcs.attitude_for_detector(anchor, primary)
        err = (
            float(rng_point.normal(0, pointing_error)),
            float(rng_point.normal(0, pointing_error)),
            float(rng_point.normal(0, roll_error)),
        )
        written_primary = simwcs.perturb_attitude(true_primary, *err)
        exposures.append((pt, true_primary, written_primary, err))
        v2c = np.concatenate([det_corners[d.name][0] for d in dets])
        v3c = np.concatenate([det_corners[d.name][1] for d in dets])
        rac, decc = simwcs.sky_at(true_primary, v2c, v3c)
        xi, eta = sky_to_tangent(rac, decc, ra, dec)
        all_xi.append(xi)
        all_eta.append(eta)

    # ---- scene -------------------------------------------------------------------------------
    all_xi, all_eta = np.concatenate(all_xi), np.concatenate(all_eta)
    pad = 2.0 * inst.fwhm_arcsec
    box = (all_xi.min() - pad, all_xi.max() + pad, all_eta.min() - pad, all_eta.max() + pad)
    # densities are per full detector field of view (a cropped ``shape`` sees fewer sources)
    (fx0, fx1), (fy0, fy1) = simwcs.bounding_box(inst, inst.shape)
    frame_area = (fx1 - fx0) * (fy1 - fy0) * inst.pixel_scale**2
    ratio = (box[1] - box[0]) * (box[3] - box[2]) / frame_area
    sources = make_scene(
        rng_scene,
        inst,
        ra,
        dec,
        box,
        int(rng_scene.poisson(n_stars * ratio)) if n_stars else 0,
        int(rng_scene.poisson(n_galaxies * ratio)) if n_galaxies else 0,
        flux_range_jy,
    )

    # ---- per-detector static properties ---------------------------------------------------
    nominal_area = (inst.pixel_scale / 3600.0 * np.pi / 180.0) ** 2
    refmask = reference_pixel_mask(inst, shape)
    det_info = {}
    for d in dets:
        bp = bad_pixels(rng_bad, inst, shape, bad_pixel_fraction)
        det_info[d.name] = {
            "v2_ref": d.v2_ref,
            "v3_ref": d.v3_ref,
            "v3yangle": d.v3yangle,
            "vparity": d.vparity,
            "module": d.module,
            "distortion": coeffs[d.name],
            "bad_pixels": {k: v.tolist() for k, v in bp.items()},
        }
        det_info[d.name]["_bp"] = bp

    # ---- exposures, one file at a time ------------------------------------------------------
    truth_exposures: list[ExposureTruth] = []
    cal_paths: list[Path] = []
    file_seeds = ss_files.spawn(len(exposures) * len(dets))
    sky_levels = sky * (1.0 + rng_sky.uniform(-sky_variation, sky_variation, len(exposures)))
    duration = inst.exposure_time + 10.0 + 120.0
    dither_total = len(pointings) if pattern == "dither" else exposures_per_pointing
    saturation = sky + 0.3 * (
        max(flux_range_jy or inst.flux_range_jy)
        * 1e-6
        / nominal_area
        * psf.pixel_stamp(0.0, 0.0, psf.stamp_half_size, oversample).max()
    )
    rng_bkg = np.random.default_rng(ss.spawn(1)[0])
    bkg_errors = 1.0 + rng_bkg.uniform(-0.01, 0.01, len(exposures))
    for i, (pt, true_primary, written_primary, err) in enumerate(exposures):
        slot, sub = slots[i], subarrays[i]
        start_mjd = _MJD0 + i * duration / 86400.0 + slot.visit_index
        subtracted = (
            float(sky_levels[i] * bkg_errors[i])
            if image2_background in ("bkg_subtract", "subtracted")
            else 0.0
        )
        for j, det in enumerate(dets):
            seed_j = file_seeds[i * len(dets) + j]
            rng = np.random.default_rng(seed_j)
            true_att = simwcs.attitude_for_detector(true_primary, det)
            written_att = simwcs.attitude_for_detector(written_primary, det)
            area = pixel_area(inst, det, shape, coeffs[det.name])
            det_refmask, bad = refmask, det_info[det.name]["_bp"]
            if not is_whole_array(sub, shape):
                # meta.wcsinfo of a subarray aperture is referred to the subarray's centre
                v2s, v3s = simwcs.subarray_reference_v2v3(inst, det, shape, sub, coeffs[det.name])
                true_att = simwcs.attitude_at(true_att, v2s, v3s)
                written_att = simwcs.attitude_at(written_att, v2s, v3s)
                area, det_refmask = area[sub.slices], refmask[sub.slices]
                bad = bad_pixels_in(bad, sub)
            w_true = simwcs.make_wcs(inst, det, shape, true_att, coeffs[det.name], sub)
            w_written = simwcs.make_wcs(inst, det, shape, written_att, coeffs[det.name], sub)
            arrays, cr = _exposure_arrays(
                rng,
                inst,
                sub.shape,
                sources,
                w_true,
                psf,
                area,
                nominal_area,
                float(sky_levels[i]),
                noise,
                cosmic_ray_rate,
                bad,
                det_refmask,
                oversample,
                np.random.default_rng(seed_j.spawn(1)[0]) if dq_extras else None,
                saturation,
            )
            if subtracted:
                arrays["data"] -= np.float32(subtracted)
            wv1 = simwcs.sky_at(written_primary, 0.0, 0.0)
            meta = ExposureMeta(
                program=program,
                observation=slot.observation,
                visit=slot.visit,
                visit_group="02",
                sequence_id="1",
                activity_id="01",
                exposure_number=slot.exposure_number,
                start_mjd=start_mjd,
                attitude=written_att,
                pointing_v1=(
                    float(wv1[0]) % 360.0,
                    float(wv1[1]),
                    simwcs.roll_at(written_primary, 0.0, 0.0),
                ),
                target=(ra, dec),
                s_region=simwcs.footprint_s_region(w_written),
                fits_wcs=simwcs.wcsinfo_fits_keywords(w_written, inst, sub.shape),
                pixel_area_sr=nominal_area,
                dither={
                    "primary_type": "4-POINT-SETS" if pattern == "dither" else "NONE",
                    "position_number": pt.dither + 1,
                    "total_points": dither_total,
                    "x_offset": float(pt.offset[0]),
                    "y_offset": float(pt.offset[1]),
                },
                asn_table="asn.json",
                subarray=sub,
                background=image2_background_meta(image2_background, subtracted, sky_levels[i]),
                bkg_subtract=image2_background in ("bkg_subtract", "subtracted"),
            )
            name = cal_filename(meta, det)
            path = write_cal(out_dir / name, inst, det, meta, w_written, arrays)
            cal_paths.append(path)
            keys = ("v2_ref", "v3_ref", "roll_ref", "ra_ref", "dec_ref")
            truth_exposures.append(
                ExposureTruth(
                    filename=name,
                    exposure_number=slot.exposure_number,
                    detector=det.name,
                    group_id=meta.group_id,
                    tile=pt.tile,
                    dither=pt.dither,
                    offset_arcsec=pt.offset,
                    true_attitude=dict(zip(keys, map(float, true_att), strict=True)),
                    written_attitude=dict(zip(keys, map(float, written_att), strict=True)),
                    pointing_error={
                        "dra_arcsec": err[0],
                        "ddec_arcsec": err[1],
                        "droll_arcsec": err[2],
                    },
                    sky_mjysr=float(sky_levels[i]),
                    start_mjd=start_mjd,
                    cosmic_rays=cr,
                    subarray=None if is_whole_array(sub, shape) else sub.to_json(),
                    background_subtracted=subtracted,
                )
            )
            log.debug("wrote %s", path)

    # ---- association and truth ---------------------------------------------------------------
    asn = make_association(cal_paths, product_name, asn_id=asn_id, relative_to=out_dir)
    asn_path = write_association(asn, out_dir / "asn.json")
    for d in det_info.values():
        d.pop("_bp")
    truth = Truth(
        meta={
            "format": TRUTH_FORMAT,
            "version": TRUTH_VERSION,
            "instrument": inst.name,
            "filter": inst.filter,
            "seed": seed,
            "pattern": pattern,
            "shape": list(shape),
            "field": {"ra": ra, "dec": dec, "roll": roll},
            "params": params,
            "psf": {
                "model": "moffat",
                "fwhm_pixels": psf.fwhm,
                "beta": psf.beta,
                "rmax_pixels": psf.rmax,
            },
            "sersic_truncation": SERSIC_TRUNCATION,
            "pixel_area_nominal_sr": nominal_area,
            "units": {
                "ra": "deg",
                "dec": "deg",
                "flux_jy": "Jy",
                "r_eff_arcsec": "arcsec",
                "pa_deg": "deg east of north",
                "sky_mjysr": "MJy/sr",
                "cosmic_rays.value": "MJy/sr",
                "bad_pixels.value": "MJy/sr (value written to SCI)",
                "attitude": "v2_ref, v3_ref arcsec; roll_ref, ra_ref, dec_ref deg",
            },
        },
        detectors=det_info,
        sources=sources,
        exposures=truth_exposures,
    )
    truth_path = truth.write(out_dir / "truth.json")
    log.info(
        "simulated %d %s files in %s (%.1f s)",
        len(cal_paths),
        inst.name,
        out_dir,
        time.perf_counter() - t0,
    )
    return SimulationResult(
        asn_path=asn_path, cal_paths=cal_paths, truth_path=truth_path, truth=load_truth(truth_path)
    )


def _model_image(sources, w_true, shape, psf, area, sky_level, oversample) -> np.ndarray:
    flux, _, _ = render_flux(sources, w_true, shape, psf, oversample)
    return flux * 1e-6 / area + sky_level


def _exposure_arrays(
    rng,
    inst: Instrument,
    shape,
    sources,
    w_true,
    psf,
    area,
    nominal_area,
    sky_level,
    noise,
    cosmic_ray_rate,
    bad,
    refmask,
    oversample,
    rng_dq=None,
    saturation: float = np.inf,
):
    model = _model_image(sources, w_true, shape, psf, area, sky_level, oversample)
    k = electron_scale(inst, area, nominal_area)
    var_poisson = np.clip(model, 0.0, None) * k
    var_rnoise = (inst.read_noise * k) ** 2
    var_flat = (FLAT_ERROR * model) ** 2
    err = np.sqrt(var_poisson + var_rnoise + var_flat)
    data = model.astype(np.float32)
    if noise:
        data += rng.standard_normal(shape, dtype=np.float32) * err.astype(np.float32)
    dq = np.zeros(shape, np.uint32)
    allowed = ~refmask
    if bad["y"].size:
        allowed[bad["y"], bad["x"]] = False
    k_nom = inst.photmjsr / (inst.gain * inst.exposure_time)
    sigma_sky = float(np.sqrt(sky_level * k_nom + (inst.read_noise * k_nom) ** 2))
    cy, cx, cv = cosmic_rays(rng, shape, cosmic_ray_rate, sigma_sky, allowed)
    data[cy, cx] += cv.astype(np.float32)
    if bad["y"].size:
        data[bad["y"], bad["x"]] = bad["value"]
        dq[bad["y"], bad["x"]] = DO_NOT_USE | np.where(bad["kind"] == "hot", HOT, DEAD)
    dq[refmask] = DO_NOT_USE | REFERENCE_PIXEL
    if rng_dq is not None:
        # image2's DQ: saturated cores, scattered flags, NON_SCIENCE; NaN where DO_NOT_USE
        dq |= image2_dq(rng_dq, model, allowed & (dq == 0), saturation)
    arrays = {
        "data": data,
        "err": err,
        "dq": dq,
        "var_poisson": var_poisson,
        "var_rnoise": var_rnoise,
        "var_flat": var_flat,
        "area": area / nominal_area,
    }
    for name in ("data", "err", "var_poisson", "var_rnoise", "var_flat"):
        arrays[name] = np.array(arrays[name], dtype=np.float32)
        arrays[name][refmask] = np.nan
        if rng_dq is not None:
            arrays[name][(dq & DO_NOT_USE) > 0] = np.nan
    cr = {"y": cy, "x": cx, "value": cv}
    return arrays, cr


def truth_image(
    truth: Truth | str | os.PathLike,
    exposure: int | str | os.PathLike = 0,
    include_sky: bool = True,
) -> np.ndarray:
    """Noise-free surface brightness (MJy/sr) of one simulated file, from its truth.

    Sources are rendered through the true WCS exactly as when simulating; no cosmic rays, no bad
    pixels. Add ``truth.exposure(i).sky_mjysr`` or not with ``include_sky`` (a background taken
    off by ``image2_background`` is not subtracted here: see ``background_subtracted``).
    """
    from image3_dask.simulate.truth import build_true_wcs

    if not isinstance(truth, Truth):
        truth = load_truth(truth)
    e = truth.exposure(exposure)
    inst = get_instrument(truth.instrument)
    det = inst.detectors[e.detector]
    shape = truth.shape
    coeffs = truth.detectors[e.detector]["distortion"]
    area = pixel_area(inst, det, shape, coeffs)
    sub = e.subarray_obj()
    if sub is not None:
        area, shape = area[sub.slices], sub.shape
    w = build_true_wcs(truth, exposure)
    psf = get_psf(inst)
    sky = e.sky_mjysr if include_sky else 0.0
    return _model_image(
        truth.sources, w, shape, psf, area, sky, int(truth.meta["params"].get("oversample", 5))
    )

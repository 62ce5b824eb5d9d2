"""Write a simulated exposure as a level-2b ``ImageModel`` (``*_cal.fits``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asdf
import numpy as np
from astropy.time import Time
from stdatamodels.jwst import datamodels

from image3_dask.io.crds_refs import SIMULATED_KEYWORD
from image3_dask.simulate.instruments import Detector, Instrument
from image3_dask.simulate.quirks import Subarray

__all__ = ["ExposureMeta", "cal_filename", "write_cal"]

# Steps of calwebb_detector1 and calwebb_image2 that a real imaging *_cal.fits has run.
_CAL_STEPS = {
    "MIRI": (
        "group_scale dq_init emicorr saturation firstframe lastframe reset linearity rscd "
        "dark_sub jump ramp_fit gain_scale assign_wcs flat_field photom"
    ),
    "NIRCAM": (
        "group_scale dq_init saturation superbias refpix linearity dark_sub jump ramp_fit "
        "gain_scale assign_wcs flat_field photom"
    ),
}

STERADIAN_ARCSEC2 = (180.0 / np.pi * 3600.0) ** 2


@dataclass
class ExposureMeta:
    """Per-file metadata that varies between exposures.

    Attributes
    ----------
    program, observation, visit, visit_group, sequence_id, activity_id : str
        Observation identifiers (``meta.observation``), already formatted (``"01234"`` ...).
    exposure_number : int
        ``meta.observation.exposure_number``.
    start_mjd : float
        Exposure start (MJD UTC).
    attitude : tuple
        ``(v2_ref, v3_ref, roll_ref, ra_ref, dec_ref)`` of the written WCS.
    pointing_v1 : tuple
        ``(ra_v1, dec_v1, pa_v3)`` of the written attitude.
    target : tuple
        ``(ra, dec)`` of the field centre.
    s_region : str
        Footprint polygon.
    fits_wcs : dict
        ``meta.wcsinfo`` FITS keywords (crpix, crval, cdelt, pc, ctype, cunit).
    pixel_area_sr : float
        Nominal pixel area written to ``meta.photometry``.
    dither : dict
        ``meta.dither`` values.
    asn_pool, asn_table : str
        ``meta.asn`` names.
    subarray : Subarray, optional
        ``meta.subarray`` (default: the whole array, ``FULL`` or ``GENERIC`` for a crop).
    background : dict, optional
        ``meta.background`` (``level``, ``subtracted``, ``method``); unset when ``None``.
    bkg_subtract : bool
        ``cal_step.bkg_subtract`` is ``COMPLETE`` (else ``SKIPPED``).
    """

    program: str
    observation: str
    visit: str
    visit_group: str
    sequence_id: str
    activity_id: str
    exposure_number: int
    start_mjd: float
    attitude: tuple
    pointing_v1: tuple
    target: tuple
    s_region: str
    fits_wcs: dict
    pixel_area_sr: float
    dither: dict
    asn_pool: str = "none"
    asn_table: str = "asn.json"
    subarray: Subarray | None = None
    background: dict | None = None
    bkg_subtract: bool = False

    @property
    def exposure_str(self) -> str:
        return f"{self.exposure_number:05d}"

    @property
    def group_id(self) -> str:
        """jwst's ``group_id`` of the exposure (same for all its detectors)."""
        return (
            f"jw{self.program}{self.observation}{self.visit}_{self.visit_group}"
            f"{self.sequence_id}{self.activity_id}_{self.exposure_str}"
        )


def cal_filename(meta: ExposureMeta, det: Detector) -> str:
    """JWST-style file name, e.g. ``jw01234001001_02101_00001_mirimage_cal.fits``."""
    return f"{meta.group_id}_{det.file_tag}_cal.fits"


def write_cal(
    path: str | os.PathLike,
    inst: Instrument,
    det: Detector,
    meta: ExposureMeta,
    wcs,
    arrays: dict[str, np.ndarray],
) -> Path:
    """Write one ``ImageModel`` and return its path.

    Parameters
    ----------
    path : path-like
        Output file (``*_cal.fits``).
    inst, det : Instrument, Detector
        Instrument and detector.
    meta : ExposureMeta
        Per-exposure metadata.
    wcs : gwcs.WCS
        The WCS written to ``meta.wcs`` (with the pointing error).
    arrays : dict
        ``data``, ``err``, ``dq``, ``var_poisson``, ``var_rnoise``, ``var_flat`` and ``area``.
    """
    path = Path(path)
    # validate once when saving rather than on every assignment (much faster)
    model = datamodels.ImageModel(arrays["data"].astype(np.float32), validate_on_assignment=False)
    try:
        for name in ("err", "var_poisson", "var_rnoise", "var_flat", "area"):
            setattr(model, name, arrays[name].astype(np.float32))
        model.dq = arrays["dq"].astype(np.uint32)
        m = model.meta
        m.filename = path.name
        m.telescope = "JWST"
        m.origin = "image3_dask.simulate"
        m.model_type = "ImageModel"
        m.bunit_data = "MJy/sr"
        m.bunit_err = "MJy/sr"
        m.calibration_software_version = "3.0.0"
        m.data_processing_software_version = "image3_dask.simulate"
        # the mark that lets image3-dask use its simulated-instrument defaults (jwst ignores it)
        model.extra_fits = {
            "PRIMARY": {
                "header": [[SIMULATED_KEYWORD, True, "written by the image3-dask simulator"]]
            }
        }

        ins = m.instrument
        ins.name = inst.name
        ins.detector = det.name
        ins.filter = inst.filter
        if inst.pupil:
            ins.pupil = inst.pupil
        if inst.channel:
            ins.channel = inst.channel
        if det.module:
            ins.module = det.module
        ny, nx = arrays["data"].shape
        given = meta.subarray
        sub = m.subarray
        if given is None:
            sub.name = "FULL" if (ny, nx) == tuple(inst.shape) else "GENERIC"
            sub.xstart, sub.ystart, sub.xsize, sub.ysize = 1, 1, nx, ny
        else:
            sub.name = given.name
            sub.xstart, sub.ystart = given.xstart, given.ystart
            sub.xsize, sub.ysize = given.xsize, given.ysize
        aperture = sub.name if sub.name not in ("GENERIC",) else "FULL"
        m.aperture.name = f"MIRIM_{aperture}" if inst.name == "MIRI" else f"{det.name}_{aperture}"
        sub.fastaxis, sub.slowaxis = (1, 2) if inst.name == "MIRI" else (-1, 2)

        ngroups = inst.ngroups
        t_int = inst.exposure_time
        start = Time(meta.start_mjd, format="mjd", scale="utc")
        duration = t_int + 10.0
        end_mjd = meta.start_mjd + duration / 86400.0
        mid_mjd = 0.5 * (meta.start_mjd + end_mjd)
        exp = m.exposure
        exp.type = inst.exp_type
        exp.start_time = meta.start_mjd
        exp.mid_time = mid_mjd
        exp.end_time = end_mjd
        exp.start_time_mjd = meta.start_mjd
        exp.mid_time_mjd = mid_mjd
        exp.end_time_mjd = end_mjd
        exp.start_time_tdb = meta.start_mjd + 69.184 / 86400.0
        exp.mid_time_tdb = mid_mjd + 69.184 / 86400.0
        exp.end_time_tdb = end_mjd + 69.184 / 86400.0
        exp.exposure_time = t_int
        exp.effective_exposure_time = t_int
        exp.measurement_time = t_int - inst.frame_time
        exp.integration_time = t_int
        exp.elapsed_exposure_time = t_int
        exp.duration = duration
        exp.nints = 1
        exp.ngroups = ngroups
        exp.nframes = 1 if inst.name == "MIRI" else 8
        exp.groupgap = 0 if inst.name == "MIRI" else 2
        exp.frame_time = inst.frame_time
        exp.group_time = t_int / ngroups
        exp.readpatt = inst.readpatt
        exp.nresets_at_start = 0
        exp.nresets_between_ints = 0
        exp.integration_start = 1
        exp.integration_end = 1
        exp.count = 1
        exp.sca_num = 493 if inst.name == "MIRI" else 481

        obs = m.observation
        obs.program_number = meta.program
        obs.observation_number = meta.observation
        obs.visit_number = meta.visit
        obs.visit_group = meta.visit_group
        obs.sequence_id = meta.sequence_id
        obs.activity_id = meta.activity_id
        obs.exposure_number = meta.exposure_str
        obs.obs_id = (
            f"V{meta.program}{meta.observation}{meta.visit}P0000000{meta.visit_group}"
            f"{meta.sequence_id}{meta.activity_id}"
        )
        obs.visit_id = f"{meta.program}{meta.observation}{meta.visit}"
        iso = start.isot
        obs.date, obs.time = iso.split("T")
        obs.date_beg = iso
        obs.date_end = Time(end_mjd, format="mjd", scale="utc").isot
        m.date = iso
        m.program.pi_name = "Simulated"
        m.program.title = "image3-dask simulation"
        m.program.category = "GO"
        m.visit.type = "PRIME_TARGETED_FIXED"
        m.visit.start_time = iso.replace("T", " ")
        m.visit.crowded_field = False

        m.target.ra, m.target.dec = meta.target
        m.target.proposer_ra, m.target.proposer_dec = meta.target
        m.target.proposer_name = "SIMFIELD"
        m.target.catalog_name = "SIMFIELD"
        m.target.type = "FIXED"
        m.target.source_type = "EXTENDED"

        v2_ref, v3_ref, roll_ref, ra_ref, dec_ref = meta.attitude
        wi = m.wcsinfo
        wi.v2_ref, wi.v3_ref, wi.roll_ref = v2_ref, v3_ref, roll_ref
        wi.ra_ref, wi.dec_ref = ra_ref, dec_ref
        wi.v3yangle = det.v3yangle
        wi.vparity = det.vparity
        wi.s_region = meta.s_region
        wi.velosys = 0.0
        for k, v in meta.fits_wcs.items():
            setattr(wi, k, v)
        wi.siaf_xref_sci = meta.fits_wcs["crpix1"]
        wi.siaf_yref_sci = meta.fits_wcs["crpix2"]
        m.coordinates.reference_frame = "ICRS"
        m.velocity_aberration.scale_factor = 1.0
        m.velocity_aberration.va_ra_ref = ra_ref
        m.velocity_aberration.va_dec_ref = dec_ref
        m.pointing.ra_v1, m.pointing.dec_v1, m.pointing.pa_v3 = meta.pointing_v1

        ph = m.photometry
        ph.conversion_megajanskys = inst.photmjsr
        ph.conversion_microjanskys = inst.photmjsr * 1e12 / STERADIAN_ARCSEC2
        ph.pixelarea_steradians = meta.pixel_area_sr
        ph.pixelarea_arcsecsq = meta.pixel_area_sr * STERADIAN_ARCSEC2

        for key, value in meta.dither.items():
            setattr(m.dither, key, value)
        m.asn.pool_name = meta.asn_pool
        m.asn.table_name = meta.asn_table
        for step in _CAL_STEPS[inst.name].split():
            setattr(m.cal_step, step, "COMPLETE")
        m.cal_step.bkg_subtract = "COMPLETE" if meta.bkg_subtract else "SKIPPED"
        if meta.background is not None:
            for key, value in meta.background.items():
                setattr(m.background, key, value)
        if inst.name == "NIRCAM":
            m.cal_step.persistence = "SKIPPED"
            m.cal_step.ipc = "SKIPPED"
        m.wcs = wcs
        # ``save`` validates the model against its schema; skip asdf's second validation of
        # the serialized tree (the gwcs), which costs more than everything else here
        with asdf.config_context() as cfg:
            cfg.validate_on_write = False
            model.save(path, overwrite=True)
    finally:
        model.close()
    return path

"""Synthetic JWST-like level-2b imaging exposures with known truth.

>>> from image3_dask.simulate import simulate, load_truth, build_true_wcs
>>> res = simulate(instrument="miri", n=4, out_dir="sim", seed=0, pattern="dither")
>>> res.asn_path, res.cal_paths, res.truth_path, res.truth

See :func:`simulate` for the knobs, :mod:`image3_dask.simulate.truth` for the truth file format
and :mod:`image3_dask.simulate.psf` for the PSF model (FWHM, encircled energies).
"""

from image3_dask.simulate.core import SimulationResult, simulate, truth_image
from image3_dask.simulate.instruments import INSTRUMENTS, Detector, Instrument, get_instrument
from image3_dask.simulate.psf import (
    MoffatPSF,
    ee_radius,
    encircled_energy,
    get_psf,
    psf_fwhm_pixels,
)
from image3_dask.simulate.truth import (
    ExposureTruth,
    Truth,
    build_true_wcs,
    build_written_wcs,
    load_truth,
)

__all__ = [
    "INSTRUMENTS",
    "Detector",
    "ExposureTruth",
    "Instrument",
    "MoffatPSF",
    "SimulationResult",
    "Truth",
    "build_true_wcs",
    "build_written_wcs",
    "ee_radius",
    "encircled_energy",
    "get_instrument",
    "get_psf",
    "load_truth",
    "psf_fwhm_pixels",
    "simulate",
    "truth_image",
]

"""io/crf: opening an exposure for its crf file, updating the model, saving it atomically.

On a small simulated MIRI exposure (64x64); the step-level crf contents are checked by
``test_step_outlier.py``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling.models import Shift

from image3_dask.io.crf import (
    CRF_ARRAYS,
    open_for_crf,
    s_region_of,
    save_model_atomic,
    update_crf_model,
)


@pytest.fixture(scope="module")
def cal_path(tmp_path_factory) -> Path:
    """The first of two simulated 64x64 MIRI exposures (never modified by the tests)."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("crf_sim")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate(
            instrument="miri", n=2, out_dir=out, seed=7, pattern="dither", shape=(64, 64)
        )
    return Path(sim.cal_paths[0])


@pytest.fixture
def model(cal_path):
    m = open_for_crf(cal_path)
    yield m
    m.close()


def _reopen(path):
    from stdatamodels.jwst import datamodels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return datamodels.open(path)  # validates on read


def _shifted(wcs, dx: float = 0.5):
    """``wcs`` with the detector shifted by ``dx`` pixels (as a tweakreg correction would)."""
    out = copy.deepcopy(wcs)
    out.insert_transform("detector", Shift(dx) & Shift(0.0), after=True)
    out.bounding_box = wcs.bounding_box
    return out


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- open_for_crf
def test_open_for_crf_reads_the_whole_exposure(model, cal_path):
    assert type(model).__name__ == "ImageModel"
    assert model.meta.filename == cal_path.name
    with fits.open(cal_path) as hdul:
        np.testing.assert_array_equal(model.data, hdul["SCI"].data)
        np.testing.assert_array_equal(model.dq, hdul["DQ"].data)
        np.testing.assert_array_equal(model.var_rnoise, hdul["VAR_RNOISE"].data)
    assert model.meta.wcs is not None


def test_open_for_crf_defers_validation_to_the_save(model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no validation warning on assignment
        model.meta.background.level = "bright"
    assert model.meta.background.level == "bright"
    target = tmp_path / "x_crf.fits"
    target.write_bytes(b"an earlier file")
    with pytest.raises(Exception, match="is not of type 'number'"):
        save_model_atomic(model, target)
    # the failed save left the earlier file whole and no temporary file behind
    assert target.read_bytes() == b"an earlier file"
    assert _partials(tmp_path) == []


# --------------------------------------------------------------------------- update_crf_model
def test_update_replaces_arrays_of_the_right_shape_with_crf_dtypes(model):
    before = {name: np.array(getattr(model, name)) for name in CRF_ARRAYS}
    data = before["data"].astype(np.float64) + 1.0
    dq = before["dq"].astype(np.int64) | 16
    update_crf_model(
        model, arrays={"data": data, "dq": dq, "err": None, "var_flat": np.zeros((3, 3))}
    )
    assert model.data.dtype == np.float32 and model.dq.dtype == np.uint32
    np.testing.assert_array_equal(model.data, data.astype(np.float32))
    np.testing.assert_array_equal(model.dq, dq.astype(np.uint32))
    for name in ("err", "var_flat", "var_rnoise", "var_poisson"):  # None, wrong shape, absent
        np.testing.assert_array_equal(getattr(model, name), before[name])


def test_update_refuses_unknown_arrays_and_background_entries(model):
    with pytest.raises(ValueError, match="wht is not a crf pixel array"):
        update_crf_model(model, arrays={"wht": np.zeros(model.data.shape)})
    with pytest.raises(ValueError, match="unknown meta.background entry 'sky'"):
        update_crf_model(model, background={"sky": 1.0})


def test_update_keeps_an_unchanged_wcs_and_its_s_region(model):
    wcs, region = model.meta.wcs, model.meta.wcsinfo.s_region
    update_crf_model(model, wcs=copy.deepcopy(wcs))  # equal, another object
    assert model.meta.wcs is wcs
    assert model.meta.wcsinfo.s_region == region


def test_update_with_a_corrected_wcs_recomputes_s_region(model):
    old_region = model.meta.wcsinfo.s_region
    new = _shifted(model.meta.wcs)
    update_crf_model(model, wcs=new)
    assert model.meta.wcs is new
    assert model.meta.wcs(10.0, 20.0) == new(10.0, 20.0)
    assert model.meta.wcsinfo.s_region == s_region_of(new) != old_region
    # tweakreg's own region, when given, is recorded as is
    update_crf_model(model, wcs=_shifted(model.meta.wcs), s_region="POLYGON ICRS 1 2 3 4 5 6")
    assert model.meta.wcsinfo.s_region == "POLYGON ICRS 1 2 3 4 5 6"


def test_update_background_cal_steps_and_filename(model):
    update_crf_model(
        model,
        background={"level": 1.25, "subtracted": False, "method": "match"},
        cal_steps={"skymatch": "COMPLETE"},
    )
    update_crf_model(
        model,
        background={"level": None, "method": "global"},  # None: left as it is
        cal_steps={"outlier_detection": "COMPLETE"},
        filename="x_a3001_crf.fits",
    )
    bg = model.meta.background
    assert (bg.level, bg.subtracted, bg.method) == (1.25, False, "global")
    assert model.meta.cal_step.skymatch == "COMPLETE"
    assert model.meta.cal_step.outlier_detection == "COMPLETE"
    assert model.meta.cal_step.flat_field == "COMPLETE"  # the cal file's statuses are kept
    assert model.meta.filename == "x_a3001_crf.fits"


# --------------------------------------------------------------------------- save_model_atomic
def test_open_update_save_round_trip(model, cal_path, tmp_path):
    out = tmp_path / "crf" / "x_a3001_crf.fits"
    out.parent.mkdir()
    out.write_bytes(b"a stale crf")  # replaced whole
    data = np.array(model.data) * 2.0
    dq = np.array(model.dq) | 4
    new_wcs = _shifted(model.meta.wcs, dx=-0.25)
    update_crf_model(
        model,
        arrays={"data": data, "dq": dq},
        wcs=new_wcs,
        background={"level": 0.5, "subtracted": False, "method": "global"},
        cal_steps={"outlier_detection": "COMPLETE"},
        filename=out.name,
    )
    assert save_model_atomic(model, out) == out
    assert _partials(out.parent) == []
    with _reopen(out) as crf, fits.open(cal_path) as cal:
        np.testing.assert_array_equal(crf.data, data.astype(np.float32))
        np.testing.assert_array_equal(crf.dq, dq.astype(np.uint32))
        np.testing.assert_array_equal(crf.err, cal["ERR"].data)  # untouched arrays copied
        assert crf.meta.filename == out.name
        assert crf.meta.background.level == 0.5 and crf.meta.background.method == "global"
        assert crf.meta.cal_step.outlier_detection == "COMPLETE"
        assert crf.meta.wcsinfo.s_region == s_region_of(new_wcs)
        np.testing.assert_allclose(crf.meta.wcs(10.0, 20.0), new_wcs(10.0, 20.0), rtol=0, atol=0)
    # the source exposure is not changed
    with _reopen(cal_path) as cal:
        assert cal.meta.filename == cal_path.name
        assert cal.meta.cal_step.outlier_detection is None


def test_save_interrupted_mid_write_leaves_no_file(tmp_path):
    class DiesWhileWriting:
        def save(self, path, overwrite=False):
            Path(path).write_bytes(b"SIMPLE  =  half a file")
            raise OSError("worker killed")

    target = tmp_path / "x_crf.fits"
    with pytest.raises(OSError, match="worker killed"):
        save_model_atomic(DiesWhileWriting(), target)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"an earlier file")
    with pytest.raises(OSError, match="worker killed"):
        save_model_atomic(DiesWhileWriting(), target)
    assert target.read_bytes() == b"an earlier file"
    assert _partials(tmp_path) == []

"""Parity with jwst 3.0 OutlierDetectionStep (imaging) on in-memory ImageModels.

The official step is run on synthetic exposures. Our path reuses only jwst's
single-group drizzle (``ResampleImage.resample_group``, owned by another part of
image3-dask) and its output grid; weight thresholds, the tiled median, the
region blot and the flagging are ours. The final DQ arrays must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import median_of_exposures
from helpers.outlier_scene import make_scene, tiles

from image3_dask.algorithms.outlier import (
    blot_median,
    blot_region_bounds,
    combine_weight_stats,
    flag_outliers,
    median_tile,
    weight_stats,
    weight_threshold,
)

pytestmark = pytest.mark.jwst


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    monkeypatch.setenv("CRDS_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    monkeypatch.chdir(tmp_path)


def _models(scene):
    from stdatamodels.jwst import datamodels

    out = []
    for k, e in enumerate(scene.exposures):
        m = datamodels.ImageModel(e.sci.shape)
        m.data = e.sci.copy()
        m.err = e.err.copy()
        m.dq = e.dq.copy()
        m.var_rnoise = e.var_rnoise.copy()
        m.var_poisson = np.zeros_like(e.var_rnoise)
        m.var_flat = np.zeros_like(e.var_rnoise)
        m.meta.wcs = e.wcs
        m.meta.filename = f"exp{k}_cal.fits"
        m.meta.bunit_data = "MJy/sr"
        m.meta.bunit_err = "MJy/sr"
        ins = m.meta.instrument
        ins.name, ins.detector, ins.filter, ins.pupil = "NIRCAM", "NRCA1", "F200W", "CLEAR"
        ins.channel, ins.module = "SHORT", "A"
        obs = m.meta.observation
        obs.program_number, obs.observation_number, obs.visit_number = "01234", "001", "001"
        obs.visit_group, obs.sequence_id, obs.activity_id = "01", "1", "01"
        obs.exposure_number = str(k + 1)
        ex = m.meta.exposure
        ex.type = "NRC_IMAGE"
        ex.exposure_time = ex.measurement_time = ex.duration = 100.0
        ex.effective_exposure_time = ex.elapsed_exposure_time = 100.0
        ex.start_time, ex.end_time = 60000.0 + k, 60000.001 + k
        m.meta.photometry.pixelarea_steradians = (0.1 / 206264.806) ** 2
        m.meta.photometry.pixelarea_arcsecsq = 0.01
        m.meta.background.subtracted = False
        m.meta.background.level = 0.0
        wi = m.meta.wcsinfo
        wi.s_region = "POLYGON ICRS " + " ".join(f"{a:.12f} {b:.12f}" for a, b in e.wcs.footprint())
        ra, dec = e.wcs(63.5, 63.5)
        wi.ra_ref, wi.dec_ref = float(ra), float(dec)
        wi.roll_ref = wi.v3yangle = wi.v2_ref = wi.v3_ref = 0.0
        wi.vparity = -1
        out.append(m)
    return out


def _run_official(scene, **pars):
    from jwst.datamodels import ModelLibrary
    from jwst.outlier_detection import OutlierDetectionStep

    step = OutlierDetectionStep(**pars)
    step.in_memory = True
    res = step.run(ModelLibrary(_models(scene), on_disk=False))
    dqs = []
    with res:
        for i in range(len(res)):
            m = res.borrow(i)
            dqs.append(np.array(m.dq))
            res.shelve(m, i, modify=False)
    return dqs


def test_parity_with_outlier_detection_step_resampled():
    pytest.importorskip("jwst")
    from jwst.datamodels import ModelLibrary
    from jwst.resample import resample
    from stcal.resample.utils import calc_pixmap

    scene = make_scene(seed=7, ncr=60)
    official = _run_official(scene)

    # --- our path: official singles, our thresholds/median/blot/flags
    lib = ModelLibrary(_models(scene), on_disk=False)
    resamp = resample.ResampleImage(
        lib,
        blendheaders=False,
        weight_type="ivm",
        pixfrac=1.0,
        kernel="square",
        fillval="NAN",
        good_bits="~DO_NOT_USE",
        enable_ctx=False,
        enable_var=False,
        compute_err=None,
    )
    grid_wcs = resamp.output_wcs
    sci, wht = [], []
    for indices in lib.group_indices.values():
        d = resamp.resample_group(indices)
        sci.append(np.array(d.data, np.float32))
        wht.append(np.array(d.wht, np.float32))
    sci, wht = np.stack(sci), np.stack(wht)
    grid_shape = sci.shape[1:]
    assert len(sci) == 4

    tile_list = list(tiles(grid_shape, 37, 45))
    thr = [
        weight_threshold(combine_weight_stats(weight_stats(w[t]) for t in tile_list), 0.7)
        for w in wht
    ]
    median = np.empty(grid_shape, np.float32)
    for t in tile_list:
        median[t] = median_tile(sci[(slice(None), *t)], wht[(slice(None), *t)], thr)

    nflag = 0
    for exp, dq_official in zip(scene.exposures, official, strict=True):
        pixmap = calc_pixmap(exp.wcs, grid_wcs, exp.sci.shape)
        ys, xs = blot_region_bounds(pixmap, grid_shape)
        blot = blot_median(median[ys, xs], (ys.start, xs.start), pixmap, grid_shape)
        mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, blot, backg=0.0)
        np.testing.assert_array_equal(dq, dq_official)
        nflag += int(mask.sum())
    print(f"\nidentical DQ on 4 exposures, {nflag} outliers flagged")
    assert nflag > 100


def test_parity_with_outlier_detection_step_no_resampling():
    pytest.importorskip("jwst")
    scene = make_scene(seed=8, ncr=60, aligned=True)
    official = _run_official(scene, resample_data=False)
    sci = np.stack([e.sci for e in scene.exposures])
    w = np.stack(
        [((1.0 / e.var_rnoise) * ((e.dq & 1) == 0)).astype(np.float32) for e in scene.exposures]
    )
    median = median_of_exposures(sci, w, 0.7)
    for exp, dq_official in zip(scene.exposures, official, strict=True):
        mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, median, resample_data=False)
        np.testing.assert_array_equal(dq, dq_official)
        assert mask.sum() > 20

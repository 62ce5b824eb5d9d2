"""Tests of image3_dask.algorithms.tweakreg_catalog."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.align_scene import render, star_field
from helpers.wcs import jwst_wcs
from scipy.spatial import cKDTree

from image3_dask.algorithms.tweakreg_catalog import (
    coverage_mask_from_dq,
    filter_catalog_by_bounding_box,
    make_tweakreg_catalog,
)

SHAPE = (128, 128)


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    w, _ = jwst_wcs(10.0, 20.0, 0.0, shape=SHAPE)
    stars = star_field(w, 58, 40, rng, min_sep_pix=10)
    img, truth = render(w, stars, rng, SHAPE, sky=3.0, noise=1.0)
    dq = np.zeros(SHAPE, dtype=np.uint32)
    dq[:, :4] = 512  # NON_SCIENCE columns
    img[:, :4] = 0.0
    err = np.ones(SHAPE)
    return img, dq, err, truth


@pytest.mark.parametrize("finder", ["iraf", "segmentation"])
def test_finds_sources_at_true_positions(field, finder):
    img, dq, _, truth = field
    cat = make_tweakreg_catalog(img, coverage_mask_from_dq(dq), starfinder=finder, bkg_boxsize=32)
    assert cat.colnames[:4] == ["id", "x", "y", "flux"]
    d, _ = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[cat["x"], cat["y"]])
    assert len(cat) >= 0.7 * len(truth)
    assert np.median(d) < 0.15


def test_empty_and_errors():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (64, 64))
    cat = make_tweakreg_catalog(img, None, bkg_boxsize=32, snr_threshold=50)
    assert len(cat) == 0 and {"x", "y", "flux"} <= set(cat.colnames)
    with pytest.raises(ValueError):
        make_tweakreg_catalog(img, starfinder="nope")


def test_bounding_box_filter(field):
    img, dq, _, _ = field
    cat = make_tweakreg_catalog(img, coverage_mask_from_dq(dq), bkg_boxsize=32)
    sub = filter_catalog_by_bounding_box(cat, ((20.0, 80.0), (-0.5, 127.5)))
    assert 0 < len(sub) < len(cat)
    assert (sub["x"] > 20).all() and (sub["x"] < 80).all()
    cat2 = make_tweakreg_catalog(
        img, coverage_mask_from_dq(dq), bkg_boxsize=32, bounding_box=((20.0, 80.0), (-0.5, 127.5))
    )
    assert len(cat2) == len(sub)


@pytest.mark.jwst
@pytest.mark.parametrize(
    ("finder", "options"),
    [
        ("iraf", {}),
        ("dao", {"roundlo": -1.0, "roundhi": 1.0, "sharplo": 0.2, "sharphi": 1.0}),
        ("segmentation", {"npixels": 5, "brightest": 20}),
        ("iraf", {"brightest": 10, "minsep_fwhm": 2.0, "peakmax": 500.0}),
    ],
)
def test_parity_with_jwst(field, finder, options, tmp_path):
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    os.environ.setdefault("CRDS_SERVER_URL", "https://crds.invalid")
    os.environ.setdefault("CRDS_PATH", str(tmp_path / "crds"))
    pytest.importorskip("jwst")
    from jwst.tweakreg.tweakreg_catalog import make_tweakreg_catalog as jwst_make
    from stdatamodels.jwst.datamodels import ImageModel

    img, dq, err, _ = field
    model = ImageModel(data=img.astype(np.float32), dq=dq, err=err.astype(np.float32))
    # the same kwargs TweakRegStep._find_sources builds from its parameters
    p = {
        "minsep_fwhm": 0.0,
        "sigma_radius": 1.5,
        "sharplo": 0.5,
        "sharphi": 2.0,
        "roundlo": 0.0,
        "roundhi": 0.2,
        "brightest": 200,
        "peakmax": None,
        "npixels": 10,
        "connectivity": 8,
        "nlevels": 32,
        "contrast": 0.001,
        "multithresh_mode": "exponential",
        "localbkg_width": 0,
        "apermask_method": "correct",
        "kron_params": None,
        "deblend": True,
        **options,
    }
    kw = {
        "sigma_radius": p["sigma_radius"],
        "min_separation": max(2, int(p["minsep_fwhm"] * 2.5 + 0.5)),
        "sharpness_range": (p["sharplo"], p["sharphi"]),
        "roundness_range": (p["roundlo"], p["roundhi"]),
        "peak_max": p["peakmax"],
        "n_brightest": p["brightest"],
        "n_pixels": p["npixels"],
        "connectivity": p["connectivity"],
        "n_levels": p["nlevels"],
        "contrast": p["contrast"],
        "mode": p["multithresh_mode"],
        "error": model.err,
        "local_bkg_width": p["localbkg_width"],
        "aperture_mask_method": p["apermask_method"],
        "kron_params": p["kron_params"],
        "deblend": p["deblend"],
    }
    ref, _ = jwst_make(
        model, 10.0, 2.5, bkg_boxsize=32, starfinder_name=finder, starfinder_kwargs=kw
    )
    ours = make_tweakreg_catalog(
        model.data,
        coverage_mask_from_dq(model.dq),
        err=model.err,
        starfinder=finder,
        snr_threshold=10.0,
        kernel_fwhm=2.5,
        bkg_boxsize=32,
        **p,
    )
    assert len(ref) > 3
    assert len(ours) == len(ref)
    np.testing.assert_allclose(ours["x"], ref["xcentroid"], atol=1e-6)
    np.testing.assert_allclose(ours["y"], ref["ycentroid"], atol=1e-6)
    np.testing.assert_allclose(
        ours["flux"], np.asarray(getattr(ref["flux"], "value", ref["flux"])), rtol=1e-5
    )


def test_finder_kind_names_as_the_official_step():
    from image3_dask.algorithms.tweakreg_catalog import finder_kind

    assert [finder_kind(n) for n in ("IRAF", "irafstarfinder", "dao", "DAOStarFinder")] == [
        "iraf", "iraf", "dao", "dao"
    ]
    assert finder_kind("SourceFinder") == finder_kind("segmentation") == "segmentation"
    with pytest.raises(ValueError, match="Unknown starfinder type: sextractor"):
        finder_kind("sextractor")

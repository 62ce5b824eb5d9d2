"""CRDS reference files and step parameters through the real ``crds`` client, offline.

Each test builds a CRDS cache in a temporary ``CRDS_PATH`` (:mod:`crds_cache`: mappings with
their sha1sum, reference files, ``pars-*`` ASDF files) and points the client at it with
``CRDS_MODE=local`` and a closed loopback ``CRDS_SERVER_URL``. The APCORR/ABVEGAOFFSET files
are the simulator's (:func:`image3_dask.simulate.refs.write_reference_files`).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from helpers import compare_catalogs
from helpers.crds_cache import build_crds_cache, crds_env, write_pars

from image3_dask.io.crds_refs import SIMULATED_KEYWORD, is_simulated, resolve_references
from image3_dask.pipeline.config import PipelineConfig
from image3_dask.pipeline.image3 import Image3Pipeline

SKIP = {s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection")}

#: Step parameters the test cache's pars-* files set (none of them is a default).
PARS = {
    "pars-tweakregstep": {"abs_minobj": 7, "searchrad": 3.5},
    "pars-skymatchstep": {"skystat": "median", "nclip": 3},
    "pars-outlierdetectionstep": {"snr": "4.5 3.5", "maskpt": 0.6},
    "pars-resamplestep": {"pixfrac": 0.8},
    "pars-sourcecatalogstep": {"snr_threshold": 5.0, "npixels": 12, "kernel_fwhm": 2.5},
}
#: The pipeline's pars file, applied over the steps' (stpipe's order).
PIPELINE_PARS = {"pars-sourcecatalogstep": {"snr_threshold": 6.0}}


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("crdsfield")
    return simulate(
        instrument="miri",
        n=4,
        out_dir=out / "sim",
        seed=11,
        pattern="dither",
        shape=(160, 160),
        n_stars=1000,
        n_galaxies=40,
        flux_range_jy=(1e-6, 3e-4),
        sky_variation=0.0,
        cosmic_ray_rate=0.0,
        pointing_error=0.0,
        roll_error=0.0,
    )


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    from image3_dask.simulate.refs import write_reference_files

    root = tmp_path_factory.mktemp("crdsrefs")
    ap, ab = write_reference_files("miri", root)
    pars = {k: write_pars(root / f"{k}.asdf", k, v) for k, v in PARS.items()}
    pipe = write_pars(root / "pipe.asdf", "pars-image3pipeline", PIPELINE_PARS)
    return {"apcorr": ap, "abvegaoffset": ab, **pars, "pars-image3pipeline": pipe}


@pytest.fixture
def cache(tmp_path, monkeypatch, refs):
    """A cache with the reference files and every pars-* file; the client pointed at it."""
    root = build_crds_cache(tmp_path / "crds", refs)
    crds_env(monkeypatch, root)
    monkeypatch.delenv("STPIPE_DISABLE_CRDS_STEPPARS", raising=False)
    return root


def _unmarked_copy(sim, dest):
    """The simulated exposures without the simulator's mark (as real data would be)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sim.cal_paths:
        shutil.copy(p, dest / p.name)
        with fits.open(dest / p.name, mode="update") as hdul:
            del hdul[0].header[SIMULATED_KEYWORD]
    shutil.copy(sim.asn_path, dest / sim.asn_path.name)
    return dest / sim.asn_path.name


# --------------------------------------------------------------------------- resolution
def test_reference_files_and_pars_from_the_cache(field, cache, caplog):
    config = PipelineConfig()
    with caplog.at_level(logging.INFO, logger="image3_dask"):
        found = resolve_references(field.cal_paths, config)
    assert found.origin == {"apcorr": "crds", "abvegaoffset": "crds"}
    assert found.path("apcorr") == str(
        cache / "references" / "jwst" / "miri" / "jwst_miri_apcorr_0001.fits"
    )
    assert found.ref_file_name("abvegaoffset") == "crds://jwst_miri_abvegaoffset_0001.asdf"
    assert found.context == "jwst_0001.pmap" and found.simulated
    assert "Prefetch for APCORR reference file is" in caplog.text
    assert "PARS-SOURCECATALOGSTEP parameters found" in caplog.text
    step_of = {
        "pars-tweakregstep": "tweakreg",
        "pars-skymatchstep": "skymatch",
        "pars-outlierdetectionstep": "outlier_detection",
        "pars-resamplestep": "resample",
        "pars-sourcecatalogstep": "source_catalog",
    }
    for reftype, values in PARS.items():
        step = step_of[reftype]
        for name, value in values.items():
            if name in PIPELINE_PARS.get(reftype, {}):
                continue
            assert config[step][name] == value, (step, name)
            assert config.origins[step][name] == f"crds:jwst_miri_{reftype}_0001.asdf"
    # pars-image3pipeline over pars-sourcecatalogstep, as stpipe merges them
    assert config["source_catalog"]["snr_threshold"] == 6.0
    assert config.origins["source_catalog"]["snr_threshold"] == (
        "crds:jwst_miri_pars-image3pipeline_0001.asdf"
    )


def test_pars_precedence_and_disabling(field, cache, tmp_path, monkeypatch):
    """defaults < CRDS pars < parameter file < command line; the flag and the variable."""
    from image3_dask.pipeline.jwst_params import load_parameter_file

    toml = tmp_path / "mine.toml"
    toml.write_text("[steps.source_catalog]\nnpixels = 40\nkernel_fwhm = 2.0\n")
    config = PipelineConfig()
    steps, _ = load_parameter_file(toml)
    config.update(steps, source=str(toml))
    config.apply_overrides(["--steps.source_catalog.kernel_fwhm=3.0"])
    resolve_references(field.cal_paths, config)
    sc = config["source_catalog"]
    assert sc["snr_threshold"] == 6.0  # CRDS over the default
    assert sc["npixels"] == 40 and config.origins["source_catalog"]["npixels"] == str(toml)
    assert sc["kernel_fwhm"] == 3.0 and config.origins["source_catalog"]["kernel_fwhm"] == "--steps"
    assert (
        sc["bkg_boxsize"] == 1000 and config.origins["source_catalog"]["bkg_boxsize"] == "default"
    )
    # --disable-crds-steppars, then STPIPE_DISABLE_CRDS_STEPPARS: no parameters, files still
    config = PipelineConfig()
    found = resolve_references(field.cal_paths, config, disable_steppars=True)
    assert config["source_catalog"]["snr_threshold"] == 3.0 and found.origin["apcorr"] == "crds"
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    config = PipelineConfig()
    resolve_references(field.cal_paths, config)
    assert config["tweakreg"]["abs_minobj"] == 15


def test_override_wins_and_no_crds(field, cache, refs, monkeypatch):
    config = PipelineConfig({"source_catalog": {"override_apcorr": str(refs["apcorr"])}})
    found = resolve_references(field.cal_paths, config)
    assert found.origin == {"apcorr": "override", "abvegaoffset": "crds"}
    assert found.ref_file_name("apcorr") == str(refs["apcorr"].resolve())
    # CRDS not configured: no lookup at all
    for var in ("CRDS_PATH", "CRDS_SERVER_URL"):
        monkeypatch.delenv(var)
    found = resolve_references(field.cal_paths, PipelineConfig())
    assert found.origin == {"apcorr": "none", "abvegaoffset": "none"}
    assert "not configured" in found.messages["apcorr"]


def test_unreachable_crds_falls_back_with_a_warning(field, tmp_path, monkeypatch, caplog):
    """An empty cache and a closed server: a warning naming the server and the cache."""
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CRDS_SERVER_URL", "https://127.0.0.1:9")
    monkeypatch.delenv("CRDS_MODE", raising=False)
    monkeypatch.delenv("CRDS_CONTEXT", raising=False)
    with caplog.at_level(logging.WARNING, logger="image3_dask"):
        found = resolve_references(field.cal_paths, PipelineConfig())
    assert found.path("apcorr") is None and "CRDS lookup failed" in found.messages["apcorr"]
    assert "https://127.0.0.1:9" in caplog.text and str(tmp_path / "empty") in caplog.text


@pytest.mark.jwst
def test_pars_as_stpipe_resolves_them(field, cache):
    """stpipe's own resolution (Image3Pipeline.get_config_from_reference) on the same cache."""
    from jwst.pipeline import Image3Pipeline as JwstImage3

    theirs = JwstImage3.get_config_from_reference(str(field.cal_paths[0]))
    config = PipelineConfig()
    resolve_references(field.cal_paths, config)
    compared = 0
    for step, values in theirs["steps"].items():
        for name, value in values.items():
            if name in ("class", "name") or step not in config.steps:
                continue
            ours = config[step][name]
            assert config.origins[step][name].startswith("crds:"), (step, name)
            assert ours == value or str(ours) == str(value), (step, name, ours, value)
            compared += 1
    assert compared == sum(len(v) for v in PARS.values())
    assert theirs["steps"]["source_catalog"]["snr_threshold"] == 6.0


# --------------------------------------------------------------------------- catalogs
@pytest.fixture(scope="module")
def catalog_runs(field, refs, client, tmp_path_factory):
    """The pipeline (resample + catalog) with the CRDS cache, with the same files as
    overrides and no CRDS, and on unmarked copies without CRDS or overrides."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("crdsruns")
    out = {"root": root}
    steps = {**SKIP, "source_catalog": {"tiled": "never"}}
    try:
        cache = build_crds_cache(root / "crds", {k: refs[k] for k in ("apcorr", "abvegaoffset")})
        crds_env(mp, cache)
        out["crds"] = Image3Pipeline.call(
            field.asn_path, output_dir=root / "crds_run", client=client, progress=False, steps=steps
        )
        for var in ("CRDS_PATH", "CRDS_SERVER_URL", "CRDS_MODE", "CRDS_CONTEXT"):
            mp.delenv(var, raising=False)
        overrides = {
            "override_apcorr": str(refs["apcorr"]),
            "override_abvegaoffset": str(refs["abvegaoffset"]),
        }
        out["override"] = Image3Pipeline.call(
            field.asn_path,
            output_dir=root / "override_run",
            client=client,
            progress=False,
            steps={**steps, "source_catalog": {**steps["source_catalog"], **overrides}},
        )
        real = _unmarked_copy(field, root / "real")
        out["real"] = Image3Pipeline.call(
            real, output_dir=root / "real_run", client=client, progress=False, steps=steps
        )
        out["simulated"] = Image3Pipeline.call(
            field.asn_path, output_dir=root / "sim_run", client=client, progress=False, steps=steps
        )
        out["cache"] = cache
    finally:
        mp.undo()
    return out


def test_crds_catalog_equals_override_catalog(catalog_runs):
    from stdatamodels.jwst import datamodels

    a = QTable.read(catalog_runs["crds"]["cat"])
    b = QTable.read(catalog_runs["override"]["cat"])
    assert len(a) > 20
    compare_catalogs(a, b, exact=True)
    assert a.meta["ref_file"]["apcorr"]["name"] == "crds://jwst_miri_apcorr_0001.fits"
    assert a.meta["ref_file"]["crds"]["context_used"] == "jwst_0001.pmap"
    assert b.meta["ref_file"]["apcorr"]["name"].endswith("apcorr_miri.fits")
    with datamodels.open(catalog_runs["crds"]["segm"]) as segm:
        assert segm.meta.ref_file.apcorr.name == "crds://jwst_miri_apcorr_0001.fits"
        assert segm.meta.ref_file.abvegaoffset.name == "crds://jwst_miri_abvegaoffset_0001.asdf"
    assert "photometry" not in catalog_runs["crds"]


def test_unmarked_exposures_never_get_simulated_defaults(catalog_runs):
    assert not is_simulated(next((catalog_runs["root"] / "real").glob("*_cal.fits")))
    real = QTable.read(catalog_runs["real"]["cat"])
    sim = QTable.read(catalog_runs["simulated"]["cat"])
    # jwst's fallback: radii 1, 2, 3 px, no correction, AB-Vega offset 0; the summary says so
    assert list(real.meta["aperture_params"]["aperture_radii"]) == [1.0, 2.0, 3.0]
    assert list(real.meta["aperture_params"]["aperture_corrections"]) == [1.0, 1.0, 1.0]
    assert real.meta["abvega_offset"] == 0.0
    assert catalog_runs["real"]["photometry"].startswith("UNCORRECTED")
    assert real.meta["ref_file"]["apcorr"]["name"] == "N/A"
    # the same pixels with the simulator's mark: its documented defaults
    assert sim.meta["abvega_offset"] > 3 and "photometry" not in catalog_runs["simulated"]
    assert not np.allclose(sim.meta["aperture_params"]["aperture_radii"], [1.0, 2.0, 3.0])


@pytest.mark.jwst
def test_jwst_source_catalog_on_the_same_cache(catalog_runs, monkeypatch):
    from jwst.source_catalog import SourceCatalogStep

    crds_env(monkeypatch, catalog_runs["cache"])
    ref = SourceCatalogStep.call(str(catalog_runs["crds"]["i2d"]), save_results=False)
    ours = QTable.read(catalog_runs["crds"]["cat"])
    compare_catalogs(ours, ref, exact=True)


def test_config_show_merged_values_and_origins(field, cache, capsys):
    from image3_dask.cli import main

    assert main(["config", "--show", str(field.asn_path), "--steps.source_catalog.npixels=9"]) == 0
    lines = {ln.split(" = ")[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert lines["steps.source_catalog.snr_threshold"].endswith(
        "# crds:jwst_miri_pars-image3pipeline_0001.asdf"
    )
    assert lines["steps.source_catalog.kernel_fwhm"].endswith(
        "# crds:jwst_miri_pars-sourcecatalogstep_0001.asdf"
    )
    assert "= 6.0" in lines["steps.source_catalog.snr_threshold"]
    assert lines["steps.source_catalog.npixels"].split("#")[1].strip() == "--steps"
    assert lines["steps.source_catalog.bkg_boxsize"].endswith("# default")
    assert main(["config", "--show", str(field.asn_path), "--disable-crds-steppars"]) == 0
    out = capsys.readouterr().out
    assert "crds:" not in out and "steps.tweakreg.abs_minobj = 15" in out


def test_pipeline_runs_with_crds_pars(field, cache, client, tmp_path, caplog):
    """The pipeline applies the cache's pars-* files under the user's steps= values."""
    steps = {**SKIP, "source_catalog": {"npixels": 20, "tiled": "never"}}
    with caplog.at_level(logging.INFO, logger="image3_dask"):
        Image3Pipeline.call(
            field.asn_path, output_dir=tmp_path / "a", client=client, progress=False, steps=steps
        )
    assert "snr_threshold=6 npixels=20 kernel_fwhm=2.5" in caplog.text
    assert "resample: parameters from CRDS (jwst_miri_pars-resamplestep_0001.asdf)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="image3_dask"):
        Image3Pipeline.call(
            field.asn_path,
            output_dir=tmp_path / "b",
            client=client,
            progress=False,
            steps=steps,
            disable_crds_steppars=True,
        )
    assert "snr_threshold=3 npixels=20 kernel_fwhm=2" in caplog.text
    assert "parameters from CRDS" not in caplog.text


class _RecordingClient:
    """Enough of a distributed.Client for submit_job: metadata in a dict, submit recorded."""

    def __init__(self):
        self.metadata: dict = {}
        self.submitted: list = []

    def get_metadata(self, keys, default=None):
        value = self.metadata
        for k in keys:
            if not isinstance(value, dict) or k not in value:
                return default
            value = value[k]
        return value

    def set_metadata(self, keys, value):
        d = self.metadata
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    def submit(self, func, *args, **kwargs):
        self.submitted.append(args)


def test_submitted_job_carries_what_the_client_resolved(field, cache, tmp_path):
    """submit_job asks CRDS on the submitting client; the driver gets the values and files."""
    from image3_dask.service.submit import submit_job

    client = _RecordingClient()
    config = PipelineConfig({"source_catalog": {"npixels": 20}})
    submit_job(client, field.asn_path, tmp_path / "out", config)
    (spec,) = client.submitted[0]
    assert spec["config"]["source_catalog"]["snr_threshold"] == 6.0  # from CRDS
    assert spec["config"]["source_catalog"]["npixels"] == 20  # the user's
    assert spec["references"].origin == {"apcorr": "crds", "abvegaoffset": "crds"}
    assert config["source_catalog"]["snr_threshold"] == 3.0  # the caller's config untouched

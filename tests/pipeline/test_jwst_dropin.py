"""jwst users' code with one word changed: the MIRI Image3 notebook, strun, parameter files.

The notebook's code (the "Level 3 Imager (CALIMAGE3)" MIRI walk-through: ``asn_from_list``,
``Image3Pipeline.call(asn_file, save_results=True, output_dir=..., steps={...})``, the i2d with
``LogNorm`` and the catalog's ``CircularAperture`` circles) runs as a plain unguarded script and
on standard input, with ``from image3_dask import Image3Pipeline`` instead of jwst's. Three
lines differ from the notebook for reasons that are not ours and would fail with jwst 3.0 too:
photutils >= 2 imports ``CircularAperture`` from ``photutils.aperture`` and wants an (N, 2)
array of positions, and jwst 3.0's catalogs name the columns ``label`` and
``aper_total_abmag`` (the notebook's ``id`` and ``abmag`` are from jwst 0.13).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from image3_dask.errors import ConfigError
from image3_dask.pipeline.config import PipelineConfig
from image3_dask.pipeline.image3 import jwst_call_arguments
from image3_dask.pipeline.jwst_params import (
    PipelineOptions,
    load_parameter_file,
    read_cfg,
    write_asdf,
)

try:
    import jwst  # noqa: F401

    HAVE_JWST = True
except ImportError:
    HAVE_JWST = False

OFFLINE = {
    "STPIPE_DISABLE_CRDS_STEPPARS": "True",
    "CRDS_SERVER_URL": "https://localhost:1",
    "MPLBACKEND": "Agg",
}

JWST_ASN = """\
from jwst.associations.lib.member import Member
from jwst.associations.asn_from_list import asn_from_list

# load the science and background files to lists
my_science_files = glob.glob('IMA_science/*cal.fits')
my_science_files = sorted(my_science_files)

# set the association name
asn_name = 'my_galaxy'

# setup an empty level 2 association structure
asn = asn_from_list(my_science_files, product_name=asn_name)

# set some metadata
asn['asn_pool'] = asn_name + '_pool'
asn['asn_type'] = 'image3'

# print the association and save to file
name, ser = asn.dump()
print(ser)

asn_file = asn_name + '_lvl3_asn.json'
with open(asn_file, 'w') as f:
    f.write(ser)
"""

# Without jwst: the same association written by `image3-dask asn`.
OUR_ASN = """\
my_science_files = sorted(glob.glob('IMA_science/*cal.fits'))
asn_name = 'my_galaxy'
asn_file = asn_name + '_lvl3_asn.json'
call([sys.executable, '-m', 'image3_dask.cli', 'asn', *my_science_files,
      '--product-name', asn_name, '--output', asn_file])
"""

NOTEBOOK = """\
# imports
import os, glob, shutil, sys
import numpy as np
from matplotlib.colors import LogNorm
import matplotlib.pyplot as plt
from subprocess import call
{datamodels_import}
from astropy.table import Table
from photutils.aperture import CircularAperture

# set the CRDS_CONTEXT
os.environ["CRDS_CONTEXT"] = "jwst_0535.pmap"

{asn_code}
from image3_dask import Image3Pipeline
print(Image3Pipeline.__doc__)

# user specified
my_output_dir = 'demo_output'

# the output directory should be created if it doesn't exist
if not os.path.exists(my_output_dir):
    os.mkdir(my_output_dir)

# run the pipeline
Image3Pipeline.call(asn_file, save_results=True, output_dir=my_output_dir,
                    steps={{'tweakreg':{{'skip':True}},
                           'source_catalog':{{'save_results':True, 'kernel_fwhm': 3.0, 'snr_threshold': 5.}}}})

driz_dm = datamodels.open(os.path.join(my_output_dir,'my_galaxy_i2d.fits'))

# plot--------------------------------------
fig, axs = plt.subplots(1, 1, figsize=(8, 8))

# show last frame of first integration
axs.imshow(driz_dm.data, cmap='jet', interpolation='nearest', origin='lower', norm=LogNorm(vmin=1,vmax=1000))
axs.annotate('Drizzled image', xy=(0.0, 1.02), xycoords='axes fraction', fontsize=12, fontweight='bold', color='k')
axs.set_facecolor('black')

plt.tight_layout()
plt.show()

my_catalog = os.path.join(my_output_dir,'my_galaxy_cat.ecsv')
sources = Table.read(my_catalog, format='ascii.ecsv')

print(sources.columns)    # print all available column names
print()
sources['label', 'xcentroid', 'ycentroid', 'sky_centroid', 'aper_total_abmag'].pprint(max_width=200)

# read source X,Y positions from the table, show with circles of radius 10pix
positions = np.transpose((sources['xcentroid'], sources['ycentroid']))
apertures = CircularAperture(positions, r=15.)

# plot--------------------------------------
fig, axs = plt.subplots(1, 1, figsize=(8, 8))

# show last frame of first integration
axs.imshow(driz_dm.data, cmap='jet', interpolation='nearest', origin='lower', norm=LogNorm(vmin=1,vmax=1000))
apertures.plot(color='yellow', lw=2.0, alpha=0.8)
axs.annotate('Drizzled image with detected sources', xy=(0.0, 1.02), xycoords='axes fraction', fontsize=12, fontweight='bold', color='k')
axs.set_facecolor('black')

plt.tight_layout()
plt.savefig('notebook_sources.png')
print('NOTEBOOK DONE', len(sources))
"""


def notebook_code() -> str:
    """The notebook's cells as one script (jwst's asn_from_list and datamodels when installed)."""
    if HAVE_JWST:
        return NOTEBOOK.format(datamodels_import="from jwst import datamodels", asn_code=JWST_ASN)
    return NOTEBOOK.format(
        datamodels_import="from stdatamodels.jwst import datamodels", asn_code=OUR_ASN
    )


@pytest.fixture(scope="module")
def notebook_data(tmp_path_factory):
    """The notebook's folder layout: IMA_science/ with a simulated 4-point MIRI dither."""
    from image3_dask.simulate import simulate

    root = tmp_path_factory.mktemp("notebook")
    simulate(
        out_dir=root / "IMA_science",
        instrument="miri",
        n=4,
        pattern="dither",
        shape=(256, 256),
        seed=1,
    )
    (root / "IMA_science" / "asn.json").unlink()  # the notebook makes its own
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ, **OFFLINE)
    env.setdefault("CRDS_PATH", tempfile.mkdtemp(prefix="crds_"))
    return env


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_notebook_runs_unguarded(notebook_data, tmp_path, how):
    """The notebook's code, no ``if __name__ == "__main__":``, as a file and on stdin."""
    work = tmp_path / "nb"
    shutil.copytree(notebook_data, work)
    code = notebook_code()
    if how == "script":
        (work / "notebook.py").write_text(code)
        cmd, stdin = [sys.executable, "notebook.py"], None
    else:
        cmd, stdin = [sys.executable, "-"], code
    proc = subprocess.run(
        cmd, input=stdin, cwd=work, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOTEBOOK DONE" in proc.stdout
    assert "Nanny failed" not in proc.stderr and "Traceback" not in proc.stderr
    assert "Starting a local Dask cluster" in proc.stderr  # said at once (configure_log)
    out = work / "demo_output"
    for name in ("my_galaxy_i2d.fits", "my_galaxy_cat.ecsv", "my_galaxy_segm.fits"):
        assert (out / name).is_file()
    assert len(list(out.glob("*_crf.fits"))) == 4
    assert (work / "notebook_sources.png").stat().st_size > 10_000


def test_python_c_with_multiprocessing_in_use(tmp_path):
    """``python -c``, with a spawn Pool used first: the workers never re-run the caller."""
    code = (
        "import multiprocessing as mp\n"
        "mp.set_start_method('spawn')\n"
        "with mp.Pool(2) as p:\n"
        "    assert p.map(abs, [-1, -2]) == [1, 2]\n"
        "from image3_dask.pipeline.cluster import connect\n"
        "with connect(n_workers=2, dashboard_address=':0') as c:\n"
        "    print('WORKERS', len(c.run(lambda: 1)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WORKERS 2" in proc.stdout


# ------------------------------------------------------------------ call's keywords


def _call(**kw):
    steps = kw.pop("steps", None)
    return jwst_call_arguments(
        "a.json",
        output_dir=kw.pop("output_dir", None),
        steps=steps,
        config_file=kw.pop("config_file", None),
        save_results=kw.pop("save_results", None),
        output_file=kw.pop("output_file", None),
        input_dir=kw.pop("input_dir", None),
        logcfg=kw.pop("logcfg", None),
        kwargs=kw,
    )


def test_call_takes_the_notebooks_keywords():
    config, run = _call(
        save_results=True,
        output_dir="demo_output",
        steps={
            "assign_mtwcs": {"skip": False},
            "tweakreg": {"skip": True},
            "source_catalog": {"save_results": True, "kernel_fwhm": 3.0, "snr_threshold": 5.0},
            "outlier_detection": {"save_results": False, "suffix": "crf"},
        },
        in_memory=False,
        n_workers=2,
    )
    assert config["tweakreg"].skip is True
    assert config["source_catalog"].snr_threshold == 5.0
    assert config["outlier_detection"].save_results is True  # the pipeline's, as jwst
    assert run == {"inputs": "a.json", "output_dir": "demo_output", "n_workers": 2}


def test_call_output_file_and_input_dir():
    _, run = _call(output_file="mosaic.fits", input_dir="data")
    assert run["product_name"] == "mosaic" and run["inputs"] == Path("data") / "a.json"
    assert run["output_dir"] == "."


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"save_results": False}, "always writes its products"),
        ({"logcfg": "log.cfg"}, "logcfg"),
        ({"output_ext": ".asdf"}, "output_ext"),
        ({"pre_hooks": ["x"]}, "pre_hooks"),
        ({"skip": True}, "nothing to run"),
        ({"verbosity": 3}, "unknown keyword argument(s) verbosity"),
        ({"steps": {"tweakreg": {"output_dir": "x"}}}, "steps.tweakreg.output_dir"),
        ({"steps": {"resample": {"blendheaders": False}}}, "other observing modes"),
        ({"steps": {"resample": {"pixfrak": 1}}}, "unknown parameter 'pixfrak'"),
        ({"steps": {"cube_build": {}}}, "unknown step 'cube_build'"),
        ({"steps": {s: {"skip": True} for s in PipelineConfig().steps}}, "every step is skipped"),
    ],
)
def test_call_refuses_what_it_cannot_honour(kw, message):
    with pytest.raises(ConfigError, match=None) as exc:
        _call(**kw)
    assert message in str(exc.value)


# ------------------------------------------------------------------ parameter files

PIPELINE_CFG = """\
name = "Image3Pipeline"
class = "jwst.pipeline.Image3Pipeline"   # as collect_pipeline_cfgs writes it
save_results = True

    [steps]
      [[tweakreg]]
        config_file = tweakreg.cfg
      [[source_catalog]]
        snr_threshold = 5.0
        kron_params = 2.5, 1.4   # a list
      [[resample]]
        pixfrac = '0.8'
"""
STEP_CFG = """\
name = "tweakreg"
class = "jwst.tweakreg.TweakRegStep"
skip = True
searchrad = 3.0
"""


def test_cfg_files_with_step_files(tmp_path):
    (tmp_path / "calwebb_image3.cfg").write_text(PIPELINE_CFG)
    (tmp_path / "tweakreg.cfg").write_text(STEP_CFG)
    raw = read_cfg(tmp_path / "calwebb_image3.cfg")
    assert raw["steps"]["source_catalog"]["kron_params"] == ["2.5", "1.4"]
    steps, options = load_parameter_file(tmp_path / "calwebb_image3.cfg")
    config = PipelineConfig()
    config.update(steps)
    assert config["tweakreg"].skip is True and config["tweakreg"].searchrad == 3.0
    assert config["source_catalog"].kron_params == [2.5, 1.4]
    assert config["resample"].pixfrac == 0.8
    assert options.save_results is True


def test_asdf_round_trip_keeps_our_parameters(tmp_path):
    config = PipelineConfig(
        {
            "tweakreg": {"skip": True, "align_mode": "official"},
            "resample": {"tile_shape": [256, 256]},
        }
    )
    path = write_asdf(config, tmp_path / "pars.asdf", PipelineOptions(output_file="m"))
    steps, options = load_parameter_file(path)
    back = PipelineConfig()
    back.update(steps)
    assert back.to_dict() == config.to_dict()
    assert options.output_file == "m"


def test_cli_config_converts_cfg_to_asdf_and_back(tmp_path):
    from image3_dask.cli import main

    (tmp_path / "calwebb_image3.cfg").write_text(PIPELINE_CFG)
    (tmp_path / "tweakreg.cfg").write_text(STEP_CFG)
    argv = ["config", "--from", str(tmp_path / "calwebb_image3.cfg"), "-o", str(tmp_path)]
    assert main([*argv, "--output", "p.asdf", "--steps.skymatch.skymethod", "global"]) == 0
    assert main(["config", "--from", str(tmp_path / "p.asdf"), "-o", str(tmp_path)]) == 0
    toml = PipelineConfig.from_toml(tmp_path / "image3.toml")
    assert toml["tweakreg"].skip is True and toml["skymatch"].skymethod == "global"


# ------------------------------------------------------------------ jwst's own files


@pytest.fixture(scope="module")
def jwst_files(tmp_path_factory):
    """``collect_pipeline_cfgs`` and ``strun --save-parameters`` of the installed jwst."""
    pytest.importorskip("jwst")
    root = tmp_path_factory.mktemp("jwst_files")
    bindir = Path(sys.executable).parent
    subprocess.run(
        [str(bindir / "collect_pipeline_cfgs"), "cfgs"],
        cwd=root,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    cfg = root / "cfgs" / "calwebb_image3.cfg"
    cfg.write_text(
        cfg.read_text() + "\n[steps]\n  [[tweakreg]]\n    config_file = tweakreg.cfg\n"
        "    skip = True\n  [[source_catalog]]\n    snr_threshold = 5.0\n"
    )
    # strun saves the parameters, then fails for want of an input (as jwst does)
    subprocess.run(
        [str(bindir / "strun"), "calwebb_image3", "--save-parameters", "pars.asdf",
         "--steps.tweakreg.skip=true", "--steps.source_catalog.snr_threshold=5"],
        cwd=root, env=_env(), capture_output=True, timeout=120,
    )  # fmt: skip
    assert (root / "pars.asdf").is_file()
    return root


@pytest.mark.jwst
def test_jwst_parameter_files_read_as_jwst_means_them(jwst_files):
    pytest.importorskip("jwst")
    for path in (jwst_files / "cfgs" / "calwebb_image3.cfg", jwst_files / "pars.asdf"):
        steps, _ = load_parameter_file(path)
        config = PipelineConfig()
        config.update(steps)
        assert config["tweakreg"].skip is True
        assert config["source_catalog"].snr_threshold == 5.0
        rest = {s: v for s, v in config.to_dict().items()}
        rest["tweakreg"].pop("skip")
        rest["source_catalog"].pop("snr_threshold")
        default = PipelineConfig().to_dict()
        default["tweakreg"].pop("skip")
        default["source_catalog"].pop("snr_threshold")
        for step in ("skymatch", "outlier_detection", "resample", "source_catalog", "tweakreg"):
            for name, value in rest[step].items():
                if name != "save_results":  # jwst writes false; calwebb_image3 overrides it
                    assert value == default[step][name], (step, name)


@pytest.mark.jwst
def test_jwst_reads_our_asdf_file(tmp_path):
    pytest.importorskip("jwst")
    from stpipe import config_parser

    config = PipelineConfig({"tweakreg": {"skip": True}, "resample": {"pixfrac": 0.7}})
    path = write_asdf(config, tmp_path / "ours.asdf")
    cfg = config_parser.load_config_file(str(path))
    assert cfg["class"] == "jwst.pipeline.calwebb_image3.Image3Pipeline"
    assert cfg["steps"]["resample"]["pixfrac"] == 0.7
    assert cfg["steps"]["tweakreg"]["skip"] is True
    from jwst.pipeline import Image3Pipeline

    pipe = Image3Pipeline.from_config_file(str(path))  # validates every value against jwst
    assert pipe.resample.pixfrac == 0.7 and pipe.tweakreg.skip is True


# ------------------------------------------------------------------ strun = run


@pytest.fixture(scope="module")
def reference_run(small_dither, tmp_path_factory):
    """`image3-dask run` with the parameters the strun tests give in files."""
    from image3_dask.cli import main

    out = tmp_path_factory.mktemp("run_ref")
    argv = [
        "-q", "run", str(small_dither.asn_path), "--output_dir", str(out), "--workers", "2",
        "--no-mosaic-page", "--steps.tweakreg.skip", "true",
        "--steps.source_catalog.snr_threshold=5",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def _same_products(a: Path, b: Path, product: str) -> None:
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(a / f"{product}_i2d.fits") as fa, fits.open(b / f"{product}_i2d.fits") as fb:
        np.testing.assert_array_equal(fa["SCI"].data, fb["SCI"].data)
    ca, cb = Table.read(a / f"{product}_cat.ecsv"), Table.read(b / f"{product}_cat.ecsv")
    assert len(ca) == len(cb) > 0
    np.testing.assert_allclose(ca["xcentroid"], cb["xcentroid"])


def _param_files(tmp_path: Path) -> dict[str, Path]:
    """A .cfg pipeline file (+ step file) and an ASDF file: jwst's own tools where installed."""
    if HAVE_JWST:
        bindir = Path(sys.executable).parent
        subprocess.run(
            [str(bindir / "collect_pipeline_cfgs"), "cfgs"], cwd=tmp_path, env=_env(),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [str(bindir / "strun"), "calwebb_image3", "--save-parameters", "pars.asdf",
             "--steps.tweakreg.skip=true", "--steps.source_catalog.snr_threshold=5"],
            cwd=tmp_path, env=_env(), capture_output=True, timeout=120,
        )  # fmt: skip
    else:
        (tmp_path / "cfgs").mkdir()
        (tmp_path / "cfgs" / "calwebb_image3.cfg").write_text(
            'name = "Image3Pipeline"\nclass = "jwst.pipeline.Image3Pipeline"\n'
        )
        (tmp_path / "cfgs" / "tweakreg.cfg").write_text(
            'name = "tweakreg"\nclass = "jwst.tweakreg.TweakRegStep"\n'
        )
        config = PipelineConfig(
            {"tweakreg": {"skip": True}, "source_catalog": {"snr_threshold": 5}}
        )
        write_asdf(config, tmp_path / "pars.asdf")
    cfg = tmp_path / "cfgs" / "calwebb_image3.cfg"
    cfg.write_text(
        cfg.read_text() + "\n[steps]\n  [[tweakreg]]\n    config_file = tweakreg.cfg\n"
        "    skip = True\n  [[source_catalog]]\n    snr_threshold = 5.0\n"
    )
    return {"cfg": cfg, "asdf": tmp_path / "pars.asdf"}


@pytest.mark.parametrize("kind", ["cfg", "asdf"])
def test_strun_with_parameter_file_equals_run(small_dither, reference_run, tmp_path, kind):
    """``image3-dask strun FILE ASN --output_dir=...`` gives the products of the same ``run``."""
    from image3_dask.cli import main

    path = _param_files(tmp_path)[kind]
    out = tmp_path / "out"
    argv = [
        "-q", "strun", str(path), str(small_dither.asn_path), f"--output_dir={out}",
        "--save_results", "true", "--workers", "2", "--no-mosaic-page",
    ]  # fmt: skip
    assert main(argv) == 0
    _same_products(
        reference_run, out, json.loads(small_dither.asn_path.read_text())["products"][0]["name"]
    )


def test_strun_class_name_and_overrides(small_dither, tmp_path, monkeypatch):
    """strun's other spellings: the class, values after a space, --output_file."""
    from image3_dask.cli import main
    from image3_dask.pipeline.image3 import Image3Pipeline

    calls = []

    def fake_run(self, inputs, output_dir=".", **kwargs):
        calls.append((self.config, inputs, output_dir, kwargs))
        return {}

    monkeypatch.setattr(Image3Pipeline, "run", fake_run)
    argv = [
        "strun", "jwst.pipeline.Image3Pipeline", str(small_dither.asn_path),
        "--output_dir", str(tmp_path), "--output_file", "mine.fits",
        "--steps.tweakreg.skip", "true", "--steps.resample.rotation", "-30",
        "--save-parameters", str(tmp_path / "saved.asdf"),
    ]  # fmt: skip
    assert main(argv) == 0
    config, inputs, output_dir, kwargs = calls[0]
    assert config["tweakreg"].skip is True and config["resample"].rotation == -30.0
    assert output_dir == str(tmp_path) and kwargs["product_name"] == "mine"
    steps, _ = load_parameter_file(tmp_path / "saved.asdf")
    assert str(steps["resample"]["rotation"]) == "-30.0"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["strun", "calwebb_spec3", "a.json"], "runs calwebb_image3"),
        (["strun", "jwst.tweakreg.TweakRegStep", "a.json"], "not a step alone"),
        (["strun", "calwebb_image3", "a.json", "--save_results=false"], "always writes"),
        (["strun", "calwebb_image3", "a.json", "--logcfg", "x.cfg"], "--logcfg"),
        (["strun", "calwebb_image3"], "give the association"),
        (
            ["run", "a.json", *(f"--steps.{s}.skip=true" for s in PipelineConfig().steps)],
            "every step is skipped",
        ),
        (["asn", "x_cal.fits", "--product-name", "p", "-o", "my_asn.json"], "-o names a folder"),
    ],
)
def test_refusals_are_one_line(argv, message, capsys):
    from image3_dask.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_steps_option_without_value_is_a_usage_error(capsys):
    from image3_dask.cli import main

    with pytest.raises(SystemExit):
        main(["run", "a.json", "--steps.tweakreg.skip"])
    assert "give a value" in capsys.readouterr().err

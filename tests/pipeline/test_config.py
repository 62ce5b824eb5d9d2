"""Step parameters keep jwst's names and defaults and reject what they do not know."""

import pytest

from image3_dask.errors import ConfigError
from image3_dask.pipeline.config import STEP_PARAMS, PipelineConfig, parse_spec
from image3_dask.pipeline.step_specs import OFFICIAL_SPECS, STEP_ORDER


def test_defaults_are_those_of_jwst_3():
    """A few well-known jwst 3.0 defaults, checked where jwst is not installed; every official
    parameter is compared with jwst's own step specs in ``test_official_parameters_match_jwst``."""
    c = PipelineConfig()
    assert c["resample"].pixfrac == 1.0 and c["resample"].kernel == "square"
    assert c["resample"].weight_type == "ivm" and c["resample"].fillval == "NAN"
    assert c["skymatch"].skymethod == "match" and c["skymatch"].skystat == "mode"
    assert c["outlier_detection"].snr == "5.0 4.0" and c["outlier_detection"].maskpt == 0.7
    assert c["tweakreg"].starfinder == "iraf" and c["tweakreg"].searchrad == 2.0
    assert c["source_catalog"].snr_threshold == 3.0 and c["source_catalog"].npixels == 25
    assert c["tweakreg"].abs_refcat == ""


@pytest.mark.jwst
def test_every_official_parameter_is_known():
    pytest.importorskip("jwst")
    from jwst.pipeline import Image3Pipeline

    ours = {step: set(params) for step, params in STEP_PARAMS.items()}
    not_here = {"output_use_model", "search_output_file", "rolling_window_width", "ifu_second_check",
                "blendheaders", "suffix"}
    for step in ours:
        cls = Image3Pipeline.step_defs[step]
        spec = cls.load_spec_file()
        for name in spec:
            if name in not_here or name in ("input_dir", "output_dir", "output_ext", "output_file",
                                             "output_use_index", "pre_hooks", "post_hooks"):
                continue
            assert name in ours[step], f"{step}.{name} missing"


@pytest.mark.jwst
@pytest.mark.parametrize("step", STEP_ORDER)
def test_official_parameters_match_jwst(step):
    """Type, options, bounds and default of each official parameter, as jwst declares them.

    The declarations come from the step's configobj spec (``Step.load_spec_file``), the defaults
    from an instance of the step (stpipe's own parsing and validation of that spec).
    """
    pytest.importorskip("jwst")
    from jwst.pipeline import Image3Pipeline

    cls = Image3Pipeline.step_defs[step]
    spec = cls.load_spec_file()
    jwst_step = cls()
    defaults = PipelineConfig()[step]
    for name, ours in parse_spec(OFFICIAL_SPECS[step]).items():
        assert name in spec, f"{step}.{name} is not a parameter of jwst's {cls.__name__}"
        # configobj accepts a trailing comma (jwst 3.0 writes "xoffset = float(default=0.0),")
        (t,) = parse_spec(f"{name} = {spec[name].rstrip(',')}").values()
        assert (ours.kind, ours.options, ours.vmin, ours.vmax) == (
            t.kind, t.options, t.vmin, t.vmax
        ), f"{step}.{name}: declared as {spec[name]} in jwst"
        # stpipe's value, converted as ours would convert it (an option 8 arrives as '8')
        expected = ours.coerce(getattr(jwst_step, name), f"jwst {step}.{name}")
        assert defaults[name] == expected, f"{step}.{name}: {defaults[name]!r} != {expected!r}"


def test_overrides_are_typed_and_checked():
    c = PipelineConfig()
    c.apply_overrides(["--steps.resample.pixfrac=0.8", "steps.tweakreg.skip=true",
                       "--steps.resample.output_shape=200,100"])
    assert c["resample"].pixfrac == 0.8 and c["tweakreg"].skip is True
    assert c["resample"].output_shape == [200, 100]
    with pytest.raises(ConfigError, match="unknown parameter 'pixfrak'.*pixfrac"):
        c.apply_overrides(["--steps.resample.pixfrak=0.8"])
    with pytest.raises(ConfigError, match="unknown step 'resampel'"):
        c.apply_overrides(["--steps.resampel.pixfrac=0.8"])
    with pytest.raises(ConfigError, match="above the maximum"):
        c.apply_overrides(["--steps.resample.pixfrac=1.5"])
    with pytest.raises(ConfigError, match="not one of"):
        c.apply_overrides(["--steps.resample.kernel=bicubic"])
    with pytest.raises(ConfigError, match="not a valid boolean"):
        c.apply_overrides(["--steps.resample.skip=maybe"])


def test_toml_round_trip(tmp_path):
    c = PipelineConfig({"resample": {"pixfrac": 0.5, "kernel": "gaussian"}, "skymatch": {"skymethod": "global"}})
    path = c.write_toml(tmp_path / "cfg.toml")
    text = path.read_text()
    assert "# Pixel shrinkage factor" in text and "[steps.source_catalog]" in text
    back = PipelineConfig.from_toml(path)
    assert back.to_dict() == c.to_dict()


def test_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[steps.resample]\nkernle = 'square'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*unknown parameter 'kernle'"):
        PipelineConfig.from_toml(p)

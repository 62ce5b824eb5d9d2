"""jwst's parameter files and keyword arguments, read into (and written from) our configuration.

jwst users carry their parameters in three forms, all read here without jwst installed:

- ``.cfg`` files (configobj syntax) as ``collect_pipeline_cfgs`` writes them: a pipeline file
  (``class = "jwst.pipeline.Image3Pipeline"``, pipeline parameters, a ``[steps]`` section with
  one ``[[step]]`` per step, which may name a step file with ``config_file = tweakreg.cfg``,
  relative to the pipeline file) and step files (``class``, ``name`` and parameters);
- ASDF parameter files, as ``strun --save-parameters`` and CRDS's ``pars-*`` files write them:
  ``class``, ``name``, ``parameters`` and, for a pipeline, ``steps`` (a list of the same);
  the older layout with everything under ``parameters`` is read too;
- the keyword arguments of ``Image3Pipeline.call`` (``save_results``, ``output_dir``,
  ``output_file``, ``steps={...}``).

stpipe gives every step bookkeeping parameters (``output_ext``, ``pre_hooks``, ``suffix``...).
They are accepted at the values jwst itself uses for calwebb_image3 (so that its own files read
back) and refused with a :class:`~image3_dask.errors.ConfigError` otherwise: nothing a user
asks for is silently dropped. :func:`write_asdf` writes jwst's ASDF layout, which jwst reads
back (our own parameters go in a separate ``image3_dask`` block that jwst ignores).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image3_dask.errors import ConfigError
from image3_dask.io.asdf_tree import plain
from image3_dask.pipeline.config import STEP_PARAMS, PipelineConfig, parse_bool
from image3_dask.pipeline.step_specs import EXTRA_SPECS, STEP_ORDER

__all__ = [
    "PIPELINE_CLASS",
    "STEP_CLASSES",
    "PipelineOptions",
    "classify",
    "load_parameter_file",
    "read_cfg",
    "read_class",
    "split_pipeline_parameters",
    "step_parameters",
    "write_asdf",
]

#: The class jwst names the pipeline by, and its other accepted spellings.
PIPELINE_CLASS = "jwst.pipeline.calwebb_image3.Image3Pipeline"
_PIPELINE_NAMES = {
    "calwebb_image3",
    "Image3Pipeline",
    "jwst.pipeline.Image3Pipeline",
    PIPELINE_CLASS,
}

#: Step name -> jwst's fully qualified class (``assign_mtwcs`` only acts on moving targets).
STEP_CLASSES = {
    "assign_mtwcs": "jwst.assign_mtwcs.assign_mtwcs_step.AssignMTWcsStep",
    "tweakreg": "jwst.tweakreg.tweakreg_step.TweakRegStep",
    "skymatch": "jwst.skymatch.skymatch_step.SkyMatchStep",
    "outlier_detection": "jwst.outlier_detection.outlier_detection_step.OutlierDetectionStep",
    "resample": "jwst.resample.resample_step.ResampleStep",
    "source_catalog": "jwst.source_catalog.source_catalog_step.SourceCatalogStep",
}

#: stpipe's bookkeeping parameters of every step: the values accepted (jwst's own, per step).
_ANY_BOOL = (True, False)
_GENERIC: dict[str, tuple] = {
    "input_dir": ("", None),
    "output_dir": (None,),
    "output_file": (None,),
    "output_ext": (".fits",),
    "output_use_model": _ANY_BOOL,
    "output_use_index": (True,),
    "search_output_file": _ANY_BOOL,
    "pre_hooks": ([], None),
    "post_hooks": ([], None),
}
_DEFAULT_SUFFIX = {
    "assign_mtwcs": "assign_mtwcs",
    "outlier_detection": "crf",
    "resample": "i2d",
    "source_catalog": "cat",
}
#: Parameters of jwst's steps for other observing modes, accepted at their defaults only.
_OTHER_MODES = {
    "outlier_detection": {"ifu_second_check": False, "rolling_window_width": 25},
    "resample": {"blendheaders": True},
}
#: Steps whose ``save_results`` jwst's calwebb_image3 replaces by the pipeline's.
_SAVED_BY_PIPELINE = ("outlier_detection", "resample", "source_catalog")
_IMAGE3_ONLY = {
    step: {n for n in STEP_PARAMS[step] if f"{n} =" in EXTRA_SPECS[step]} for step in STEP_ORDER
}


@dataclass
class PipelineOptions:
    """The pipeline-level parameters jwst users set (``strun`` options, ``call`` keywords).

    ``output_file`` names the products (``<output_file>_i2d.fits``...) as the association's
    product name does; ``input_dir`` is where relative input paths are looked up;
    ``save_results`` (when given) replaces the ``save_results`` of outlier_detection, resample
    and source_catalog, as jwst's calwebb_image3 does.
    """

    output_dir: str | None = None
    output_file: str | None = None
    input_dir: str | None = None
    save_results: bool | None = None

    def update(self, other: PipelineOptions) -> None:
        """Take the values ``other`` sets (later sources win)."""
        for name in ("output_dir", "output_file", "input_dir", "save_results"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)

    @property
    def product_name(self) -> str | None:
        """``output_file`` without a file extension (``mosaic.fits`` -> ``mosaic``)."""
        if not self.output_file:
            return None
        name = Path(self.output_file).name
        for ext in (".fits", ".asdf", ".ecsv"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        return name.removesuffix("_i2d")


def classify(name: str) -> str:
    """``"pipeline"`` for calwebb_image3's names and classes, else the step's name.

    Raises
    ------
    ConfigError
        When ``name`` is neither calwebb_image3 nor one of its steps.
    """
    if name in _PIPELINE_NAMES:
        return "pipeline"
    short = name.rsplit(".", 1)[-1]
    for step, cls in STEP_CLASSES.items():
        if name == step or short == cls.rsplit(".", 1)[-1]:
            return step
    raise ConfigError(
        f"{name!r} is not calwebb_image3 or one of its steps; image3-dask runs "
        f"calwebb_image3 (jwst.pipeline.Image3Pipeline) only"
    )


def _as_bool(value: Any, where: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not true or false") from None


def _normal(value: Any) -> Any:
    """A value as configobj strings spell it, made comparable (``"True"`` -> True)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return None if text.lower() == "none" else text
    return list(value) if isinstance(value, tuple) else value


def _accepted(value: Any, allowed: tuple) -> bool:
    v = _normal(value)
    return any(v == a and type(v) is type(a) for a in allowed)


def step_parameters(step: str, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Our parameters of ``step`` from jwst's (a ``steps={...}`` entry or a file's section).

    stpipe's bookkeeping parameters and other modes' parameters are checked and dropped;
    an unknown parameter, or a value image3-dask cannot honour, is a :class:`ConfigError`.
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        here = f"{where}.{name}"
        if name in _GENERIC:
            if not _accepted(value, _GENERIC[name]):
                raise ConfigError(
                    f"{here} = {value!r}: image3-dask names and places its products itself "
                    f"(the association's product name, in the output folder); this stpipe "
                    f"option is not available (accepted: {', '.join(map(repr, _GENERIC[name]))})"
                )
        elif name == "suffix":
            if _normal(value) not in (None, "", _DEFAULT_SUFFIX.get(step)):
                raise ConfigError(f"{here} = {value!r}: product suffixes are jwst's and fixed")
        elif name in _OTHER_MODES.get(step, {}):
            default = _OTHER_MODES[step][name]
            if str(_normal(value)).lower() != str(default).lower():
                raise ConfigError(
                    f"{here} = {value!r}: this parameter concerns other observing modes than "
                    f"imaging; only its default {default!r} is accepted"
                )
        elif step == "assign_mtwcs":
            if name not in ("skip", "save_results"):
                raise ConfigError(f"{here}: assign_mtwcs has no parameter {name!r}")
            _as_bool(value, here)  # moving targets are not supported; the step changes nothing
        elif name in STEP_PARAMS[step]:
            out[name] = value
        else:
            raise ConfigError(
                f"{where}: unknown parameter {name!r}; valid parameters are: "
                + ", ".join(sorted(STEP_PARAMS[step]))
            )
    return out


def split_pipeline_parameters(values: dict[str, Any], where: str) -> PipelineOptions:
    """The pipeline-level parameters of jwst (a file's top level, ``call`` keywords, options).

    Raises
    ------
    ConfigError
        For a parameter image3-dask cannot honour (``skip=True``, another ``output_ext``,
        hooks...) or does not know.
    """
    opts = PipelineOptions()
    for name, value in values.items():
        here = f"{where}.{name}" if where else name
        if value is None:
            continue
        if name == "output_dir":
            opts.output_dir = str(value) if str(value) else None
        elif name == "output_file":
            opts.output_file = str(value) if str(value) else None
        elif name == "input_dir":
            opts.input_dir = str(value) if str(value) else None
        elif name == "save_results":
            opts.save_results = _as_bool(value, here)
        elif name == "in_memory":
            _as_bool(value, here)  # memory is bounded by tiles either way; nothing to change
        elif name == "skip":
            if _as_bool(value, here):
                raise ConfigError(f"{here}: skipping the whole pipeline leaves nothing to run")
        elif name in _GENERIC or name == "suffix":
            step_parameters("resample", {name: value}, where or "pipeline")
        elif name in ("class", "name", "steps", "meta"):
            continue
        else:
            raise ConfigError(
                f"{here}: unknown pipeline parameter; the pipeline takes output_dir, "
                "output_file, save_results, input_dir, in_memory and steps={...}"
            )
    return opts


# ---------------------------------------------------------------- .cfg (configobj syntax)

_SECTION = re.compile(r"^(\[+)\s*([^\[\]]+?)\s*(\]+)\s*(#.*)?$")
_KEYVAL = re.compile(r"^([^=]+?)\s*=\s*(.*)$")


def _strip_comment(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return text[:i].rstrip()
    return text.rstrip()


def _cfg_value(text: str, where: str) -> Any:
    """One configobj value: a quoted or bare string, or a comma-separated list of them."""
    text = _strip_comment(text).strip()
    items, buf, quote, quoted, listy = [], "", None, False, False
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                buf += ch
        elif ch in "'\"":
            quote, quoted = ch, True
        elif ch == ",":
            items.append(buf.strip())
            buf, listy = "", True
        else:
            buf += ch
    if quote:
        raise ConfigError(f"{where}: unterminated quote")
    if listy:
        if buf.strip():
            items.append(buf.strip())
        return items
    return buf if quoted else buf.strip()


def read_cfg(path: str | Path) -> dict[str, Any]:
    """Read a configobj-syntax file (jwst's ``.cfg``) into nested dictionaries of strings.

    Raises
    ------
    ConfigError
        When the file is missing or a line is not ``key = value`` or ``[section]``.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    root: dict[str, Any] = {}
    stack = [root]
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        m = _SECTION.match(line)
        if m:
            depth = len(m.group(1))
            if depth != len(m.group(3)) or depth > len(stack):
                raise ConfigError(f"{where}: bad section header {line!r}")
            del stack[depth:]
            section: dict[str, Any] = {}
            stack[-1][m.group(2).strip("'\"")] = section
            stack.append(section)
            continue
        m = _KEYVAL.match(line)
        if not m:
            raise ConfigError(f"{where}: expected 'name = value' or '[section]', got {line!r}")
        stack[-1][m.group(1).strip().strip("'\"")] = _cfg_value(m.group(2), where)
    return root


# ---------------------------------------------------------------- ASDF parameter files


def _read_asdf_tree(path: Path) -> dict[str, Any]:
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            tree = {k: v for k, v in af.tree.items() if not k.startswith(("asdf_", "history"))}
            return plain(tree)
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except Exception as exc:  # asdf raises many kinds for a file that is not ASDF
        raise ConfigError(f"{path}: not a readable ASDF parameter file ({exc})") from None


def _from_asdf(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    """The tree in the layout of a ``.cfg`` file (class, name, parameters, ``steps`` dict)."""
    if "parameters" not in tree:
        raise ConfigError(f"{path}: not a jwst parameter file (no 'parameters')")
    params = dict(tree["parameters"] or {})
    if "class" not in tree:  # the older layout: class, name and steps inside parameters
        out = params
        steps = out.pop("steps", {}) or {}
        out["steps"] = {name: dict(s) for name, s in steps.items()}
        return out
    out = {"class": tree["class"], "name": tree.get("name"), **params}
    if tree.get("steps"):
        out["steps"] = {}
        for s in tree["steps"]:
            name = s.get("name") or classify(s.get("class", ""))
            out["steps"][name] = {"class": s.get("class"), **(s.get("parameters") or {})}
    if isinstance(tree.get("image3_dask"), dict):
        out["image3_dask"] = tree["image3_dask"]
    return out


# ---------------------------------------------------------------- loading


def _read_any(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".asdf":
        return _from_asdf(_read_asdf_tree(path), path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    if path.read_bytes()[:5] == b"#ASDF":
        return _from_asdf(_read_asdf_tree(path), path)
    return read_cfg(path)


def read_class(path: str | Path) -> str | None:
    """The ``class`` a jwst parameter file is for (``None`` when it names none)."""
    path = Path(path)
    if path.suffix.lower() == ".toml":
        return None
    cls = _read_any(path).get("class")
    return str(cls) if cls else None


def _step_section(step: str, section: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """A step's parameters from a pipeline file's section (its ``config_file`` first)."""
    values: dict[str, Any] = {}
    if section.get("config_file"):
        step_file = base / str(section["config_file"])
        nested = _read_any(step_file)
        if nested.get("class") and classify(str(nested["class"])) != step:
            raise ConfigError(f"{step_file}: is for {nested['class']}, not for step {step}")
        values.update({k: v for k, v in nested.items() if k not in ("class", "name")})
    values.update({k: v for k, v in section.items() if k not in ("class", "name", "config_file")})
    return step_parameters(step, values, f"{where}[steps][{step}]")


def load_parameter_file(path: str | Path) -> tuple[dict[str, dict[str, Any]], PipelineOptions]:
    """Read a jwst ``.cfg``/ASDF parameter file, or one of our TOML files.

    Returns
    -------
    steps : dict
        ``{step: {parameter: value}}`` for :meth:`PipelineConfig.update` (values may be strings).
    options : PipelineOptions
        The pipeline-level parameters the file sets.

    Raises
    ------
    ConfigError
        When the file is unreadable, is for another pipeline or step, or sets something
        image3-dask cannot honour.
    """
    path = Path(path)
    if path.suffix.lower() == ".toml":
        toml = PipelineConfig.from_toml(path)
        # only the values the file sets (the others stay open to CRDS step parameters)
        given = {
            step: {k: v for k, v in values.items() if toml.origins[step][k] != "default"}
            for step, values in toml.to_dict().items()
        }
        return {step: values for step, values in given.items() if values}, PipelineOptions()
    data = _read_any(path)
    where = str(path)
    cls = data.get("class")
    kind = classify(str(cls)) if cls else ("pipeline" if "steps" in data else None)
    if kind is None:
        raise ConfigError(f"{path}: no 'class': cannot tell which pipeline or step it is for")
    extras = data.pop("image3_dask", None) or {}
    steps: dict[str, dict[str, Any]] = {}
    if kind == "pipeline":
        for name, section in (data.get("steps") or {}).items():
            step = classify(str(section.get("class") or name))
            if not isinstance(section, dict):
                raise ConfigError(f"{where}[steps]: {name} is not a section")
            values = _step_section(step, section, path.parent, where)
            if step in _SAVED_BY_PIPELINE:
                values.pop("save_results", None)  # calwebb_image3 replaces it by the pipeline's
            if step != "assign_mtwcs":
                steps[step] = values
        options = split_pipeline_parameters({k: v for k, v in data.items() if k != "steps"}, where)
        if options.save_results is False:
            options.save_results = None  # stpipe's default, which strun replaces by True
    else:
        values = step_parameters(
            kind, {k: v for k, v in data.items() if k not in ("class", "name")}, where
        )
        if kind != "assign_mtwcs":
            steps[kind] = values
        options = PipelineOptions()
    for step, values in extras.items():
        if step not in STEP_PARAMS or not isinstance(values, dict):
            raise ConfigError(f"{where}: image3_dask block: unknown step {step!r}")
        steps.setdefault(step, {}).update(values)
    return steps, options


# ---------------------------------------------------------------- writing


def _jwst_value(param, value: Any) -> Any:
    if param.kind == "option" and value is not None and not isinstance(value, str):
        return str(value)  # configobj's option() checks strings (jwst writes connectivity: '8')
    if isinstance(value, tuple):
        return list(value)
    return value


def write_asdf(config: PipelineConfig, path: str | Path, options: PipelineOptions | None = None):
    """Write ``config`` as a jwst ASDF parameter file (``strun --save-parameters`` layout).

    jwst reads it (``strun FILE ASN``, ``Image3Pipeline.call(ASN, config_file=FILE)``);
    parameters that only image3-dask has go in a top-level ``image3_dask`` block, which
    jwst ignores and :func:`load_parameter_file` reads back.
    """
    import asdf

    options = options or PipelineOptions()
    generic = {
        "input_dir": options.input_dir or "",
        "output_dir": options.output_dir,
        "output_ext": ".fits",
        "output_file": options.output_file,
        "output_use_index": True,
        "output_use_model": False,
        "post_hooks": [],
        "pre_hooks": [],
        "save_results": bool(options.save_results),
        "search_output_file": True,
        "skip": False,
        "suffix": None,
    }
    steps = [
        {
            "class": STEP_CLASSES["assign_mtwcs"],
            "name": "assign_mtwcs",
            "parameters": {
                **generic,
                "output_dir": None,
                "output_file": None,
                "input_dir": "",
                "save_results": False,
                "output_use_model": True,
                "suffix": "assign_mtwcs",
            },
        }
    ]
    extras: dict[str, dict[str, Any]] = {}
    for step in STEP_ORDER:
        params = {}
        for name, param in STEP_PARAMS[step].items():
            value = config[step][name]
            if name in _IMAGE3_ONLY[step]:
                extras.setdefault(step, {})[name] = _jwst_value(param, value)
            else:
                params[name] = _jwst_value(param, value)
        params.update(_OTHER_MODES.get(step, {}))
        steps.append(
            {
                "class": STEP_CLASSES[step],
                "name": step,
                "parameters": {
                    **{k: v for k, v in generic.items() if k not in ("save_results", "skip")},
                    "input_dir": "",
                    "output_dir": None,
                    "output_file": None,
                    "suffix": _DEFAULT_SUFFIX.get(step),
                    **params,
                },
            }
        )
    tree = {
        "class": PIPELINE_CLASS,
        "name": "Image3Pipeline",
        "meta": {
            "author": "image3-dask",
            "date": datetime.datetime.now().replace(microsecond=0).isoformat(),
            "description": f"Parameters for calibration step {PIPELINE_CLASS}",
        },
        "parameters": {**generic, "in_memory": True},
        "steps": steps,
        "image3_dask": {
            step: {k: (None if v is None else v) for k, v in vals.items() if v is not None}
            for step, vals in extras.items()
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    asdf.AsdfFile(tree).write_to(path)
    return path

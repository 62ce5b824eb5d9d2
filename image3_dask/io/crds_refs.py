"""CRDS reference files and step parameters, resolved once on the client with the ``crds`` client.

jwst gets two things from CRDS (the Calibration Reference Data System) for calwebb_image3:

* **reference files** a step reads: APCORR and ABVEGAOFFSET for source_catalog (tweakreg,
  skymatch, outlier_detection and resample use none in jwst 3.0). jwst's
  ``Step.get_reference_file`` asks CRDS for the best reference of the dataset's parameters,
  unless the step has an ``override_<reftype>`` parameter set; the product then records
  ``meta.ref_file.<reftype>.name = "crds://<file>"`` (or the override's path).
* **step parameters** (``pars-<stepclass>`` reference files, ASDF parameter files): stpipe's
  ``Step.build_config`` merges them under the user's parameter file and command line
  (defaults < CRDS pars < parameter file < command line / ``steps=``), unless retrieval is
  disabled by ``--disable-crds-steppars`` or the ``STPIPE_DISABLE_CRDS_STEPPARS`` environment
  variable. For a pipeline, stpipe fetches every step's ``pars-<step>`` and then the
  pipeline's own ``pars-image3pipeline`` on top of them.

The lookups use the real ``crds`` client, configured as jwst users configure it (``CRDS_PATH``,
``CRDS_SERVER_URL``, ``CRDS_CONTEXT``, ``CRDS_MODE``), with the CRDS parameters of the
association's first science member (what stpipe uses for an association). They run once on the
client; workers only receive the values read from the files (or the paths, which are in the CRDS
cache, a folder the workers need not reach).

CRDS counts as configured when ``CRDS_PATH`` or ``CRDS_SERVER_URL`` is set. Without it, no
lookup is made (jwst would contact the default STScI server): reference files then come from
``override_*``, the simulator's documented defaults for exposures it marked as simulated
(:data:`SIMULATED_KEYWORD`), or jwst's fallback without reference files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image3_dask.errors import ConfigError
from image3_dask.io.asdf_tree import plain
from image3_dask.io.storage import location

log = logging.getLogger("image3_dask")

__all__ = [
    "PIPELINE_PARS_REFTYPE",
    "SIMULATED_KEYWORD",
    "STEP_PARS_REFTYPES",
    "STEP_REFTYPES",
    "CrdsLookup",
    "References",
    "apply_step_pars",
    "crds_configured",
    "describe_parameters",
    "dataset_parameters",
    "fetch_step_pars",
    "is_simulated",
    "lookup_references",
    "read_pars_file",
    "resolve_references",
    "steppars_disabled",
]

#: FITS primary-header keyword the simulator writes in every exposure it makes (jwst and
#: stdatamodels ignore it; stdatamodels keeps it when a file is read and saved again).
SIMULATED_KEYWORD = "I3DSIM"

#: CRDS reference types each step reads (jwst 3.0's ``reference_file_types``).
STEP_REFTYPES: dict[str, tuple[str, ...]] = {
    "tweakreg": (),
    "skymatch": (),
    "outlier_detection": (),
    "resample": (),
    "source_catalog": ("apcorr", "abvegaoffset"),
}

#: CRDS parameter reference type of each step (``pars-`` + the step class name, lower case).
STEP_PARS_REFTYPES: dict[str, str] = {
    "tweakreg": "pars-tweakregstep",
    "skymatch": "pars-skymatchstep",
    "outlier_detection": "pars-outlierdetectionstep",
    "resample": "pars-resamplestep",
    "source_catalog": "pars-sourcecatalogstep",
}

#: The pipeline's own CRDS parameter reference type (applied over the steps', as stpipe does).
PIPELINE_PARS_REFTYPE = "pars-image3pipeline"

#: Values of ``STPIPE_DISABLE_CRDS_STEPPARS`` that disable retrieval (stpipe's list).
_TRUTHS = ("true", "True", "t", "yes", "y")


def crds_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment configures CRDS (``CRDS_PATH`` or ``CRDS_SERVER_URL`` set).

    Parameters
    ----------
    environ : dict, optional
        Environment (default: ``os.environ``).

    Returns
    -------
    bool
        True when a lookup should be attempted.
    """
    env = os.environ if environ is None else environ
    return bool(env.get("CRDS_PATH") or env.get("CRDS_SERVER_URL"))


def steppars_disabled(flag: bool | str | None = None) -> bool:
    """Whether CRDS step parameters are disabled, by stpipe's rule.

    Parameters
    ----------
    flag : bool or str or None
        ``--disable-crds-steppars`` (True) or a string; when not given (None or False), the
        environment variable ``STPIPE_DISABLE_CRDS_STEPPARS`` decides (``true``, ``True``,
        ``t``, ``yes``, ``y`` disable).

    Returns
    -------
    bool
        True when the ``pars-*`` files must not be fetched.
    """
    if flag:
        if isinstance(flag, bool):
            return True
        return str(flag) in _TRUTHS
    return os.environ.get("STPIPE_DISABLE_CRDS_STEPPARS", "") in _TRUTHS


def is_simulated(path: str | os.PathLike) -> bool:
    """Whether the image3-dask simulator wrote ``path`` (:data:`SIMULATED_KEYWORD` is true).

    Parameters
    ----------
    path : path-like
        An exposure file.

    Returns
    -------
    bool
        False for any file without the keyword (real data), or that cannot be read.
    """
    from image3_dask.io.storage import open_fits

    try:
        with open_fits(location(path)) as hdul:
            header = hdul[0].header
    except (OSError, ValueError):
        return False
    return header.get(SIMULATED_KEYWORD) is True


def dataset_parameters(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """CRDS parameters of an exposure, as stpipe gets them (``get_crds_parameters``).

    Parameters
    ----------
    path : path-like
        A calibrated exposure (the association's first science member).

    Returns
    -------
    parameters : dict
        ``meta.*`` keywords -> values.
    observatory : str
        ``"jwst"``.

    Raises
    ------
    InputError
        When the file cannot be opened as a JWST datamodel.
    """
    import warnings

    from image3_dask.errors import InputError
    from image3_dask.io.datamodel_files import open_datamodel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_datamodel(location(path)) as model:
                return dict(model.get_crds_parameters()), str(model.crds_observatory)
    except Exception as exc:  # stdatamodels raises many types for unreadable files
        raise InputError(
            f"{path}: cannot read its CRDS parameters ({type(exc).__name__}: {exc})"
        ) from None


@dataclass
class CrdsLookup:
    """The outcome of CRDS lookups: paths, errors, and the context used.

    Attributes
    ----------
    paths : dict
        Reference type -> local path in the CRDS cache, or ``"N/A"`` (CRDS says the type does
        not apply).
    lookup_errors : dict
        Reference type -> message, when CRDS's rules have no match for the dataset
        (``CrdsLookupError``; jwst's source_catalog then writes no catalog).
    errors : dict
        Reference type -> message for other failures (server unreachable, no cache...).
    context : str or None
        The ``.pmap`` used.
    sw_version : str or None
        Version of the ``crds`` client.
    """

    paths: dict[str, str] = field(default_factory=dict)
    lookup_errors: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    context: str | None = None
    sw_version: str | None = None


@contextmanager
def _quiet_crds():
    """CRDS logs its failures itself (``CRDS - ERROR - ...``); ours name them once instead."""
    crds_log = logging.getLogger("CRDS")
    level = crds_log.level
    crds_log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        crds_log.setLevel(level)


def lookup_references(
    parameters: dict[str, Any], reftypes: Iterable[str], observatory: str = "jwst"
) -> CrdsLookup:
    """Best references of ``reftypes`` for a dataset, each looked up on its own.

    Parameters
    ----------
    parameters : dict
        CRDS parameters of the dataset (:func:`dataset_parameters`).
    reftypes : iterable of str
        Reference types (``apcorr``, ``pars-tweakregstep``...).
    observatory : str
        CRDS observatory.

    Returns
    -------
    CrdsLookup
        Paths, and the errors of the types that could not be resolved.
    """
    import crds
    from crds.core import crds_cache_locking, heavy_client
    from crds.core.exceptions import CrdsError, CrdsLookupError

    out = CrdsLookup(sw_version=crds.__version__)
    reftypes = list(reftypes)
    if not reftypes:
        return out
    with _quiet_crds():
        # CRDS caches its configuration per process; a long-lived client may see CRDS_PATH change
        crds.core.utils.clear_function_caches()
        for reftype in reftypes:
            try:
                with crds_cache_locking.get_cache_lock():
                    best = crds.getreferences(
                        parameters, reftypes=[reftype], observatory=observatory
                    )
                value = str(best[reftype])
                out.paths[reftype] = "N/A" if "N/A" in value.upper() else value
            except CrdsLookupError as exc:
                out.lookup_errors[reftype] = str(exc).strip()
            except (CrdsError, OSError, ValueError, KeyError) as exc:
                out.errors[reftype] = f"{type(exc).__name__}: {str(exc).strip()}"
            except SystemExit:
                # crds exits the process when it can reach neither its server nor a cache
                msg = "CRDS server connection and cache load failed"
                out.errors.update(dict.fromkeys(reftypes[reftypes.index(reftype) :], msg))
                return out
        try:
            out.context = str(heavy_client.get_processing_mode(observatory)[1])
        except (CrdsError, OSError, ValueError) as exc:
            log.debug("CRDS context not known: %s", exc)
    return out


def read_pars_file(path: str | os.PathLike, step: str | None = None) -> dict[str, dict[str, Any]]:
    """The parameters of a CRDS ``pars-*`` ASDF file, in our names, unusable ones left out.

    Parameters
    ----------
    path : path-like
        A step's (``class = jwst...TweakRegStep``) or the pipeline's parameter file.
    step : str, optional
        The step the file was fetched for (checked against its ``class``).

    Returns
    -------
    dict
        ``{step: {parameter: value}}``. Parameters image3-dask does not have, or values it
        cannot honour, are logged as warnings and left out (a CRDS file is not the user's
        choice; jwst applies what it knows).

    Raises
    ------
    ConfigError
        When the file is not a readable parameter file of calwebb_image3 or its steps.
    """
    import asdf

    from image3_dask.pipeline.jwst_params import classify, step_parameters

    path = Path(path)
    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            tree = {k: af.tree[k] for k in ("class", "name", "parameters", "steps") if k in af.tree}
            tree = plain(tree)
    except Exception as exc:  # asdf raises many kinds for a file that is not ASDF
        raise ConfigError(f"{path}: not a readable CRDS parameter file ({exc})") from None
    cls = str(tree.get("class") or "")
    kind = classify(cls) if cls else step
    if step is not None and kind != step:
        raise ConfigError(f"{path}: is for {cls}, not for step {step}")
    sections: list[tuple[str, dict[str, Any]]] = []
    if kind == "pipeline":
        for entry in tree.get("steps") or []:
            sname = entry.get("name") or classify(str(entry.get("class", "")))
            sections.append(
                (classify(str(entry.get("class") or sname)), entry.get("parameters") or {})
            )
    elif kind is not None:
        sections.append((kind, tree.get("parameters") or {}))
    out: dict[str, dict[str, Any]] = {}
    for sname, values in sections:
        if sname == "assign_mtwcs":
            continue
        kept: dict[str, Any] = {}
        for name, value in values.items():
            if name in ("class", "name"):
                continue
            try:
                kept.update(step_parameters(sname, {name: value}, sname))
            except ConfigError as exc:
                why = str(exc).split(": ", 1)[-1].split(";")[0]
                log.warning(
                    "CRDS parameters %s: %s.%s=%r not applied (%s)",
                    path.name,
                    sname,
                    name,
                    value,
                    why,
                )
        out[sname] = kept
    return out


def fetch_step_pars(
    parameters: dict[str, Any], steps: Sequence[str], observatory: str = "jwst"
) -> dict[str, dict[str, tuple[Any, str]]]:
    """The CRDS step parameters of ``steps`` and of the pipeline, merged as stpipe merges them.

    Parameters
    ----------
    parameters : dict
        CRDS parameters of the dataset.
    steps : sequence of str
        Steps of the run.
    observatory : str
        CRDS observatory.

    Returns
    -------
    dict
        ``{step: {parameter: (value, file name)}}``: each step's ``pars-<step>`` file, then the
        pipeline's ``pars-image3pipeline`` over them; the file each value came from.
    """
    reftypes = [STEP_PARS_REFTYPES[s] for s in steps] + [PIPELINE_PARS_REFTYPE]
    found = lookup_references(parameters, reftypes, observatory)
    for reftype, msg in {**found.lookup_errors, **found.errors}.items():
        log.debug("%s: no parameters from CRDS (%s)", reftype.upper(), msg)
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for step in steps:
        path = found.paths.get(STEP_PARS_REFTYPES[step])
        if path and path != "N/A":
            log.info("%s parameters found: %s", STEP_PARS_REFTYPES[step].upper(), path)
            layers.append((Path(path).name, read_pars_file(path, step)))
    path = found.paths.get(PIPELINE_PARS_REFTYPE)
    if path and path != "N/A":
        log.info("%s parameters found: %s", PIPELINE_PARS_REFTYPE.upper(), path)
        layers.append((Path(path).name, read_pars_file(path)))
    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, values in layers:
        for step, vals in values.items():
            if step in steps:
                merged.setdefault(step, {}).update({k: (v, name) for k, v in vals.items()})
    return merged


def apply_step_pars(config, values: dict[str, dict[str, tuple[Any, str]]]) -> dict:
    """Apply CRDS step parameters under the user's: only to parameters still at their default.

    Parameters
    ----------
    config : PipelineConfig
        The run's parameters (changed in place); its ``origins`` tell which values the user
        set (parameter file, command line, ``steps=``), which CRDS must not change. The
        origin of an applied value becomes ``crds:<file>``.
    values : dict
        From :func:`fetch_step_pars`.

    Returns
    -------
    dict
        ``{step: {parameter: value}}`` actually applied.
    """
    applied: dict[str, dict[str, Any]] = {}
    for step, vals in values.items():
        for file in dict.fromkeys(f for _, f in vals.values()):
            mine = {k: v for k, (v, f) in vals.items() if f == file}
            done = config.update_defaults({step: mine}, source=f"crds:{file}").get(step)
            if done:
                applied.setdefault(step, {}).update(done)
                log.info(
                    "%s: parameters from CRDS (%s): %s",
                    step,
                    file,
                    ", ".join(f"{k}={v!r}" for k, v in done.items()),
                )
    return applied


@dataclass
class References:
    """Reference files of a run for the steps that read them, and where each came from.

    Attributes
    ----------
    paths : dict
        Reference type -> file to read (override or CRDS cache path); missing or ``"N/A"``
        when no file is to be used.
    origin : dict
        Reference type -> ``"override"``, ``"crds"``, or ``"none"``.
    messages : dict
        Reference type -> why no file is used (CRDS not configured, CRDS error...).
    lookup_failed : dict
        Reference type -> CRDS's message when its rules have no match for the data (jwst's
        source_catalog then writes no catalog).
    simulated : bool
        Every exposure was written by the image3-dask simulator.
    context, sw_version : str or None
        CRDS context and client version, when CRDS was asked.
    """

    paths: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    lookup_failed: dict[str, str] = field(default_factory=dict)
    simulated: bool = False
    context: str | None = None
    sw_version: str | None = None

    def path(self, reftype: str) -> str | None:
        """The file to read for ``reftype``, or None."""
        value = self.paths.get(reftype)
        return None if not value or value == "N/A" else value

    def ref_file_name(self, reftype: str) -> str:
        """``meta.ref_file.<reftype>.name`` as jwst records it (``crds://<file>``, the override's
        absolute path, or ``N/A``)."""
        value = self.path(reftype)
        if value is None:
            return "N/A"
        if self.origin.get(reftype) == "crds":
            return "crds://" + Path(value).name
        return str(Path(value).resolve())


def resolve_references(
    members: Sequence[str | os.PathLike],
    config,
    *,
    steps: Sequence[str] | None = None,
    disable_steppars: bool | str | None = None,
    apply_pars: bool = True,
) -> References:
    """Resolve, on the client and once, what CRDS gives the run: step parameters, then files.

    Parameters
    ----------
    members : sequence of path-like
        The association's science members (the first gives the CRDS parameters).
    config : PipelineConfig
        The run's parameters; CRDS step parameters are applied to it in place (under the
        user's) unless disabled, then its ``override_*`` parameters are honoured.
    steps : sequence of str, optional
        Steps that will run (default: every step not skipped).
    disable_steppars : bool or str, optional
        ``--disable-crds-steppars`` (see :func:`steppars_disabled`).
    apply_pars : bool
        Fetch and apply step parameters at all.

    Returns
    -------
    References
        The reference files of the steps that run.
    """
    from image3_dask.pipeline.step_specs import STEP_ORDER

    members = [location(m) for m in members]
    refs = References(simulated=bool(members) and all(is_simulated(m) for m in members))
    if steps is None:
        steps = [s for s in STEP_ORDER if not config[s].skip]
    configured = crds_configured() and bool(members)
    parameters: dict[str, Any] | None = None
    observatory = "jwst"
    if configured:
        parameters, observatory = dataset_parameters(members[0])
        if apply_pars and not steppars_disabled(disable_steppars):
            apply_step_pars(config, fetch_step_pars(parameters, list(steps), observatory))
            steps = [s for s in STEP_ORDER if not config[s].skip]
        elif apply_pars:
            log.debug("CRDS parameter reference retrieval disabled")
    wanted = [(s, t) for s in steps for t in STEP_REFTYPES.get(s, ())]
    todo = []
    for step, reftype in wanted:
        override = config[step].get(f"override_{reftype}")
        if override:
            refs.paths[reftype] = str(override)
            refs.origin[reftype] = "override"
            log.info("Override for %s reference file is '%s'.", reftype.upper(), override)
        else:
            todo.append(reftype)
    if todo and not configured:
        for reftype in todo:
            refs.origin[reftype] = "none"
            refs.messages[reftype] = "CRDS is not configured (CRDS_PATH and CRDS_SERVER_URL unset)"
        log.info(
            "CRDS is not configured (CRDS_PATH and CRDS_SERVER_URL unset): no %s from CRDS",
            ", ".join(t.upper() for t in todo),
        )
    elif todo:
        found = lookup_references(parameters, todo, observatory)
        refs.context, refs.sw_version = found.context, found.sw_version
        for reftype in todo:
            if reftype in found.paths:
                refs.paths[reftype] = found.paths[reftype]
                refs.origin[reftype] = "crds" if found.paths[reftype] != "N/A" else "none"
                if found.paths[reftype] == "N/A":
                    refs.messages[reftype] = "CRDS: not applicable (N/A)"
                log.info(
                    "Prefetch for %s reference file is '%s'.", reftype.upper(), found.paths[reftype]
                )
            elif reftype in found.lookup_errors:
                refs.origin[reftype] = "none"
                refs.lookup_failed[reftype] = found.lookup_errors[reftype]
                refs.messages[reftype] = f"CRDS: {found.lookup_errors[reftype]}"
            else:
                refs.origin[reftype] = "none"
                refs.messages[reftype] = f"CRDS lookup failed ({found.errors[reftype]})"
                log.warning(
                    "CRDS lookup of %s failed for %s (CRDS_SERVER_URL=%s, CRDS_PATH=%s): %s",
                    reftype.upper(),
                    members[0].name,
                    os.environ.get("CRDS_SERVER_URL", "<unset>"),
                    os.environ.get("CRDS_PATH", "<unset>"),
                    found.errors[reftype],
                )
        if refs.context:
            log.info("CRDS context: %s", refs.context)
    return refs


def describe_parameters(config, steps: Sequence[str] | None = None) -> str:
    """Every parameter's merged value and where it came from, one line each.

    Parameters
    ----------
    config : PipelineConfig
        Parameters with their ``origins``.
    steps : sequence of str, optional
        Steps to show (default: all).

    Returns
    -------
    str
        ``steps.<step>.<name> = <value>    # <origin>`` lines (``default``, the parameter
        file, ``--steps``, ``crds:<file>``).
    """
    from image3_dask.pipeline.step_specs import STEP_ORDER

    lines = []
    for step in steps or STEP_ORDER:
        for name, value in config[step].items():
            text = f"steps.{step}.{name} = {value!r}"
            lines.append(f"{text:<60} # {config.origins[step].get(name, 'default')}")
    return "\n".join(lines)

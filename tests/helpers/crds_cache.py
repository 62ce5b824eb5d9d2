"""A local CRDS cache built by the tests: mappings with their sha1sum, reference files, config.

The layout is the one the ``crds`` client reads in ``CRDS_MODE=local``::

    CRDS_PATH/config/jwst/server_config          the context and the (empty) bad-files list
    CRDS_PATH/mappings/jwst/jwst_0001.pmap       instrument -> .imap
    CRDS_PATH/mappings/jwst/jwst_<inst>_0001.imap  reference type -> .rmap
    CRDS_PATH/mappings/jwst/jwst_<inst>_<type>_0001.rmap  Match(EXP_TYPE) / UseAfter(date)
    CRDS_PATH/references/jwst/<inst>/<file>

Each mapping carries ``sha1sum``: the SHA-1 of its text without the sha1sum line, which the
client checks when it loads the mapping.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

CONTEXT = "jwst_0001.pmap"

#: Exposure type of each instrument's imaging mode (the rmaps' Match key).
EXP_TYPES = {"miri": "MIR_IMAGE", "nircam": "NRC_IMAGE"}


def _with_sha1(text: str) -> str:
    body = "".join(line for line in text.splitlines(True) if "sha1sum" not in line)
    return text.replace("@SHA1@", hashlib.sha1(body.encode()).hexdigest())


def _header(fields: dict[str, str]) -> str:
    lines = [f"    '{k}' : {v}," for k, v in sorted(fields.items())]
    return "header = {\n" + "\n".join(lines) + "\n}\n"


def build_crds_cache(root: Path, references: dict[str, Path], instrument: str = "miri") -> Path:
    """Write a CRDS cache under ``root`` selecting ``references`` for the imaging mode.

    Parameters
    ----------
    root : Path
        The future ``CRDS_PATH`` (created).
    references : dict
        Reference type (``apcorr``, ``abvegaoffset``, ``pars-tweakregstep``...) -> a file,
        copied into the cache as ``jwst_<inst>_<type>_0001.<ext>``.
    instrument : str
        ``miri`` or ``nircam``.

    Returns
    -------
    Path
        ``root``.
    """
    inst = instrument.lower()
    mappings = root / "mappings" / "jwst"
    refdir = root / "references" / "jwst" / inst
    config = root / "config" / "jwst"
    for d in (mappings, refdir, config):
        d.mkdir(parents=True, exist_ok=True)
    imap_name = f"jwst_{inst}_0001.imap"
    pmap = (
        _header(
            {
                "derived_from": "'image3-dask tests'",
                "mapping": "'PIPELINE'",
                "name": f"'{CONTEXT}'",
                "observatory": "'JWST'",
                "parkey": "('META.INSTRUMENT.NAME',)",
                "sha1sum": "'@SHA1@'",
            }
        )
        + f"\nselector = {{\n    '{inst.upper()}' : '{imap_name}',\n}}\n"
    )
    (mappings / CONTEXT).write_text(_with_sha1(pmap))
    selections = []
    for reftype, src in sorted(references.items()):
        ref_name = f"jwst_{inst}_{reftype}_0001{Path(src).suffix}"
        shutil.copy(src, refdir / ref_name)
        rmap_name = f"jwst_{inst}_{reftype}_0001.rmap"
        rmap = _header(
            {
                "classes": "('Match', 'UseAfter')",
                "derived_from": "'image3-dask tests'",
                "filekind": f"'{reftype.upper()}'",
                "instrument": f"'{inst.upper()}'",
                "mapping": "'REFERENCE'",
                "name": f"'{rmap_name}'",
                "observatory": "'JWST'",
                "parkey": "(('META.EXPOSURE.TYPE',), ('META.OBSERVATION.DATE', "
                "'META.OBSERVATION.TIME'))",
                "sha1sum": "'@SHA1@'",
            }
        ) + (
            "\nselector = Match({\n"
            f"    ('{EXP_TYPES[inst]}',) : UseAfter({{\n"
            f"        '2022-01-01 00:00:00' : '{ref_name}',\n"
            "    }),\n"
            "})\n"
        )
        (mappings / rmap_name).write_text(_with_sha1(rmap))
        selections.append(f"    '{reftype}' : '{rmap_name}',")
    imap = (
        _header(
            {
                "derived_from": "'image3-dask tests'",
                "instrument": f"'{inst.upper()}'",
                "mapping": "'INSTRUMENT'",
                "name": f"'{imap_name}'",
                "observatory": "'JWST'",
                "parkey": "('REFTYPE',)",
                "sha1sum": "'@SHA1@'",
            }
        )
        + "\nselector = {\n"
        + "\n".join(selections)
        + "\n}\n"
    )
    (mappings / imap_name).write_text(_with_sha1(imap))
    (config / "server_config").write_text(
        repr(
            {
                "observatory": "jwst",
                "operational_context": CONTEXT,
                "edit_context": CONTEXT,
                "bad_files": "",
                "bad_files_list": [],
                "last_synced": "2026-01-01 00:00:00",
                "effective_mode": "local",
            }
        )
        + "\n"
    )
    return root


def crds_env(monkeypatch, root: Path) -> None:
    """Point the ``crds`` client at the cache, offline (closed loopback server URL)."""
    monkeypatch.setenv("CRDS_PATH", str(root))
    monkeypatch.setenv("CRDS_MODE", "local")
    monkeypatch.setenv("CRDS_SERVER_URL", "https://127.0.0.1:9")
    monkeypatch.setenv("CRDS_CONTEXT", CONTEXT)


#: jwst's class of each step, as CRDS ``pars-*`` files name it.
PARS_CLASSES = {
    "pars-tweakregstep": ("jwst.tweakreg.tweakreg_step.TweakRegStep", "tweakreg"),
    "pars-skymatchstep": ("jwst.skymatch.skymatch_step.SkyMatchStep", "skymatch"),
    "pars-outlierdetectionstep": (
        "jwst.outlier_detection.outlier_detection_step.OutlierDetectionStep",
        "outlier_detection",
    ),
    "pars-resamplestep": ("jwst.resample.resample_step.ResampleStep", "resample"),
    "pars-sourcecatalogstep": (
        "jwst.source_catalog.source_catalog_step.SourceCatalogStep",
        "source_catalog",
    ),
}


def write_pars(path: Path, reftype: str, parameters: dict) -> Path:
    """A CRDS parameter file (ASDF: ``class``, ``name``, ``parameters``, ``meta``).

    For ``pars-image3pipeline``, ``parameters`` is ``{step reftype: {name: value}}`` and goes
    to the file's ``steps`` list (the pipeline's own parameters are left empty).
    """
    import asdf

    steps = []
    if reftype == "pars-image3pipeline":
        cls, name = "jwst.pipeline.calwebb_image3.Image3Pipeline", "calwebb_image3"
        for step_reftype, values in parameters.items():
            step_cls, step_name = PARS_CLASSES[step_reftype]
            steps.append({"class": step_cls, "name": step_name, "parameters": values})
        parameters = {}
    else:
        cls, name = PARS_CLASSES[reftype]
    tree = {
        "class": cls,
        "name": name,
        "parameters": parameters,
        **({"steps": steps} if steps else {}),
        "meta": {
            "author": "image3-dask tests",
            "date": "2026-01-01T00:00:00",
            "description": f"{reftype} for the tests",
            "instrument": {"name": "MIRI"},
            "origin": "image3-dask",
            "pedigree": "DUMMY",
            "reftype": reftype,
            "telescope": "JWST",
            "useafter": "2022-01-01T00:00:00",
        },
    }
    asdf.AsdfFile(tree).write_to(path)
    return path

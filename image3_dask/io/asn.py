"""Level-3 association files (``asn_type: image3``), as written by ``jwst.associations``.

An association names one product and its members; member paths are relative to the folder of
the association file. Only ``exptype: science`` members are processed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from image3_dask.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "Association",
    "load_association",
    "make_association",
    "resolve_inputs",
    "write_association",
]


@dataclass
class Association:
    """The part of a level-3 association that the pipeline uses.

    Attributes
    ----------
    product_name : str
        Root name of the products (``<product_name>_i2d.fits`` ...).
    asn_id : str
        Association id, used in per-exposure product names (``<exposure>_<asn_id>_crf.fits``).
    members : list of Path
        Absolute paths of the science members, in association order.
    path : Path or None
        The association file, when there is one.
    raw : dict
        The association as read.
    """

    product_name: str
    asn_id: str
    members: list[Path]
    path: Path | None = None
    raw: dict = field(default_factory=dict)


def make_association(
    files: list[str | os.PathLike],
    product_name: str,
    asn_id: str = "a3001",
    relative_to: str | os.PathLike | None = None,
) -> dict:
    """Build an ``image3`` association dictionary from a list of exposures.

    This is what ``jwst.associations.asn_from_list`` writes for level-3 imaging.

    Parameters
    ----------
    files : list of path-like
        The calibrated exposures (``*_cal.fits``).
    product_name : str
        Root name of the level-3 products.
    asn_id : str, optional
        Association id (``a3001`` by default, as ``asn_from_list``).
    relative_to : path-like, optional
        Folder the member paths are written relative to (the folder of the association file).
        Members are written as given when omitted.

    Returns
    -------
    dict
        The association, ready for :func:`write_association`.
    """
    members = []
    for f in files:
        p = Path(f)
        if relative_to is not None:
            p = Path(os.path.relpath(Path(f).resolve(), Path(relative_to).resolve()))
        members.append({"expname": str(p), "exptype": "science"})
    return {
        "asn_type": "image3",
        "asn_rule": "DMS_Level3_Base",
        "asn_id": asn_id,
        "asn_pool": "none",
        "program": "noprogram",
        "target": "none",
        "version_id": None,
        "code_version": "image3_dask",
        "degraded_status": "No known degraded exposures in association.",
        "constraints": "No constraints",
        "products": [{"name": product_name, "members": members}],
    }


def write_association(asn: dict, path: str | os.PathLike) -> Path:
    """Write an association dictionary as JSON and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(asn, fh, indent=4)
        fh.write("\n")
    return path


def load_association(path: str | os.PathLike) -> Association:
    """Read a level-3 imaging association.

    Parameters
    ----------
    path : path-like
        The association JSON file.

    Returns
    -------
    Association
        Product name, association id and the absolute paths of the science members.

    Raises
    ------
    InputError
        When the file is missing, is not JSON, is not an ``image3`` association or has no
        science member.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: association file not found")
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid association JSON file ({exc})") from None
    if not isinstance(raw, dict) or not raw.get("products"):
        raise InputError(f"{path}: association has no 'products' list")
    asn_type = raw.get("asn_type")
    if asn_type not in ("image3", None):
        raise InputError(
            f"{path}: asn_type is {asn_type!r}; image3-dask processes 'image3' associations"
        )
    product = raw["products"][0]
    if not isinstance(product, dict) or not isinstance(product.get("members"), list):
        raise InputError(f"{path}: products[0] has no 'members' list")
    if len(raw["products"]) > 1:
        log.warning(
            "%s: %d products in association; only the first is processed",
            path,
            len(raw["products"]),
        )
    base = path.resolve().parent
    members = []
    for i, m in enumerate(product["members"]):
        if not isinstance(m, dict) or "expname" not in m:
            raise InputError(f"{path}: member {i} has no 'expname'")
        exptype = str(m.get("exptype", "science")).lower()
        if exptype != "science":
            log.warning("%s: ignoring %s member %s", path, exptype, m["expname"])
            continue
        p = Path(m["expname"])
        members.append(p if p.is_absolute() else base / p)
    if not members:
        raise InputError(f"{path}: association has no science member")
    name = product.get("name") or path.stem.replace("_asn", "")
    return Association(
        product_name=str(name),
        asn_id=str(raw.get("asn_id") or "a3001"),
        members=members,
        path=path,
        raw=raw,
    )


def resolve_inputs(
    inputs: str | os.PathLike | list[str | os.PathLike], product_name: str | None = None
) -> Association:
    """Turn what a user passed (association, list of files, glob) into an :class:`Association`.

    Parameters
    ----------
    inputs : path-like or list of path-like
        An association JSON file, one or more exposure files, or glob patterns.
    product_name : str, optional
        Product name used when the inputs are exposures rather than an association
        (default ``image3``).
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(items) == 1 and str(items[0]).endswith(".json"):
        asn = load_association(items[0])
        if product_name:
            asn.product_name = product_name
        return asn
    files: list[Path] = []
    for item in items:
        s = str(item)
        if any(c in s for c in "*?["):
            matched = sorted(glob.glob(s))
            if not matched:
                raise InputError(f"{s}: no file matches this pattern")
            files.extend(Path(m).resolve() for m in matched)
        else:
            files.append(Path(s).resolve())
    if not files:
        raise InputError("no input exposure given")
    return Association(
        product_name=product_name or "image3",
        asn_id="a3001",
        members=files,
        path=None,
        raw=make_association(files, product_name or "image3"),
    )

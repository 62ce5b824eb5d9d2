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
from image3_dask.io.storage import Location, RemotePath, is_url, location

log = logging.getLogger(__name__)

__all__ = [
    "Association",
    "check_name",
    "load_association",
    "make_association",
    "resolve_inputs",
    "write_association",
]

#: Longest product name or association id accepted (products add suffixes such as
#: ``_segm.fits`` or ``_i2d.zarr``; most file systems allow 255 bytes per name).
MAX_NAME_BYTES = 200


def check_name(value, what: str, source: str | os.PathLike | None = None) -> str:
    """Return ``value`` if it is a plain file-name part, else raise :class:`InputError`.

    Product names and association ids become parts of output file names
    (``<product>_i2d.fits``, ``<exposure>_<asn_id>_crf.fits``): they are names, not paths.
    Refused: anything that is not a non-empty string, path separators (``/``, ``\\``), a
    leading ``.`` (``..``, hidden files), NUL and other control characters, leading or
    trailing spaces, and more than :data:`MAX_NAME_BYTES` bytes.

    Parameters
    ----------
    value : object
        The name as given.
    what : str
        What the name is (``"product name"``, ``"asn_id"``), for the message.
    source : path-like, optional
        Where the name comes from (the association file), named in the message.
    """
    where = f"{source}: " if source is not None else ""
    problem = None
    if not isinstance(value, str):
        problem = f"is a {type(value).__name__}, not a string"
    elif value == "":
        problem = "is empty"
    elif "/" in value or "\\" in value:
        problem = "contains a path separator"
    elif value.startswith("."):
        problem = "starts with '.'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains a control character"
    elif value != value.strip():
        problem = "starts or ends with a space"
    elif len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise InputError(
            f"{where}{what} {value!r} {problem}; it must be a plain name, not a path "
            "(letters, digits, '-', '_', '.'; e.g. 'jw01234-o001_t001_miri_f770w')"
        )
    return value


def _check_unique_names(members: list[Path], source: str | os.PathLike | None) -> None:
    """Refuse two members in different folders whose per-exposure products would collide.

    Per-exposure products (``<exposure>_<asn_id>_crf.fits``) and the tasks of a run are named
    after the exposure (the file name without ``_cal.fits``): two members with the same file
    name in different folders would overwrite each other and one would be lost. The same file
    listed twice is left to :func:`image3_dask.io.exposures.read_exposures`, which names it.
    """
    from image3_dask.io.exposures import exposure_name

    seen: dict[str, Path] = {}
    clashes = []
    for m in members:
        key = exposure_name(m)
        first = seen.setdefault(key, m)
        if first is not m and location(first).resolve() != location(m).resolve():
            clashes.append(f"{first} and {m} (both exposure {key!r})")
    if clashes:
        where = f"{source}: " if source is not None else ""
        raise InputError(
            f"{where}members in different folders have the same exposure name, so their "
            "products would overwrite each other: "
            + "; ".join(clashes)
            + ". Rename one of each pair (or give each its own association)."
        )


@dataclass
class Association:
    """The part of a level-3 association that the pipeline uses.

    Attributes
    ----------
    product_name : str
        Root name of the products (``<product_name>_i2d.fits`` ...).
    asn_id : str
        Association id, used in per-exposure product names (``<exposure>_<asn_id>_crf.fits``).
    members : list of Path or RemotePath
        Absolute paths (or object-store URLs) of the science members, in association order.
    path : Path, RemotePath or None
        The association file, when there is one.
    raw : dict
        The association as read.
    """

    product_name: str
    asn_id: str
    members: list[Location]
    path: Location | None = None
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

    Raises
    ------
    InputError
        When ``product_name`` or ``asn_id`` is not a plain name (:func:`check_name`).
    """
    check_name(product_name, "product name")
    check_name(asn_id, "asn_id")
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


def load_association(
    path: str | os.PathLike | RemotePath, storage_options: dict | None = None
) -> Association:
    """Read a level-3 imaging association.

    Parameters
    ----------
    path : path-like or URL
        The association JSON file, local or on an object store (``s3://bucket/asn.json``,
        any fsspec URL); members are resolved relative to its folder, as jwst does.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for object-store URLs; never read from the
        association itself.

    Returns
    -------
    Association
        Product name, association id and the absolute paths of the science members.

    Raises
    ------
    InputError
        When the file is missing, is not JSON, is not an ``image3`` association, has a member
        whose ``expname`` is not a file name (a number, null, empty), has no science member, names its product or itself with something that is not a plain name
        (:func:`check_name`), or has two members of the same exposure name in different
        folders.
    """
    path = location(path, storage_options)
    if not path.is_file():
        raise InputError(f"{path}: association file not found")
    try:
        if isinstance(path, RemotePath):
            raw = json.loads(path.read_text())
        else:
            with open(path) as fh:
                raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid association JSON file ({exc})") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("products"), list)
        or not raw["products"]
    ):
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
        expname = m["expname"]
        if not isinstance(expname, str) or not expname.strip() or "\x00" in expname:
            raise InputError(
                f"{path}: member {i} has expname {expname!r}; expected the exposure's file "
                "name (a non-empty string, e.g. 'jw01234001001_02101_00001_mirimage_cal.fits')"
            )
        exptype = m.get("exptype", "science")
        if not isinstance(exptype, str):
            raise InputError(
                f"{path}: member {i} ({expname}) has exptype {exptype!r}; expected a string "
                "such as 'science'"
            )
        exptype = exptype.lower()
        if exptype != "science":
            log.warning("%s: ignoring %s member %s", path, exptype, expname)
            continue
        if is_url(expname):
            # the run's options (credentials) only go to the association's own store
            member = location(expname)
            same = isinstance(member, RemotePath) and isinstance(base, RemotePath) and (
                member.protocol == base.protocol
            )
            members.append(location(expname, storage_options) if same else member)
            continue
        p = Path(expname)
        members.append(p if p.is_absolute() else base / p)
    if not members:
        raise InputError(f"{path}: association has no science member")
    _check_unique_names(members, path)
    name = product.get("name")
    if name is None:
        name = path.stem.replace("_asn", "")
    asn_id = raw.get("asn_id")
    if asn_id is None:
        asn_id = "a3001"
    elif isinstance(asn_id, int) and not isinstance(asn_id, bool):
        asn_id = str(asn_id)
    return Association(
        product_name=check_name(name, "product name", path),
        asn_id=check_name(asn_id, "asn_id", path),
        members=members,
        path=path,
        raw=raw,
    )


def resolve_inputs(
    inputs: str | os.PathLike | list[str | os.PathLike],
    product_name: str | None = None,
    storage_options: dict | None = None,
) -> Association:
    """Turn what a user passed (association, list of files, glob) into an :class:`Association`.

    Parameters
    ----------
    inputs : path-like or list of path-like
        An association JSON file, one or more exposure files, or glob patterns.
    product_name : str, optional
        Product name (default: the association's, or ``image3`` for exposures); it must be a
        plain name (:func:`check_name`).
    storage_options : dict, optional
        fsspec options for inputs given as object-store URLs.

    Raises
    ------
    InputError
        As :func:`load_association`; also when ``product_name`` is not a plain name or two
        exposures given have the same name in different folders.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike, RemotePath)) else list(inputs)
    if len(items) == 1 and str(items[0]).endswith(".json"):
        asn = load_association(items[0], storage_options)
        if product_name is not None:
            asn.product_name = check_name(product_name, "product name", items[0])
        return asn
    if product_name is not None:
        check_name(product_name, "product name")
    files: list[Location] = []
    for item in items:
        s = str(item)
        if isinstance(item, RemotePath) or is_url(s):
            loc = location(item, storage_options)
            if isinstance(loc, RemotePath) and any(c in loc.path for c in "*?["):
                matched = list(loc.parent.glob(loc.name))
                if not matched:
                    raise InputError(f"{s}: no file matches this pattern")
                files.extend(matched)
            else:
                files.append(loc)
            continue
        if any(c in s for c in "*?["):
            matched = sorted(glob.glob(s))
            if not matched:
                raise InputError(f"{s}: no file matches this pattern")
            files.extend(Path(m).resolve() for m in matched)
        else:
            files.append(Path(s).resolve())
    if not files:
        raise InputError("no input exposure given")
    _check_unique_names(files, None)
    return Association(
        product_name=product_name or "image3",
        asn_id="a3001",
        members=files,
        path=None,
        raw=make_association(files, product_name or "image3"),
    )

"""Reading a user-supplied output WCS (``output_wcs``: an ASDF file holding a gwcs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from image3_dask.errors import InputError

__all__ = ["load_output_wcs"]


def load_output_wcs(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read the gwcs (``wcs`` key) of an ASDF file, as jwst's ``load_custom_wcs`` does.

    Returns
    -------
    (gwcs.WCS, dict)
        The WCS and the other top-level keys (``pixel_scale``, ``pixel_area``, ...).
    """
    import asdf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: output_wcs file not found")
    try:
        with asdf.open(path, lazy_load=False) as af:
            tree = dict(af.tree)
    except Exception as exc:  # asdf raises many types for bad files
        raise InputError(
            f"{path}: not a readable ASDF file ({type(exc).__name__}: {exc})"
        ) from None
    wcs = tree.get("wcs")
    if wcs is None or not hasattr(wcs, "forward_transform"):
        raise InputError(f"{path}: has no gwcs under the 'wcs' key")
    return wcs, {k: v for k, v in tree.items() if k not in ("wcs", "asdf_library", "history")}

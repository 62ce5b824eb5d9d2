"""JWST datamodels opened from a local path or from an object store."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

from image3_dask.io.storage import RemotePath

__all__ = ["datamodel_from_hdulist", "open_datamodel"]


def open_datamodel(path: str | os.PathLike | RemotePath, **kwargs: Any):
    """``stdatamodels.jwst.datamodels.open`` for a local file or an object.

    stdatamodels reads every array of a FITS file when it opens it (memory maps off), so an
    object is read whole in one request and opened from memory; its class comes from the
    ``DATAMODL`` keyword, as ``datamodels.open`` finds it.
    """
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    if not isinstance(path, RemotePath):
        return datamodels.open(path, **kwargs)
    hdul = fits.open(io.BytesIO(path.read_bytes()), memmap=False)
    return datamodel_from_hdulist(hdul, path.name, **kwargs)


def datamodel_from_hdulist(hdul, filename: str, **kwargs: Any):
    """The datamodel of an opened FITS file (its class from ``DATAMODL``); closes it on failure."""
    from stdatamodels.jwst import datamodels

    try:
        name = str(hdul[0].header.get("DATAMODL", "") or "JwstDataModel")
        cls = getattr(datamodels, name, None)
        if not (isinstance(cls, type) and issubclass(cls, datamodels.JwstDataModel)):
            cls = datamodels.JwstDataModel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(hdul, **kwargs)
    except BaseException:
        hdul.close()
        raise
    model.meta.filename = filename
    return model

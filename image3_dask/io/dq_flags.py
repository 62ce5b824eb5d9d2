"""The JWST pixel data-quality flags, read from the data models once for every step.

The algorithms work on DQ arrays and flag values; the names and values of the flags
(``stdatamodels``' ``dqflags.pixel``: ``DO_NOT_USE`` = 1, ``OUTLIER`` = 16,
``NON_SCIENCE`` = 512, ...) come from here, the one module that imports them from the
data models. The import is deferred to the first call: importing
``stdatamodels.jwst.datamodels`` takes about a second.
"""

from __future__ import annotations

from functools import cache

__all__ = ["jwst_pixel_flags", "pixel_flag"]


@cache
def _pixel_flags() -> tuple[tuple[str, int], ...]:
    from stdatamodels.jwst.datamodels.dqflags import pixel

    return tuple((str(name), int(value)) for name, value in pixel.items())


def jwst_pixel_flags() -> dict[str, int]:
    """JWST pixel DQ flags, mnemonic -> bit value (``stdatamodels`` ``dqflags.pixel``).

    Returns
    -------
    dict of str to int
        A new dictionary (callers may modify it), usable as the ``flag_name_map`` of
        ``astropy.nddata.bitmask`` functions and of stcal.
    """
    return dict(_pixel_flags())


def pixel_flag(name: str) -> int:
    """Bit value of one JWST pixel DQ flag.

    Parameters
    ----------
    name : str
        Flag mnemonic, e.g. ``"DO_NOT_USE"``.

    Returns
    -------
    int
        The flag's bit value.

    Raises
    ------
    KeyError
        If ``name`` is not a JWST pixel flag.
    """
    return dict(_pixel_flags())[name]

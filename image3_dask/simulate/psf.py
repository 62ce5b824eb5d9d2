"""PSF model of the simulated instruments: a circular Moffat profile truncated at ``rmax``.

The profile is normalised to 1 inside ``rmax`` (8 FWHM), so encircled energies are analytic:
``EE(r) = (1 - (1 + (r/alpha)^2)^(1-beta)) / (1 - (1 + (rmax/alpha)^2)^(1-beta))``.
The PSF is defined in detector pixels (the small variation of the pixel scale over the field is
neglected for its shape; fluxes are still exact because rendering works in flux per pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from image3_dask.simulate.instruments import Instrument, get_instrument

__all__ = [
    "MoffatPSF",
    "ee_radius",
    "encircled_energy",
    "get_psf",
    "psf_fwhm_pixels",
]

DEFAULT_BETA = 2.5
TRUNCATION_FWHM = 8.0


@dataclass(frozen=True)
class MoffatPSF:
    """Truncated circular Moffat PSF in pixel units.

    Attributes
    ----------
    fwhm : float
        Full width at half maximum (pixels).
    beta : float
        Moffat power index.
    rmax : float
        Truncation radius (pixels); the PSF is zero beyond and integrates to 1 inside.
    """

    fwhm: float
    beta: float = DEFAULT_BETA
    rmax: float = 0.0

    def __post_init__(self):
        if self.rmax <= 0:
            object.__setattr__(self, "rmax", TRUNCATION_FWHM * self.fwhm)

    @property
    def alpha(self) -> float:
        """Moffat core radius (pixels)."""
        return self.fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    @property
    def _norm(self) -> float:
        return 1.0 - (1.0 + (self.rmax / self.alpha) ** 2) ** (1.0 - self.beta)

    @property
    def stamp_half_size(self) -> int:
        """Half size (pixels) of a square stamp that contains the whole PSF."""
        return int(np.ceil(self.rmax)) + 1

    def profile(self, r: np.ndarray) -> np.ndarray:
        """Surface density (per pixel^2) at radius ``r`` (pixels), zero beyond ``rmax``."""
        r = np.asarray(r, dtype=float)
        a = self.alpha
        val = (self.beta - 1.0) / (np.pi * a * a) * (1.0 + (r / a) ** 2) ** (-self.beta)
        return np.where(r <= self.rmax, val / self._norm, 0.0)

    def encircled_energy(self, radius) -> np.ndarray:
        """Fraction of the flux inside ``radius`` (pixels)."""
        r = np.minimum(np.asarray(radius, dtype=float), self.rmax)
        return (1.0 - (1.0 + (r / self.alpha) ** 2) ** (1.0 - self.beta)) / self._norm

    def radius_for_ee(self, fraction) -> np.ndarray:
        """Radius (pixels) that encloses ``fraction`` of the flux (0 < fraction <= 1)."""
        f = np.asarray(fraction, dtype=float)
        if np.any((f <= 0) | (f > 1)):
            raise ValueError("encircled-energy fractions must be in (0, 1]")
        inner = (1.0 - f * self._norm) ** (1.0 / (1.0 - self.beta)) - 1.0
        return self.alpha * np.sqrt(inner)

    def pixel_stamp(
        self, dx: float, dy: float, half: int | None = None, oversample: int = 5
    ) -> np.ndarray:
        """Pixel-integrated PSF on a ``(2*half+1)^2`` grid whose centre pixel is at offset 0.

        Parameters
        ----------
        dx, dy : float
            Position of the PSF centre relative to the centre pixel (pixels, |d| <= 0.5).
        half : int, optional
            Half size of the stamp (default :attr:`stamp_half_size`).
        oversample : int
            Sub-pixels per pixel and axis used to integrate the profile.

        Returns
        -------
        ndarray
            Fraction of the flux in each pixel; sums to 1 when the stamp contains the PSF.
        """
        half = self.stamp_half_size if half is None else int(half)
        grid = np.arange(-half, half + 1, dtype=float)
        # pixel-centre values everywhere, sub-pixel integration in the core where it matters
        val = self.profile(np.hypot(grid[None, :] - dx, grid[:, None] - dy))
        core = min(half, int(np.ceil(3.0 * self.fwhm)) + 1)
        if oversample > 1 and core > 0:
            sub = (np.arange(oversample) + 0.5) / oversample - 0.5
            cg = np.arange(-core, core + 1, dtype=float)
            xs = (cg[:, None] + sub[None, :]).ravel() - dx
            ys = (cg[:, None] + sub[None, :]).ravel() - dy
            m = 2 * core + 1
            c = self.profile(np.hypot(xs[None, :], ys[:, None]))
            c = c.reshape(m, oversample, m, oversample).mean(axis=(1, 3))
            val[half - core : half + core + 1, half - core : half + core + 1] = c
        total = val.sum()
        return val / total if total > 0 else val


def get_psf(instrument: str | Instrument) -> MoffatPSF:
    """The PSF model of an instrument (``"miri"``: F770W, ``"nircam"``: F200W)."""
    inst = get_instrument(instrument)
    return MoffatPSF(fwhm=inst.fwhm_pixels)


def psf_fwhm_pixels(instrument: str | Instrument) -> float:
    """PSF FWHM in detector pixels."""
    return get_instrument(instrument).fwhm_pixels


def _unit_scale(instrument, unit: str) -> float:
    if unit in ("pixel", "pixels", "pix"):
        return 1.0
    if unit == "arcsec":
        return get_instrument(instrument).pixel_scale
    raise ValueError(f"unit must be 'pixel' or 'arcsec', not {unit!r}")


def encircled_energy(instrument: str | Instrument, radius, unit: str = "pixel") -> np.ndarray:
    """Encircled energy of the instrument's PSF at ``radius`` (detector pixels or arcsec)."""
    return get_psf(instrument).encircled_energy(np.asarray(radius) / _unit_scale(instrument, unit))


def ee_radius(instrument: str | Instrument, fractions, unit: str = "pixel") -> np.ndarray:
    """Aperture radii enclosing the given encircled-energy fractions.

    Radii are in detector pixels (``unit="pixel"``) or arcsec (``unit="arcsec"``, nominal scale).
    With the aperture correction ``1 / EE`` this is what the source catalog step needs, e.g.
    ``ee_radius("miri", [0.3, 0.5, 0.7])``.
    """
    return get_psf(instrument).radius_for_ee(fractions) * _unit_scale(instrument, unit)

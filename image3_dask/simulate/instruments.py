"""Instrument and detector descriptions used by the simulator.

Numbers are realistic approximations of the JWST Science Instrument Aperture File (SIAF) and of
typical calibration values; they are not the official reference data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Detector", "Instrument", "INSTRUMENTS", "get_instrument"]


@dataclass(frozen=True)
class Detector:
    """One detector (full-frame aperture) in the telescope V2/V3 frame.

    Attributes
    ----------
    name : str
        ``meta.instrument.detector`` (``MIRIMAGE``, ``NRCA1`` ...).
    v2_ref, v3_ref : float
        V2/V3 of the reference pixel (arcsec).
    v3yangle : float
        Angle between the ideal Y axis and V3 (deg).
    vparity : int
        Parity of the ideal frame relative to V2/V3 (-1 for all JWST imagers).
    module : str or None
        NIRCam module (``A`` or ``B``).
    """

    name: str
    v2_ref: float
    v3_ref: float
    v3yangle: float
    vparity: int = -1
    module: str | None = None

    @property
    def file_tag(self) -> str:
        """Detector part of a JWST file name (``mirimage``, ``nrca1`` ...)."""
        return self.name.lower()


@dataclass(frozen=True)
class Instrument:
    """An imager and the parameters the simulator needs.

    Attributes
    ----------
    name : str
        ``meta.instrument.name``.
    exp_type : str
        ``meta.exposure.type``.
    shape : tuple of int
        Full detector shape ``(ny, nx)``.
    pixel_scale : float
        Nominal pixel scale (arcsec/pixel).
    filter, pupil, channel : str or None
        Optical element metadata.
    fwhm_arcsec : float
        PSF full width at half maximum.
    wavelength_um : float
        Pivot wavelength of the filter.
    distortion_pixels : float
        Size of the optical distortion at the detector corners (pixels).
    ref_columns, ref_rows : int
        Reference pixels at the left/right and bottom/top edges (flagged, no signal).
    photmjsr : float
        ``meta.photometry.conversion_megajanskys`` (MJy/sr per DN/s).
    gain : float
        Electrons per DN.
    read_noise : float
        Effective read noise of a ramp fit (electrons).
    exposure_time : float
        Effective exposure time (s).
    sky_mjysr : float
        Typical background surface brightness (MJy/sr).
    flux_range_jy : tuple of float
        Range of simulated star fluxes (Jy).
    readpatt, ngroups, frame_time
        Readout description for ``meta.exposure``.
    detectors : dict
        Detectors by name; ``default_detectors`` are used in that order.
    """

    name: str
    exp_type: str
    shape: tuple[int, int]
    pixel_scale: float
    filter: str
    pupil: str | None
    channel: str | None
    fwhm_arcsec: float
    wavelength_um: float
    distortion_pixels: float
    ref_columns: int
    ref_rows: int
    photmjsr: float
    gain: float
    read_noise: float
    exposure_time: float
    sky_mjysr: float
    flux_range_jy: tuple[float, float]
    readpatt: str
    ngroups: int
    frame_time: float
    detectors: dict[str, Detector] = field(default_factory=dict)
    default_detectors: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Lower-case instrument key (``miri`` or ``nircam``)."""
        return self.name.lower()

    @property
    def fwhm_pixels(self) -> float:
        """PSF FWHM in pixels."""
        return self.fwhm_arcsec / self.pixel_scale

    def detector_list(self, n_detectors: int | None = None) -> list[Detector]:
        """The first ``n_detectors`` detectors used per exposure (default 1)."""
        n = 1 if n_detectors is None else int(n_detectors)
        if not 1 <= n <= len(self.default_detectors):
            raise ValueError(
                f"{self.name} has {len(self.default_detectors)} detectors; asked for {n}"
            )
        return [self.detectors[d] for d in self.default_detectors[:n]]


_MIRI = Instrument(
    name="MIRI",
    exp_type="MIR_IMAGE",
    shape=(1024, 1032),
    pixel_scale=0.11,
    filter="F770W",
    pupil=None,
    channel=None,
    fwhm_arcsec=0.269,
    wavelength_um=7.7,
    distortion_pixels=3.0,
    ref_columns=4,
    ref_rows=0,
    photmjsr=0.25,
    gain=4.0,
    read_noise=30.0,
    exposure_time=111.0,
    sky_mjysr=8.0,
    flux_range_jy=(3e-6, 1e-3),
    readpatt="FASTR1",
    ngroups=40,
    frame_time=2.775,
    detectors={"MIRIMAGE": Detector("MIRIMAGE", -453.559, -373.814, 4.44971, -1)},
    default_detectors=("MIRIMAGE",),
)

# NIRCam short-wavelength detectors (approximate SIAF full-frame apertures).
_NRC_SW = {
    "NRCA1": Detector("NRCA1", 120.620, -527.541, -0.546, -1, "A"),
    "NRCA2": Detector("NRCA2", 120.034, -459.698, -0.328, -1, "A"),
    "NRCA3": Detector("NRCA3", 51.760, -527.824, -0.575, -1, "A"),
    "NRCA4": Detector("NRCA4", 52.048, -459.837, -0.268, -1, "A"),
    "NRCB1": Detector("NRCB1", -120.577, -459.534, 0.243, -1, "B"),
    "NRCB2": Detector("NRCB2", -120.154, -527.468, 0.090, -1, "B"),
    "NRCB3": Detector("NRCB3", -51.968, -459.556, 0.205, -1, "B"),
    "NRCB4": Detector("NRCB4", -51.672, -527.384, 0.080, -1, "B"),
}

_NIRCAM = Instrument(
    name="NIRCAM",
    exp_type="NRC_IMAGE",
    shape=(2048, 2048),
    pixel_scale=0.031,
    filter="F200W",
    pupil="CLEAR",
    channel="SHORT",
    fwhm_arcsec=0.066,
    wavelength_um=1.99,
    distortion_pixels=2.0,
    ref_columns=4,
    ref_rows=4,
    photmjsr=2.2,
    gain=2.05,
    read_noise=12.0,
    exposure_time=257.7,
    sky_mjysr=0.15,
    flux_range_jy=(1e-7, 1e-4),
    readpatt="MEDIUM8",
    ngroups=6,
    frame_time=10.737,
    detectors=_NRC_SW,
    default_detectors=("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4"),
)

INSTRUMENTS: dict[str, Instrument] = {"miri": _MIRI, "nircam": _NIRCAM}


def get_instrument(instrument: str | Instrument) -> Instrument:
    """Return the :class:`Instrument` for ``"miri"`` or ``"nircam"`` (case-insensitive)."""
    if isinstance(instrument, Instrument):
        return instrument
    key = str(instrument).lower()
    if key in ("nrc", "nircam_sw"):
        key = "nircam"
    try:
        return INSTRUMENTS[key]
    except KeyError:
        raise ValueError(
            f"unknown instrument {instrument!r}; choose one of {sorted(INSTRUMENTS)}"
        ) from None

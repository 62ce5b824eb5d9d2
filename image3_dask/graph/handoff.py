"""What one step hands the next: the exposures, the tasks still writing them, the mosaic.

Steps do not wait for their own tasks: each returns a :class:`StepData` naming the futures
that the next step's tasks must follow (:attr:`StepData.written`, :attr:`Mosaic.tiles`), so
that the cluster moves from one step to the next tile by tile, without a barrier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image3_dask.io.exposures import ExposureInfo

__all__ = ["Mosaic", "StepData"]


@dataclass(frozen=True)
class Mosaic:
    """The resample step's mosaic, as source_catalog needs it.

    Attributes
    ----------
    i2d : Path
        ``<product>_i2d.fits`` (written by :attr:`fits`).
    store : Path
        The mosaic's Zarr store (planes ``sci``, ``err``, ``wht``...), written tile by tile.
    model : Future
        Of the i2d's metadata, a ``stdatamodels.jwst.datamodels.ImageModel`` (its arrays are
        streamed from the store).
    shape : tuple of int
        ``(ny, nx)`` of the mosaic.
    tiles : dict
        Tile -> future of the task writing it (the tiles of :attr:`boxes`).
    boxes : dict
        Tile name -> ``(y0, y1, x0, x1)``.
    fits : Future or None
        The task writing :attr:`i2d`.
    """

    i2d: Path
    store: Path
    model: Any
    shape: tuple[int, int]
    tiles: dict[str, Any] = field(default_factory=dict)
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    fits: Any = None

    def futures_over(self, y0: int, y1: int, x0: int, x1: int) -> list:
        """The futures of the tiles overlapping ``[y0, y1) x [x0, x1)``."""
        return [
            self.tiles[name]
            for name, (ty0, ty1, tx0, tx1) in self.boxes.items()
            if ty0 < y1 and y0 < ty1 and tx0 < x1 and x0 < tx1
        ]


@dataclass(frozen=True)
class StepData:
    """The exposures as a step leaves them, and the tasks still writing their files.

    Attributes
    ----------
    exposures : list of ExposureInfo
        In association order; ``path`` names the file each exposure's pixels are read from.
    written : dict
        Exposure index -> future of the task writing ``exposures[i].path`` (e.g. its crf file);
        a task reading that file must follow it.
    mosaic : Mosaic or None
        Set by the resample step.
    pending : callable or None
        What the client still has to do before ``exposures`` are final beyond their WCS
        (e.g. wait for the sky solve and record the levels); :meth:`settled` does it. A step
        may plan from the WCS first (its grid, tiles and pixel maps) and settle after.
    """

    exposures: list[ExposureInfo]
    written: dict[int, Any] = field(default_factory=dict)
    mosaic: Mosaic | None = None
    pending: Callable[[], list[ExposureInfo]] | None = None

    def settled(self) -> StepData:
        """This data with :attr:`pending` done (the exposures final)."""
        if self.pending is None:
            return self
        return dataclasses.replace(self, exposures=self.pending(), pending=None)

    def evolve(self, **changes: Any) -> StepData:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def after(self, indices) -> list:
        """The futures writing the files of the exposures ``indices``."""
        return [self.written[i] for i in indices if i in self.written]

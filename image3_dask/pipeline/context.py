"""What every step of a run shares: cluster client, parameters, folders, run token."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image3_dask.io.asn import Association
from image3_dask.pipeline.config import PipelineConfig

__all__ = ["RunContext"]

log = logging.getLogger("image3_dask")


@dataclass
class RunContext:
    """State shared by the steps of one pipeline run.

    Attributes
    ----------
    client : distributed.Client
        Where tasks run.
    config : PipelineConfig
        Every step's parameters.
    asn : Association
        The association being processed.
    output_dir : Path
        Where products go (inputs are never modified).
    work_dir : Path
        Intermediate files of this product (pixel maps, median store, manifests); kept on
        failure so that a rerun resumes, removed after success.
    token : str
        Unique per run; the last element of every task key.
    progress : bool
        Draw progress lines in the terminal.
    products : dict
        Product kind -> path, filled in by the steps.
    shared : dict
        Plans that several steps reuse (output grid, tiles, pixel maps).
    monitor : MosaicMonitor, optional
        Told of every plan and tiling (:mod:`image3_dask.service.mosaic_page`), when the run
        is watched.
    """

    client: Any
    config: PipelineConfig
    asn: Association
    output_dir: Path
    work_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    progress: bool = True
    products: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    monitor: Any = None

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``monitor.<method>(*args, **kwargs)`` when the run is watched; never raises."""
        if self.monitor is None:
            return
        try:
            getattr(self.monitor, method)(*args, **kwargs)
        except Exception as exc:  # watching never fails a run
            log.debug("monitor %s failed: %s", method, exc)

    @property
    def product_name(self) -> str:
        """Root name of the level-3 products."""
        return self.asn.product_name

    def product_path(self, suffix: str, ext: str = "fits") -> Path:
        """``<output_dir>/<product>_<suffix>.<ext>``."""
        return self.output_dir / f"{self.product_name}_{suffix}.{ext}"

    def exposure_product_path(self, exposure_name: str, suffix: str, ext: str = "fits") -> Path:
        """``<output_dir>/<exposure>_<asn_id>_<suffix>.<ext>`` as jwst names per-exposure products."""
        return self.output_dir / f"{exposure_name}_{self.asn.asn_id}_{suffix}.{ext}"

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
    pending : list
        Work submitted by a step that later steps need not wait for (e.g. streaming the i2d
        FITS file while the catalog runs): ``(label, tasks, futures)``, awaited by
        :meth:`finish_pending` at the end of the run.
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
    pending: list[tuple[str, list, list]] = field(default_factory=list)

    def defer(self, label: str, tasks: list) -> list:
        """Submit ``tasks`` now and wait for them only in :meth:`finish_pending`."""
        from image3_dask.graph.tasks import submit_tasks

        futures = submit_tasks(self.client, tasks, self.token)
        self.pending.append((label, list(tasks), futures))
        return futures

    def finish_pending(self) -> None:
        """Wait for the deferred tasks (progress line per batch); raise if one failed."""
        from image3_dask.graph.tasks import wait_tasks

        while self.pending:
            label, tasks, futures = self.pending[0]
            wait_tasks(self.client, futures, tasks, self.token, label=label, progress=self.progress)
            self.pending.pop(0)

    def cancel_pending(self) -> None:
        """Cancel the deferred tasks (the run failed); never raises."""
        for _, _, futures in self.pending:
            try:
                self.client.cancel(futures)
            except Exception as exc:  # the cluster may be gone already
                log.debug("cancelling deferred tasks failed: %s", exc)
        self.pending.clear()

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

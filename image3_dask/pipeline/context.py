"""What every step of a run shares: cluster client, parameters, folders, run token."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image3_dask.graph.tasks import TaskLedger, TaskSpec, pickled, unpickle
from image3_dask.io.asn import Association
from image3_dask.pipeline.config import PipelineConfig

__all__ = ["RunContext", "exposure_product_name"]

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
    references : image3_dask.io.crds_refs.References or None
        The reference files and CRDS step parameters resolved once for the run (the
        catalog step resolves them itself when it runs alone).
    catalog : astropy.table.QTable or None
        The source catalog, once source_catalog has made it (kept for the caller).
    plans : dict
        Mosaic plans (output grid, tiles, pixel maps) by grid and WCS fingerprints, shared by
        outlier detection and resample (:func:`image3_dask.graph.plan.make_plan`).
    tasks : TaskLedger, optional
        Every task of the run (made from ``client``, ``token`` and ``progress`` when not
        given; its watcher is told of every task and plan): steps submit through it without waiting
        (:meth:`TaskLedger.submit`), wait where the client needs a result
        (:meth:`TaskLedger.wait`), and the run waits for the rest at the end
        (:meth:`finish_pending`).
    """

    client: Any
    config: PipelineConfig
    asn: Association
    output_dir: Path
    work_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    progress: bool = True
    products: dict[str, Any] = field(default_factory=dict)
    references: Any = None
    catalog: Any = None
    plans: dict[tuple, Any] = field(default_factory=dict)
    tasks: TaskLedger | None = None
    _finishers: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)
    #: ``id(wcs)`` -> (the WCS object, the future of its copy on the cluster)
    _wcs_refs: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tasks is None:
            self.tasks = TaskLedger(self.client, self.token, progress=self.progress)

    def submit(self, tasks: list[TaskSpec]) -> list:
        """Submit ``tasks`` now (nothing awaited); return their futures."""
        return self.tasks.submit(tasks)

    def wcs_futures(self, wcses: list) -> list:
        """Futures of WCS objects on the cluster; each object is sent there once per run.

        A gwcs pickles to about 60 kB. Sent inside the arguments of every task that reads it
        (sky statistics, pixel map, crf file), it is serialised by the client, deserialised by
        the scheduler and again by the worker, once per task; as a future, it is sent once and
        moved between workers only where needed.
        """
        todo = {id(w): w for w in wcses if id(w) not in self._wcs_refs}
        if todo:
            # a task holding the object, not scattered data: if the worker holding it dies,
            # the scheduler recomputes it (scattered data would be lost with the worker);
            # sent pickled in one piece (see graph.tasks.pickled)
            first = len(self._wcs_refs)
            futures = self.submit(
                [
                    TaskSpec("wcs", f"{first + k:05d}", unpickle, (pickled(w),))
                    for k, w in enumerate(todo.values())
                ]
            )
            for w, f in zip(todo.values(), futures, strict=True):
                self._wcs_refs[id(w)] = (w, f)
        return [self._wcs_refs[id(w)][1] for w in wcses]

    def remember_wcs(self, wcs: Any, future: Any) -> None:
        """Record that ``future`` (e.g. the task that made ``wcs``) holds ``wcs`` on the cluster."""
        self._wcs_refs[id(wcs)] = (wcs, future)

    def exposure_kwargs(self, exposures: list) -> dict[int, dict[str, Any]]:
        """Task arguments ``info`` and ``wcs`` of each exposure, for :func:`~image3_dask.graph.tasks.with_wcs`.

        ``info`` is a copy whose WCS is reduced to its bounding box; ``wcs`` the future of the
        WCS (:meth:`wcs_futures`). Keyed by exposure index.
        """
        from image3_dask.graph.drizzle_inputs import bbox_only

        futures = self.wcs_futures([e.wcs for e in exposures])
        return {
            e.index: {"info": bbox_only(e), "wcs": f}
            for e, f in zip(exposures, futures, strict=True)
        }

    def wait(self, futures: list, label: str) -> list:
        """Wait for ``futures`` and return their results (see :meth:`TaskLedger.wait`)."""
        return self.tasks.wait(futures, label)

    def run_now(self, tasks: list[TaskSpec], label: str) -> list:
        """Submit ``tasks`` and wait for their results (the futures are then let go)."""
        futures = self.tasks.submit(tasks)
        results = self.tasks.wait(futures, label)
        self.tasks.forget(futures)
        return results

    @property
    def pending(self) -> list:
        """Futures submitted and not finished yet."""
        return [f for _, f in self.tasks.outstanding()]

    def on_finish(self, report: Callable[[], None]) -> None:
        """Call ``report()`` once every task has finished (to log or record their results)."""
        self._finishers.append(report)

    def finish_pending(self) -> None:
        """Wait for every task submitted so far, then run the :meth:`on_finish` reports.

        Raises
        ------
        StepFailed
            Naming the first task that failed.
        """
        self.tasks.finish("finishing")
        while self._finishers:
            self._finishers.pop(0)()

    def cancel_pending(self) -> None:
        """Cancel the tasks not finished (the run failed); never raises."""
        self.tasks.cancel()

    @property
    def product_name(self) -> str:
        """Root name of the level-3 products."""
        return self.asn.product_name

    def product_path(self, suffix: str, ext: str = "fits") -> Path:
        """``<output_dir>/<product>_<suffix>.<ext>``."""
        return self.output_dir / f"{self.product_name}_{suffix}.{ext}"

    def exposure_product_path(self, exposure_name: str, suffix: str, ext: str = "fits") -> Path:
        """``<output_dir>/<exposure>_<asn_id>_<suffix>.<ext>`` as jwst names per-exposure products."""
        return self.output_dir / exposure_product_name(exposure_name, self.asn.asn_id, suffix, ext)


def exposure_product_name(exposure_name: str, asn_id: str, suffix: str, ext: str = "fits") -> str:
    """``<exposure>_<asn_id>_<suffix>.<ext>``: jwst's name of a per-exposure product."""
    return f"{exposure_name}_{asn_id}_{suffix}.{ext}"

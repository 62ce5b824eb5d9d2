"""The level-3 imaging pipeline: tweakreg, skymatch, outlier_detection, resample, source_catalog."""

from __future__ import annotations

import copy
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image3_dask.errors import ConfigError, StepNotAvailableError
from image3_dask.graph.handoff import StepData
from image3_dask.graph.tasks import TaskLedger, TaskSpec
from image3_dask.io.asn import resolve_inputs
from image3_dask.io.crds_refs import resolve_references
from image3_dask.io.exposures import read_exposures, try_read_exposure_info
from image3_dask.io.precheck import check_output_dir, precheck_grid, precheck_members
from image3_dask.io.storage import is_url, location, rmtree
from image3_dask.pipeline.cluster import check_memory_limit, connect
from image3_dask.pipeline.config import PipelineConfig
from image3_dask.pipeline.context import RunContext, exposure_product_name
from image3_dask.pipeline.output_lock import OutputLock, OutputLockedError
from image3_dask.pipeline.step_specs import STEP_ORDER

log = logging.getLogger("image3_dask")

__all__ = ["Image3Pipeline", "OutputLockedError", "STEP_MODULES", "step_available"]

#: Module implementing each step as ``submit(ctx, StepData) -> StepData`` (and ``run``).
STEP_MODULES = {
    "tweakreg": "image3_dask.graph.tweakreg",
    "skymatch": "image3_dask.graph.skymatch",
    "outlier_detection": "image3_dask.graph.outlier",
    "resample": "image3_dask.graph.resample",
    "source_catalog": "image3_dask.graph.catalog",
}


def step_available(step: str) -> bool:
    """Whether this installation implements ``step``."""
    try:
        importlib.import_module(STEP_MODULES[step])
    except ModuleNotFoundError as exc:
        if exc.name == STEP_MODULES[step]:
            return False
        raise
    return True


def _step_module(step: str):
    if not step_available(step):
        raise StepNotAvailableError(
            f"step {step} is not available in this version of image3-dask; "
            f"skip it with --steps.{step}.skip=true"
        )
    return importlib.import_module(STEP_MODULES[step])


class Image3Pipeline:
    """calwebb_image3 on a Dask cluster.

    Parameters
    ----------
    config : PipelineConfig, optional
        Step parameters (defaults of jwst 3.0 when omitted).
    """

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()

    @classmethod
    def call(
        cls,
        inputs: str | os.PathLike | list,
        output_dir: str | os.PathLike | None = None,
        steps: dict[str, dict[str, Any]] | None = None,
        config_file: str | os.PathLike | None = None,
        *,
        save_results: bool | None = None,
        output_file: str | None = None,
        input_dir: str | os.PathLike | None = None,
        configure_log: bool = True,
        logcfg: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run the pipeline on an association (or files) and return the products.

        Takes the keyword arguments of jwst's ``Image3Pipeline.call``; what image3-dask cannot
        honour is a :class:`~image3_dask.errors.ConfigError` before anything runs.

        Parameters
        ----------
        inputs : path-like or list
            Association JSON, exposure files, or glob patterns.
        output_dir : path-like, optional
            Folder for the products (default: the current folder, as jwst).
        steps : dict, optional
            ``{step: {parameter: value}}``, jwst's names (``assign_mtwcs`` is accepted; it only
            acts on moving targets, which are not supported).
        config_file : path-like, optional
            Parameter file: ours (TOML, ``image3-dask config``), or jwst's ``.cfg`` or ASDF
            (``strun --save-parameters``, CRDS ``pars-*``); ``steps`` and keywords override it.
        save_results : bool, optional
            jwst's switch for writing the products. image3-dask always writes them (the mosaic
            is not held in memory), so ``False`` is refused; ``True`` also sets the
            ``save_results`` of outlier_detection, resample and source_catalog, as jwst does.
        output_file : str, optional
            Product name (``<output_file>_i2d.fits``...) instead of the association's.
        input_dir : path-like, optional
            Folder of a relative ``inputs`` path.
        configure_log : bool
            Show image3-dask's INFO messages on standard error during the call when logging is
            not configured yet (jwst's default); ``False`` leaves logging alone.
        logcfg : str, optional
            stpipe's deprecated logging file: refused (configure the ``image3_dask`` logger).
        **kwargs
            Passed to :meth:`run` (``scheduler``, ``n_workers``, ``memory_limit``, ``client``,
            ``product_name``...), or stpipe's parameters of the pipeline (``in_memory``,
            ``output_ext``, ``suffix``...) at the values jwst uses.
        """
        config, run_kwargs = jwst_call_arguments(
            inputs,
            output_dir=output_dir,
            steps=steps,
            config_file=config_file,
            save_results=save_results,
            output_file=output_file,
            input_dir=input_dir,
            logcfg=logcfg,
            kwargs=kwargs,
        )
        with _call_logging(configure_log):
            return cls(config).run(**run_kwargs)

    def run(
        self,
        inputs: str | os.PathLike | list,
        output_dir: str | os.PathLike = ".",
        *,
        product_name: str | None = None,
        scheduler: str | None = None,
        n_workers: int | None = None,
        memory_limit: str | int | None = "auto",
        dashboard_address: str = "127.0.0.1:8787",
        security=None,
        client=None,
        progress: bool = True,
        keep_work: bool = False,
        mosaic_page: int | None = None,
        disable_crds_steppars: bool | None = None,
        references=None,
        storage_options: dict[str, Any] | None = None,
        on_page: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Validate the inputs, then run the steps in order on the cluster.

        Before the cluster starts, the client asks CRDS (when the environment configures it)
        for the steps' parameter files and reference files, once
        (:func:`~image3_dask.io.crds_refs.resolve_references`).

        Parameters
        ----------
        disable_crds_steppars : bool, optional
            stpipe's ``--disable-crds-steppars``: do not apply CRDS ``pars-*`` files (default:
            the ``STPIPE_DISABLE_CRDS_STEPPARS`` environment variable decides).
        references : References, optional
            Reference files already resolved (by the client that submitted a job): CRDS is not
            asked again, and the configuration is taken as it is (its CRDS step parameters
            already applied).
        mosaic_page : int, optional
            Serve a live picture of the run's tiles on ``http://127.0.0.1:<port>/`` (0: a free
            port; its address is logged next to the dashboard's) while the run lasts; see
            :mod:`image3_dask.service.mosaic_page`. `None` (default): no page.
        on_page : callable, optional
            Called with the mosaic page's address (token included) once it serves (a
            submitted job records it for ``image3-dask serve``).
        storage_options : dict, optional
            fsspec options (credentials, ``endpoint_url``...) for inputs and ``output_dir``
            given as object-store URLs (``s3://bucket/asn.json``); without them the store's
            client finds credentials where it looks (``AWS_*`` variables, profiles). They
            travel with the paths to the workers and are never logged.

        Other keyword arguments are described in :meth:`call`'s ``run_kwargs``.

        Returns
        -------
        dict
            Product kind (``i2d``, ``cat``, ``segm``, ``crf``, ...) -> path(s), plus ``timings``.
        """
        # Everything that needs no cluster is checked before one starts; nothing is written.
        self.config.check()
        asn = resolve_inputs(inputs, product_name, storage_options)
        for step in STEP_ORDER:
            if not self.config[step].skip:
                _step_module(step)  # fail before any work when a step is unavailable
        output_dir = check_output_dir(output_dir, storage_options)
        members = precheck_members(asn.members)  # missing, twice, truncated, mixed filters...
        if not (self.config["resample"].skip and self.config["outlier_detection"].skip):
            precheck_grid(members, dict(self.config["resample"]))  # max_output_pixels
        if client is None and scheduler is None:
            check_memory_limit(memory_limit, n_workers)
        # CRDS step parameters (under the user's) and reference files: once, on the client
        config = copy.deepcopy(self.config)
        if references is None:
            references = resolve_references(
                asn.members, config, disable_steppars=disable_crds_steppars
            )
        timings: dict[str, float] = {}
        with connect(
            scheduler, n_workers, memory_limit, dashboard_address, security, client=client
        ) as c:
            link = getattr(c, "dashboard_link", None)
            if link and progress:
                log.info("Dask dashboard: %s", link)
            token = uuid.uuid4().hex[:8]
            page = _start_mosaic_page(c, token, mosaic_page, progress)
            if page is not None and on_page is not None:
                on_page(page.url)
            try:
                products = self._run_steps(
                    c,
                    asn,
                    output_dir,
                    token,
                    link,
                    timings,
                    progress,
                    keep_work,
                    page,
                    crds=(config, references),
                )
            except BaseException as exc:
                if page is not None:
                    page.monitor.finish("failed", f"{type(exc).__name__}: {exc}")
                raise
            else:
                if page is not None:
                    page.monitor.finish("done")
            finally:
                if page is not None:
                    page.stop(linger=3.0)
        return products

    def _run_steps(
        self,
        c,
        asn,
        output_dir: Path,
        token: str,
        link,
        timings: dict,
        progress: bool,
        keep_work: bool,
        page,
        crds=None,
    ) -> dict[str, Any]:
        """Validate the exposures on the cluster ``c`` and run the steps; returns the products.

        ``crds``: the run's parameters with CRDS's applied, and its reference files.
        """
        config, references = crds if crds is not None else (self.config, None)

        ledger = TaskLedger(
            c, token, progress=progress, watcher=page.monitor if page is not None else None
        )

        def on_cluster(items):
            tasks = [
                TaskSpec("validate-exposure", p.name, try_read_exposure_info, (p, i))
                for p, i in items
            ]
            return ledger.wait(ledger.submit(tasks), "reading exposures")

        # validates every member (in parallel); nothing is written before this succeeds
        exposures = read_exposures(asn.members, mapper=on_cluster)
        for info in exposures:
            if info.path.parent == output_dir and info.path.name.startswith(asn.product_name + "_"):
                raise ConfigError(f"{info.path}: an input would be overwritten by a product")
        output_dir.mkdir(parents=True, exist_ok=True)
        with OutputLock(output_dir, asn.product_name, shared_outputs(self.config, asn, exposures)):
            work_dir = output_dir / f"{asn.product_name}_work"
            ctx = RunContext(
                client=c,
                config=config,
                asn=asn,
                output_dir=output_dir,
                work_dir=work_dir,
                progress=progress,
                token=token,
                tasks=ledger,
            )
            ctx.products["dashboard"] = link
            if references is not None:
                ctx.references = references
            try:
                exposures = _submit_steps(ctx, exposures, timings).exposures
            except BaseException:
                ctx.cancel_pending()
                raise
            if not keep_work and work_dir.exists():
                rmtree(work_dir)
        if ctx.products.get("photometry"):
            log.warning("Catalog photometry: %s", ctx.products["photometry"])
        ctx.products["timings"] = timings
        ctx.products["exposures"] = exposures
        return ctx.products


def shared_outputs(config: PipelineConfig, asn, exposures: list) -> list[str]:
    """Files a run writes in the output folder whose names do not come from its product.

    The ``_crf`` files are named from the exposure and the association id, so two runs with
    different products over the same exposures would write (and read back) the same files:
    :class:`OutputLock` locks them too.
    """
    od = config["outlier_detection"]
    if od.skip or not od.get("save_results", True) or len(exposures) < 1:
        return []
    return [exposure_product_name(e.name, asn.asn_id, "crf") for e in exposures]


def _submit_steps(ctx: RunContext, exposures: list, timings: dict) -> StepData:
    """Submit the steps in order, then wait for all their tasks; fill ``timings``.

    A step returns once its tasks are submitted, except where the client needs their results
    to go on (the alignment, the sky levels, the catalog's joins), so the tasks of consecutive
    steps overlap. As soon as the exposures' WCS are final (after tweakreg, and after
    skymatch's statistics are submitted), the later steps' ``prepare`` starts their pixel
    maps. ``timings[step]``: from the step's start until its last task ended.
    """
    data = StepData(list(exposures))
    started: dict[str, float] = {}
    submitted: dict[str, float] = {}
    prepared = False
    for step in STEP_ORDER:
        if ctx.config[step].skip:
            log.info("Step %s skipped", step)
            continue
        # the WCS are final after tweakreg: the later steps' pixel maps start from here, after
        # skymatch's statistics are submitted (the workers compute them while the client
        # plans the output grid for the pixel maps)
        if step not in ("tweakreg", "skymatch") and not prepared:
            _prepare_steps(ctx, STEP_ORDER[STEP_ORDER.index(step) :], data)
            prepared = True
        module = _step_module(step)
        started[step] = time.perf_counter()
        ctx.tasks.step = step
        if step == "source_catalog":
            log.info("Step %s running on the mosaic", step)
        else:
            log.info("Step %s running on %d exposures", step, len(data.exposures))
        data = module.submit(ctx, data)
        submitted[step] = time.perf_counter()
        if step == "skymatch" and not prepared:
            _prepare_steps(ctx, STEP_ORDER[STEP_ORDER.index(step) + 1 :], data)
            prepared = True
    ctx.tasks.step = ""
    data = data.settled()
    ctx.finish_pending()
    for step, t0 in started.items():
        end = max(submitted[step], ctx.tasks.last_done(step) or 0.0)
        timings[step] = end - t0
        log.info("Step %s done in %.1f s", step, timings[step])
    return data


def _prepare_steps(ctx: RunContext, steps, data: StepData) -> None:
    """Let ``steps`` start what needs only the exposures' final WCS (their pixel maps)."""
    for step in steps:
        module = _step_module(step)
        if not ctx.config[step].skip and hasattr(module, "prepare"):
            ctx.tasks.step = step
            module.prepare(ctx, data.exposures)


def _start_mosaic_page(client, token: str, port: int | None, progress: bool):
    """Start the run's mosaic page on ``port`` (None: none); a busy port only warns."""
    if port is None:
        return None
    from image3_dask.service.mosaic_page import start_mosaic_page

    try:
        page = start_mosaic_page(client, token, port=port)
    except (OSError, OverflowError) as exc:  # port in use, or not a port number
        log.warning(
            "Mosaic page not started: port %s: %s", port, getattr(exc, "strerror", None) or exc
        )
        return None
    (log.info if progress else log.debug)("Mosaic page: %s", page.url)
    return page


#: Keyword arguments of :meth:`Image3Pipeline.run` that :meth:`Image3Pipeline.call` passes on.
RUN_KEYWORDS = (
    "product_name",
    "scheduler",
    "n_workers",
    "memory_limit",
    "dashboard_address",
    "security",
    "client",
    "progress",
    "keep_work",
    "mosaic_page",
    "disable_crds_steppars",
    "storage_options",
)
#: stpipe's parameters of a pipeline, accepted by ``call`` at the values jwst uses.
STPIPE_KEYWORDS = (
    "in_memory",
    "skip",
    "suffix",
    "output_ext",
    "output_use_model",
    "output_use_index",
    "search_output_file",
    "pre_hooks",
    "post_hooks",
)


def check_runnable(config: PipelineConfig) -> None:
    """Refuse a configuration that cannot produce anything, before a cluster starts.

    Raises
    ------
    ConfigError
        When every step is skipped, resample is asked not to write the mosaic (it is the
        product every later use reads; image3-dask never holds it in memory), or parameters
        that must increase together do not (:meth:`PipelineConfig.check`).
    """
    config.check()
    if all(config[step].skip for step in STEP_ORDER):
        raise ConfigError(
            "every step is skipped (" + ", ".join(STEP_ORDER) + "): there is nothing to run"
        )
    if not config["resample"].skip and config["resample"].save_results is False:
        raise ConfigError(
            "steps.resample.save_results=false: image3-dask always writes the mosaic "
            "(<product>_i2d.fits); drop the option"
        )


def jwst_call_arguments(
    inputs,
    *,
    output_dir=None,
    steps=None,
    config_file=None,
    save_results=None,
    output_file=None,
    input_dir=None,
    logcfg=None,
    kwargs: dict[str, Any],
) -> tuple[PipelineConfig, dict[str, Any]]:
    """The configuration and :meth:`Image3Pipeline.run` arguments of a jwst-style ``call``.

    Precedence as jwst: defaults < ``config_file`` < ``steps`` and keywords.

    Raises
    ------
    ConfigError
        For an unknown keyword, step or parameter, or one image3-dask cannot honour.
    """
    from image3_dask.pipeline.jwst_params import (
        PipelineOptions,
        load_parameter_file,
        split_pipeline_parameters,
        step_parameters,
    )

    if logcfg is not None:
        raise ConfigError(
            "logcfg: stpipe's (deprecated) logging file is not read by image3-dask; configure "
            "the 'image3_dask' logger with Python's logging module, or pass configure_log=False"
        )
    unknown = sorted(set(kwargs) - set(RUN_KEYWORDS) - set(STPIPE_KEYWORDS))
    if unknown:
        raise ConfigError(
            f"Image3Pipeline.call: unknown keyword argument(s) {', '.join(unknown)}; "
            "pipeline parameters: output_dir, output_file, save_results, input_dir, steps, "
            "config_file, configure_log, "
            + ", ".join(STPIPE_KEYWORDS)
            + "; run options: "
            + ", ".join(RUN_KEYWORDS)
        )
    config = PipelineConfig()
    options = PipelineOptions()
    if config_file is not None:
        file_steps, file_options = load_parameter_file(config_file)
        config.update(file_steps, source=str(config_file))
        options.update(file_options)
    given = {k: kwargs.pop(k) for k in STPIPE_KEYWORDS if k in kwargs}
    given.update(
        output_dir=None if output_dir is None else os.fspath(output_dir),
        output_file=output_file,
        input_dir=None if input_dir is None else os.fspath(input_dir),
        save_results=save_results,
    )
    options.update(split_pipeline_parameters(given, ""))
    for step, values in (steps or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"steps.{step}: expected a dictionary of parameters")
        if step == "assign_mtwcs":
            step_parameters(step, values, "steps.assign_mtwcs")
        elif step in STEP_ORDER:
            config.update({step: step_parameters(step, values, f"steps.{step}")})
        else:
            config.update({step: values})  # names the valid steps
    if options.save_results is False:
        raise ConfigError(
            "save_results=False: image3-dask always writes its products in output_dir (the "
            "mosaic is not held in memory); pass save_results=True or leave it out"
        )
    if options.save_results:
        config.update({s: {"save_results": True} for s in _SAVED_BY_PIPELINE})
    check_runnable(config)
    if options.input_dir and isinstance(inputs, (str, os.PathLike)) and not is_url(inputs):
        if not Path(inputs).is_absolute():
            inputs = location(options.input_dir) / os.fspath(inputs)
    run_kwargs = dict(kwargs)
    run_kwargs["inputs"] = inputs
    run_kwargs["output_dir"] = options.output_dir or "."
    if options.product_name and run_kwargs.get("product_name") is None:
        run_kwargs["product_name"] = options.product_name
    return config, run_kwargs


#: Steps whose ``save_results`` jwst's calwebb_image3 sets from the pipeline's.
_SAVED_BY_PIPELINE = ("outlier_detection", "resample", "source_catalog")


class _call_logging:
    """jwst's ``configure_log``: INFO messages on standard error while the call runs."""

    def __init__(self, enabled: bool):
        self.handler = None
        self.enabled = enabled and not log.handlers and not logging.getLogger().handlers
        self.level = log.level

    def __enter__(self):
        if self.enabled:
            self.handler = logging.StreamHandler()
            self.handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
            )
            log.addHandler(self.handler)
            log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        if self.handler is not None:
            log.removeHandler(self.handler)
            log.setLevel(self.level)

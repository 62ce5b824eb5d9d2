"""The skymatch step as a graph: sky statistics per exposure in parallel, then one small solve.

1. On the client: each exposure's bounding polygon on the sky (``stepsize``) and its
   neighbours (the other exposure groups whose polygons touch it); WCS only, no pixels.
2. ``skymatch-stats <exposure>`` (one task per exposure): the worker reads only that
   exposure's SCI and DQ, selects the good pixels (``dqbits``, ``lower``/``upper``) and
   computes the sky statistic (``skystat``, ``nclip``, ``lsigma``, ``usigma``, ``binwidth``)
   in its overlap with each neighbouring group (for ``match``) and over the whole frame
   (for ``local``/``global``/``global+match``). When the exposures alone give few tasks per
   worker thread, an exposure's overlaps are split between several tasks
   (``<exposure> overlaps 2/3``, :func:`neighbour_parts`), merged in order by the solve.
3. ``skymatch-solve <product>`` (one small task): the official least-squares match of the
   overlap statistics and the ``local``/``global`` rules, with ``match_down``.

``skymethod='user'`` takes the levels from ``skylist`` (``<image name> <sky value>`` lines)
without any task.

How the result is represented (inputs are never modified)
---------------------------------------------------------
jwst records ``meta.background.level``; with ``subtract=False`` it sets
``meta.background.subtracted=False`` and resample subtracts the level from the pixels it
drizzles; with ``subtract=True`` it subtracts the level from the exposure's SCI array and sets
``subtracted=True``. Here the cal files are not rewritten, so in both cases the exposure gets
``background_level=<level>`` and ``background_subtracted=False``: the level is still to be
subtracted from the pixels of ``info.path``, and every consumer (``DrizzleInput`` in resample
and outlier detection, the outlier flagging's ``backg``) subtracts it, which gives the pixels
jwst drizzles and flags in both cases. What jwst writes in ``meta.background`` of the
products is kept in ``info.meta["background"]`` (``level``, ``subtracted`` = the ``subtract``
parameter, ``method``), with ``info.meta["background_method"]`` and
``info.cal_steps["skymatch"]`` (``COMPLETE``/``SKIPPED``). A step that writes an
exposure's pixels (the ``_crf`` files) with ``meta["background"]["subtracted"]`` true writes
``data - background_level`` and then marks that file ``background_subtracted=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from image3_dask.errors import ConfigError, InputError
from image3_dask.graph.handoff import StepData
from image3_dask.graph.plan import total_threads
from image3_dask.graph.tasks import TaskSpec
from image3_dask.io.catalog_files import file_root, read_skylist
from image3_dask.io.exposures import ExposureInfo, read_pixels

log = logging.getLogger("image3_dask")

__all__ = ["merge_stats", "neighbour_parts", "run", "solve_task", "split_neighbours", "stats_task"]

_STAT_PARAMS = ("skystat", "lower", "upper", "nclip", "lsigma", "usigma", "binwidth")
#: Statistics tasks per worker thread the split aims at: the phase then ends on a short task
#: (the last task of 8 per thread, an exposure's 15 overlaps in a 16-exposure dither, ran alone
#: for about a second).
TASKS_PER_THREAD = 24
#: Fewest overlaps in one task when an exposure's are split (each task reads the exposure).
MIN_OVERLAPS_PER_TASK = 3


def neighbour_parts(n_exposures: int, n_neighbours: int, threads: int) -> int:
    """How many tasks share one exposure's overlap statistics.

    One per exposure when the exposures alone give :data:`TASKS_PER_THREAD` tasks per worker
    thread; otherwise up to as many as that needs, each with at least
    :data:`MIN_OVERLAPS_PER_TASK` overlaps.
    """
    want = -(-TASKS_PER_THREAD * max(1, threads) // max(1, n_exposures))  # ceil
    return max(1, min(want, n_neighbours // MIN_OVERLAPS_PER_TASK))


def split_neighbours(neighbours: dict, parts: int) -> list[dict]:
    """``neighbours`` cut into ``parts`` consecutive pieces (their order kept), sizes within one."""
    items = list(neighbours.items())
    parts = max(1, min(parts, len(items)))
    bounds = [round(k * len(items) / parts) for k in range(parts + 1)]
    return [dict(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def merge_stats(parts: list) -> tuple:
    """One exposure's :func:`stats_task` results from its pieces, in their order."""
    from image3_dask.algorithms.skymatch import ExposureSkyStats

    merged = ExposureSkyStats(full=parts[0][0].full)
    for stats, _ in parts:
        merged.overlaps.update(stats.overlaps)
    return merged, parts[0][1]


def stats_task(path, wcs: Any, footprint: Any, neighbours: dict, params: dict, full_frame: bool):
    """Task: sky statistics of one exposure, over the frame and in each neighbour's overlap.

    Parameters
    ----------
    path : Path
        The exposure file (only its SCI and DQ are read).
    wcs : gwcs.WCS
        The exposure's WCS (as corrected by tweakreg).
    footprint : SphericalPolygon
        The exposure's bounding polygon.
    neighbours : dict
        Neighbouring group id -> footprints of that group's exposures.
    params : dict
        ``dqbits`` and the statistic options.
    full_frame : bool
        Also compute the whole-frame statistic.

    Returns
    -------
    stats : image3_dask.algorithms.skymatch.ExposureSkyStats
        Small: one value, pixel count and area per region.
    n_valid : int
        The exposure's pixels that are finite and not excluded by ``dqbits`` (0: the exposure
        adds nothing to the mosaic; said once by the step).
    """
    from image3_dask.algorithms.skymatch import exposure_sky_stats
    from image3_dask.algorithms.skystats import good_pixel_mask

    pix = read_pixels(path, ("data", "dq"))
    mask = good_pixel_mask(pix.data, pix.dq, params.get("dqbits"))
    n_valid = int(np.count_nonzero(mask))
    stats = exposure_sky_stats(
        pix.data,
        mask,
        wcs,
        neighbours,
        footprint=footprint,
        stepsize=params.get("stepsize"),
        full_frame=full_frame,
        **{k: params[k] for k in _STAT_PARAMS},
    )
    return stats, n_valid


def solve_task(
    stats: dict, units: dict, skymethod: str, match_down: bool
) -> tuple[dict, list[int]]:
    """Task: sky level of every exposure from the statistics (see ``solve_sky``).

    ``stats`` holds what :func:`stats_task` returns, or a list of those for an exposure whose
    overlaps were split between tasks; the exposures without a valid pixel are returned too
    (their indices).
    """
    from image3_dask.algorithms.skymatch import solve_sky

    stats = {k: merge_stats(v) if isinstance(v, list) else v for k, v in stats.items()}
    levels = solve_sky(
        {k: s for k, (s, _) in stats.items()}, units, skymethod=skymethod, match_down=match_down
    )
    return levels, sorted(k for k, (_, n_valid) in stats.items() if n_valid == 0)


def _check_previous(exposures: list[ExposureInfo], subtract: bool) -> None:
    """jwst refuses to re-run skymatch with a ``subtract`` different from the previous run's,
    and a file whose ``meta.background`` has a level but no ``subtracted``."""
    for e in exposures:
        given = e.meta.get("input_background") or {}
        if given.get("level") is not None and given.get("subtracted") is None:
            raise InputError(
                f"{e.path}: background level was set but the 'subtracted' property is "
                "undefined (None)"
            )
        if e.background_subtracted and e.background_level is None:
            raise InputError(
                f"{e.path}: background level was subtracted but the 'level' property is "
                "undefined (None)"
            )
        if e.background_subtracted and not subtract:
            raise ConfigError(
                f"skymatch.subtract=false is inconsistent with {e.path}, whose background was "
                "already subtracted (meta.background.subtracted=true)"
            )


def _apply(
    exposures: list[ExposureInfo],
    levels: dict[int, tuple[float, bool]],
    method: str,
    subtract: bool,
) -> list[ExposureInfo]:
    out = []
    for e in exposures:
        level, valid = levels[e.index]
        if not valid:
            out.append(e.evolve(cal_steps={**e.cal_steps, "skymatch": "SKIPPED"}))
            continue
        # level already subtracted from the file's pixels by an earlier run (subtract=true)
        done = float(e.background_level) if e.background_subtracted else 0.0
        meta = {
            **e.meta,
            "background": {"level": done + level, "subtracted": bool(subtract), "method": method},
            "background_method": method,
        }
        out.append(
            e.evolve(
                background_level=float(level),
                background_subtracted=False,
                meta=meta,
                cal_steps={**e.cal_steps, "skymatch": "COMPLETE"},
            )
        )
    return out


def _user_levels(cfg: dict, exposures: list[ExposureInfo]) -> dict[int, tuple[float, bool]]:
    skylist = cfg.get("skylist")
    if not skylist:
        raise ConfigError("skymatch.skymethod='user' needs a sky value file: set skymatch.skylist")
    values = read_skylist(skylist)
    if len(values) != len(exposures):
        raise InputError(
            f"{skylist}: number of entries in skylist ({len(values)}) does not match the "
            f"number of input images ({len(exposures)})"
        )
    out = {}
    for e in exposures:
        root = file_root(e.path.name)
        if root not in values and e.name in values:
            root = e.name
        if root not in values:
            raise InputError(f"{skylist}: image with stem '{root}' not found in the skylist")
        out[e.index] = (values[root], True)
    return out


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """:func:`submit` and wait for its tasks; return the exposures."""
    out = submit(ctx, StepData(exposures)).settled().exposures
    ctx.finish_pending()
    return out


def submit(ctx, data: StepData) -> StepData:
    """The skymatch step, submitted: the levels are recorded when the next step settles.

    The statistics and solve tasks run while the next step plans from the WCS (outlier
    detection's grid, tiles and pixel maps); :meth:`StepData.settled` then waits for the solve
    and returns the exposures with their levels (see :func:`match_sky`).
    """
    data = data.settled()
    return data.evolve(pending=_submit_sky(ctx, data.exposures))


def match_sky(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """The skymatch step: per-exposure statistics in parallel, one solve, levels in the infos.

    Parameters
    ----------
    ctx : RunContext
        The run (client, parameters).
    exposures : list of ExposureInfo
        The exposures, in association order.

    Returns
    -------
    list of ExposureInfo
        The exposures with ``background_level``, ``background_subtracted`` and
        ``meta['background']`` set (see the module docstring).
    """
    return _submit_sky(ctx, exposures)()


def _submit_sky(ctx, exposures: list[ExposureInfo]) -> Callable[[], list[ExposureInfo]]:
    """Submit the statistics and the solve; return what records the levels once solved."""
    from image3_dask.algorithms.skymatch import find_neighbours, sky_footprint

    cfg = dict(ctx.config["skymatch"])
    method = cfg["skymethod"]
    subtract = bool(cfg["subtract"])
    _check_previous(exposures, subtract)
    if method == "user":
        log.info(
            "Setting sky background of input images to user-provided values from `skylist` (%s).",
            cfg.get("skylist"),
        )
        user = _user_levels(cfg, exposures)
        return lambda: _record_levels(ctx, exposures, user, method, subtract)
    footprints = {e.index: sky_footprint(e.wcs, e.shape, cfg.get("stepsize")) for e in exposures}
    units = {e.index: e.group_id for e in exposures}
    neighbours = find_neighbours(footprints, units)
    params = {k: cfg.get(k) for k in (*_STAT_PARAMS, "dqbits", "stepsize")}
    full = method != "match"
    wcs = ctx.wcs_futures([e.wcs for e in exposures])
    threads = total_threads(ctx.client)
    tasks, owner = [], []
    for k, e in enumerate(exposures):
        mine = neighbours[e.index]
        pieces = split_neighbours(mine, neighbour_parts(len(exposures), len(mine), threads))
        for p, piece in enumerate(pieces):
            name = e.name if len(pieces) == 1 else f"{e.name} overlaps {p + 1}/{len(pieces)}"
            # the whole-frame statistic once, with the first piece
            args = (e.path, wcs[k], footprints[e.index], piece, params, full and p == 0)
            tasks.append(TaskSpec("skymatch-stats", name, stats_task, args))
            owner.append((e.index, len(pieces)))
    futures = ctx.submit(tasks)
    stats: dict = {}
    for (index, n), f in zip(owner, futures, strict=True):
        if n == 1:
            stats[index] = f
        else:
            stats.setdefault(index, []).append(f)
    spec = TaskSpec(
        "skymatch-solve",
        ctx.product_name,
        solve_task,
        (stats, units, method, bool(cfg["match_down"])),
    )
    (solve,) = ctx.submit([spec])

    def finish() -> list[ExposureInfo]:
        ((solved, empty),) = ctx.wait([solve], "skymatch: statistics and solve")
        levels = {i: (lv.level, lv.valid) for i, lv in solved.items()}
        return _record_levels(ctx, exposures, levels, method, subtract, frozenset(empty))

    return finish


def _record_levels(
    ctx,
    exposures: list[ExposureInfo],
    levels: dict,
    method: str,
    subtract: bool,
    empty: frozenset[int] = frozenset(),
) -> list[ExposureInfo]:
    """The exposures with their levels (:func:`_apply`), logged and reported.

    ``empty``: indices of exposures without a valid pixel, named once as such.
    """
    out = _apply(exposures, levels, method, subtract)
    report = {
        "skymethod": method,
        "subtract": subtract,
        "exposures": {
            e.name: {
                "level": levels[e.index][0] if levels[e.index][1] else None,
                "status": e.cal_steps["skymatch"],
            }
            for e in out
        },
    }
    for e in out:
        if e.index in empty:
            log.warning(
                "%s has no valid pixels (every SCI value is NaN or infinite, or flagged by "
                "dqbits): its sky is left unchanged and it adds nothing to the mosaic",
                e.name,
            )
        elif e.cal_steps["skymatch"] == "SKIPPED":
            log.warning("skymatch: unable to compute the sky of %s; it is left unchanged", e.name)
        else:
            log.info("skymatch: %s sky = %.6g (%s)", e.name, e.background_level, method)
    ctx.products["skymatch"] = report
    return out

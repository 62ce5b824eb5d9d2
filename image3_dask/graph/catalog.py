"""The source_catalog step as a graph: single-frame or tiled detection and measurement.

Two modes give the same catalog and segmentation map (the tiled flow reproduces the
single-frame computation exactly, see :mod:`image3_dask.algorithms.catalog.tiled`):

* **single frame** (``tiled='never'``, or ``'auto'`` on one worker thread when the mosaic fits
  in it): one task (``catalog-frame``) reads SCI/ERR/WHT of the mosaic and runs
  :func:`~image3_dask.algorithms.catalog.make_source_catalog`.
* **tiled** (``tiled='always'``, or ``'auto'`` when the mosaic does not fit in a worker or the
  cluster has several worker threads, see :func:`choose_catalog_mode`): the mosaic is read from its
  Zarr store, a region per task (tasks in :mod:`image3_dask.graph.catalog_tasks`), each tile
  starting as soon as the resample tiles under it are written:

  1. ``catalog-background`` per tile: background-mesh statistics of the boxes of the tile
     (tiles are multiples of the ``bkg_boxsize`` box); the small mesh is finished on the client.
  2. ``catalog-detect`` per tile: detection and labelling of the tile core with a halo; the
     local labels go to a work Zarr plane, small summaries come back.
  3. The labels are joined across tile borders on the client (small arrays).
  4. ``catalog-measure`` per source group (the segments whose first pixel lies in a tile, and
     each segment larger than a tile on its own): deblending and measurements on the group's
     cutout. Source ids are then assigned on the client (stable: raster order of the
     segments, then deblended children, as photutils numbers them).
  5. ``catalog-segm`` per tile: the final ids painted into the tile of a Zarr plane.

In both modes the segmentation map is a plane ``segm`` of the mosaic store, streamed to
``<product>_segm.fits`` by a task while the client writes the catalog to ``<product>_cat.ecsv``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import QTable

from image3_dask.algorithms.catalog import (
    CatalogParams,
    assign_source_ids,
    effective_box_size,
    finalize_catalog,
    finalize_mesh,
    group_window,
    join_tile_labels,
    measurement_margin,
    segment_weights,
    split_group,
)
from image3_dask.algorithms.tiles import Tile, plan_tiles
from image3_dask.errors import InputError, StepNotAvailableError
from image3_dask.graph.catalog_refdata import (
    ReferenceDataMismatch,
    record_ref_files,
    ref_file_meta,
    resolve_refdata,
)
from image3_dask.graph.catalog_tasks import (
    MosaicInfo,
    RefData,
    background_task,
    detect_task,
    frame_task,
    measure_task,
    segm_task,
    write_segm_task,
)
from image3_dask.graph.handoff import Mosaic, StepData
from image3_dask.graph.plan import total_threads, worker_memory
from image3_dask.graph.tasks import TaskSpec
from image3_dask.io.catalog_products import (
    SEGM_PLANE,
    ensure_plane,
    read_i2d_meta,
    write_catalog,
)
from image3_dask.io.crds_refs import resolve_references
from image3_dask.io.mosaic_store import MosaicStore
from image3_dask.io.storage import location

log = logging.getLogger("image3_dask")

__all__ = [
    "BYTES_PER_PIXEL",
    "MosaicInfo",
    "RefData",
    "ReferenceDataMismatch",
    "catalog_params",
    "catalog_tile_shape",
    "choose_catalog_mode",
    "ref_file_meta",
    "resolve_refdata",
    "run",
    "submit",
]

#: Peak memory of the single-frame catalog per mosaic pixel (SCI/ERR/WHT inputs, Jy copies,
#: background and RMS, convolved image, threshold, labels, segmentation and photutils'
#: temporaries; measured ~86 B/pixel, rounded up).
BYTES_PER_PIXEL = 120

#: Fraction of a worker's memory limit a catalog task may plan to use.
MEMORY_FRACTION = 0.5


# --------------------------------------------------------------------------- parameters
def catalog_params(cfg: dict) -> CatalogParams:
    """The algorithm parameters from the step's (jwst-named) parameters.

    Parameters
    ----------
    cfg : dict
        ``ctx.config["source_catalog"]``.

    Returns
    -------
    CatalogParams
        Segmentation-catalog parameters.
    """
    return CatalogParams(
        snr_threshold=float(cfg["snr_threshold"]),
        bkg_boxsize=int(cfg["bkg_boxsize"]),
        kernel_fwhm=float(cfg["kernel_fwhm"]),
        npixels=int(cfg["npixels"]),
        connectivity=int(cfg["connectivity"]),
        nlevels=int(cfg["nlevels"]),
        contrast=float(cfg["contrast"]),
        multithresh_mode=str(cfg["multithresh_mode"]),
        deblend=bool(cfg["deblend"]),
        localbkg_width=int(cfg["localbkg_width"]),
        apermask_method=str(cfg["apermask_method"]),
        ci1_star_threshold=float(cfg["ci1_star_threshold"]),
        ci2_star_threshold=float(cfg["ci2_star_threshold"]),
    )


def _extra_meta(cfg: dict) -> dict[str, Any]:
    kron = cfg.get("kron_params")
    return {
        "local_bkg_width": int(cfg["localbkg_width"]),
        "aperture_mask_method": str(cfg["apermask_method"]),
        "kron_params": tuple(kron) if kron else (2.5, 1.4, 0.0),
    }


def catalog_tile_shape(
    shape: tuple[int, int],
    box: tuple[int, int],
    chunks: tuple[int, int],
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """Tile shape of the tiled catalog: the store's chunks rounded up to whole mesh boxes.

    Tiles must be made of whole background boxes (so that every box is computed by one
    task) and should be read chunk by chunk from the store.

    Parameters
    ----------
    shape : tuple of int
        Mosaic shape.
    box : tuple of int
        Effective background box size.
    chunks : tuple of int
        Chunk shape of the mosaic store (the resample tiles).
    max_pixels : int, optional
        Memory cap: tiles are shrunk (by whole boxes, down to one box) to at most this many
        pixels.

    Returns
    -------
    tuple of int
        ``(ty, tx)``, at most the mosaic shape rounded up to whole boxes.
    """
    out = []
    for n, b, c in zip(shape, box, chunks, strict=True):
        t = max(b, int(math.ceil(c / b)) * b)
        out.append(min(t, int(math.ceil(n / b)) * b))
    ty, tx = out
    by, bx = box
    while max_pixels and ty * tx > max_pixels and (ty > by or tx > bx):
        if ty >= tx and ty > by:
            ty -= by
        elif tx > bx:
            tx -= bx
        else:
            ty -= by
    return ty, tx


def choose_catalog_mode(
    tiled: str,
    shape: tuple[int, int],
    memory_limit: int | None,
    has_store: bool,
    threads: int = 1,
    box: tuple[int, int] | None = None,
) -> tuple[bool, str]:
    """Single-frame or tiled, from ``tiled``, the memory estimate and the cluster's size.

    With ``tiled='auto'`` the catalog is tiled when the mosaic does not fit in one worker, and
    also when the cluster has more than one worker thread and the mosaic holds more than one
    background box: the tiled flow gives the same catalog and runs on every worker, where the
    single-frame task would keep one worker busy while the others wait.

    Parameters
    ----------
    tiled : {"auto", "always", "never"}
        The step parameter.
    shape : tuple of int
        Mosaic shape.
    memory_limit : int or None
        Smallest worker memory per thread (bytes), None when unlimited/unknown.
    has_store : bool
        Whether the mosaic's Zarr store is available (tiled mode reads regions from it).
    threads : int
        Worker threads of the cluster.
    box : tuple of int, optional
        Effective background box size; the mosaic spans one box when not given.

    Returns
    -------
    tiled : bool
        Whether to run the tiled flow.
    reason : str
        Why (logged).
    """
    need = shape[0] * shape[1] * BYTES_PER_PIXEL
    budget = None if not memory_limit else memory_limit * MEMORY_FRACTION
    est = f"~{need / 1e9:.2f} GB" + (f" of a {budget / 1e9:.2f} GB budget" if budget else "")
    if tiled == "never":
        if budget and need > budget:
            log.warning("source_catalog: tiled=never but the mosaic needs %s per worker", est)
        return False, f"tiled=never ({est})"
    if tiled == "always":
        if not has_store:
            raise InputError(
                "source_catalog: tiled=always needs the mosaic's Zarr store "
                "(<product>_i2d.zarr, written by the resample step)"
            )
        return True, "tiled=always"
    if budget and need > budget:
        if not has_store:
            log.warning(
                "source_catalog: the mosaic needs %s but has no Zarr store; single frame", est
            )
            return False, f"auto, no Zarr store ({est})"
        return True, f"auto: the mosaic does not fit in one worker ({est})"
    n_boxes = 1 if box is None else math.ceil(shape[0] / box[0]) * math.ceil(shape[1] / box[1])
    if has_store and threads > 1 and n_boxes > 1:
        return True, f"auto: {n_boxes} background boxes for {threads} worker threads"
    return False, f"auto: the mosaic fits in one worker ({est})"


# --------------------------------------------------------------------------- flows
def _run_tiled(
    ctx,
    info: MosaicInfo,
    params: CatalogParams,
    refdata: RefData,
    extra_meta,
    segm_store: Path,
    mosaic: Mosaic | None,
) -> tuple[QTable, tuple[int, int]]:
    shape = info.shape
    box = effective_box_size(params.bkg_boxsize, shape)
    chunks = MosaicStore(info.store).read_chunks("sci")[-2:]
    limit = worker_memory(ctx.client)
    max_pixels = int(limit * MEMORY_FRACTION / BYTES_PER_PIXEL / 4) if limit else None
    tshape = catalog_tile_shape(shape, box, chunks, max_pixels)
    tiles = plan_tiles(shape, tshape)
    nty = len({t.iy for t in tiles})
    ntx = len({t.ix for t in tiles})
    log.info(
        "source_catalog: tiled, %d tiles of %dx%d (background box %dx%d)",
        len(tiles),
        tshape[0],
        tshape[1],
        box[0],
        box[1],
    )
    label = "source_catalog"
    ctx.tasks.tell("add_tiles", label, tiles, shape)
    # 1. background mesh
    # each tile starts as soon as the resample tiles under it are written
    stats = ctx.run_now(
        [
            TaskSpec(
                "catalog-background",
                t.name,
                background_task,
                (info, t, box),
                after=mosaic.futures_over(t.y0, t.y1, t.x0, t.x1) if mosaic else (),
            )
            for t in tiles
        ],
        f"{label}: background",
    )
    if sum(s[2] for s in stats) == 0:
        return QTable(), tshape
    bkg = np.block([[stats[i * ntx + j][0] for j in range(ntx)] for i in range(nty)])
    rms = np.block([[stats[i * ntx + j][1] for j in range(ntx)] for i in range(nty)])
    try:
        mesh = finalize_mesh(bkg, rms, box, shape)
    except ValueError:
        raise InputError(
            f"{info.i2d}: every background box of {box[0]}x{box[1]} pixels has too few covered "
            "pixels; the official fallback (one box of the whole mosaic) needs the mosaic in "
            "one task: use source_catalog.tiled=never or a smaller bkg_boxsize"
        ) from None
    # 2. detection per tile
    labels_path = ctx.work_dir / "catalog_labels.zarr"
    ensure_plane(labels_path, "labels", shape, tshape, dtype="int32")
    dets = ctx.run_now(
        [
            TaskSpec("catalog-detect", t.name, detect_task, (info, t, mesh, params, labels_path))
            for t in tiles
        ],
        f"{label}: detect",
    )
    # 3. join across tile borders
    parents, luts = join_tile_labels(dets, n_pixels=params.npixels, shape=shape)
    log.info("source_catalog: %d segments after joining tile labels", len(parents))
    if len(parents) == 0:
        return QTable(), tshape
    # 4. measure per group
    margin = measurement_margin(params.kernel_fwhm, refdata.aperture_params)
    groups = _groups(
        parents, tiles, tshape, ntx, MEASURE_TASKS_PER_THREAD * total_threads(ctx.client)
    )
    log.info("source_catalog: %d measure tasks", len(groups))
    tasks = []
    for name, rows in groups:
        win = group_window(rows, margin, shape)
        tasks.append(
            TaskSpec(
                "catalog-measure",
                name,
                measure_task,
                (info, rows, win, mesh, refdata.aperture_params, params),
            )
        )
    results = ctx.run_now(tasks, f"{label}: measure")
    tables = [r.table for r in results]
    idmap = assign_source_ids(tables)
    catalog = finalize_catalog(
        tables,
        wcs=info.wcs,
        aperture_params=refdata.aperture_params,
        abvega_offset=refdata.abvega_offset,
        ci_star_thresholds=(params.ci1_star_threshold, params.ci2_star_threshold),
        reference_pixel=info.reference_pixel,
        shape=shape,
        extra_meta=extra_meta,
    )
    # 5. segmentation map tile by tile
    patches = [p for r in results for p in r.patches]
    ensure_plane(segm_store, SEGM_PLANE, shape, tshape)
    tasks = []
    for t, det, lut in zip(tiles, dets, luts, strict=True):
        mine = [p for p in patches if _overlaps(p, t)]
        tasks.append(
            TaskSpec(
                "catalog-segm",
                t.name,
                segm_task,
                (det, t, lut, mine, idmap, labels_path, segm_store),
            )
        )
    ctx.run_now(tasks, f"{label}: segm")
    return catalog, tshape


def _overlaps(patch, tile: Tile) -> bool:
    _, (py0, px0), children = patch
    ny, nx = children.shape
    return py0 < tile.y1 and py0 + ny > tile.y0 and px0 < tile.x1 and px0 + nx > tile.x0


#: Measurement tasks wanted per worker thread. A tile's segments are cut into pieces of about
#: equal weight (:func:`split_group`) when the tiles alone give fewer, so that the last
#: measurement does not run alone (on the 16-exposure MIRI dither's 4 tiles, one took 1.4 s
#: and the others 0.2 s).
MEASURE_TASKS_PER_THREAD = 4


def _groups(
    parents: QTable, tiles: list[Tile], tshape: tuple[int, int], ntx: int, want: int = 1
) -> list[tuple[str, QTable]]:
    """Segments by the tile of their first pixel; a segment larger than a tile on its own.

    A tile's segments are cut into consecutive pieces of about ``1 / want`` of the total
    weight (:func:`segment_weights`), so that there are about ``want`` groups.
    """
    ty, tx = tshape
    owner = np.asarray(parents["seed_y"] // ty * ntx + parents["seed_x"] // tx)
    span_y = np.asarray(parents["bbox_ymax"] - parents["bbox_ymin"] + 1)
    span_x = np.asarray(parents["bbox_xmax"] - parents["bbox_xmin"] + 1)
    big = (span_y > ty) | (span_x > tx)
    weight = segment_weights(parents)
    share = weight[~big].sum() / max(1, want)
    out = []
    for k in np.unique(owner):
        sel = (owner == k) & ~big
        if sel.any():
            rows = parents[sel]
            pieces = split_group(rows, round(weight[sel].sum() / share) if share > 0 else 1)
            for j, piece in enumerate(pieces):
                name = (
                    tiles[k].name if len(pieces) == 1 else f"{tiles[k].name} {j + 1}/{len(pieces)}"
                )
                out.append((name, piece))
        for i in np.flatnonzero((owner == k) & big):
            out.append((f"{tiles[k].name}-s{int(parents['parent_id'][i])}", parents[i : i + 1]))
    return out


def _existing_mosaic(ctx) -> tuple[Path | None, Path | None]:
    """The i2d file (and its Zarr store) of an earlier run, when resample did not run now."""
    candidate = ctx.product_path("i2d")
    if not candidate.is_file():
        return None, None
    log.info("source_catalog: using the existing mosaic %s (resample skipped)", candidate)
    store = candidate.with_suffix(".zarr")
    return candidate, (store if (store / "sci" / "zarr.json").is_file() else None)


def _store_usable(store: Path | None, shape: tuple[int, int]) -> bool:
    if store is None:
        return False
    s = MosaicStore(store)
    return all(s.has(p) for p in ("sci", "err", "wht")) and s.shape("sci") == tuple(shape)


def submit(ctx, data: StepData) -> StepData:
    """The source_catalog step: ``<product>_cat.ecsv`` and ``<product>_segm.fits``.

    The catalog starts on the resample step's tiles as they are written
    (:attr:`StepData.mosaic`); the client waits where it must join the tiles' results
    (background mesh, labels across tile borders, source ids).

    Parameters
    ----------
    ctx : RunContext
        The run (client, parameters, products of the earlier steps).
    data : StepData
        Passed through unchanged; its ``mosaic`` is measured (else an existing i2d file).

    Returns
    -------
    StepData
        ``data``.
    """
    cfg = dict(ctx.config["source_catalog"])
    if cfg["starfinder"] != "segmentation":
        raise StepNotAvailableError(
            f"source_catalog.starfinder={cfg['starfinder']!r} is not available; "
            "only 'segmentation' (the default) is"
        )
    data = data.settled()
    mosaic = data.mosaic
    if mosaic is not None:
        i2d, store = mosaic.i2d, mosaic.store
        (meta,) = ctx.wait([mosaic.model], "source_catalog: mosaic metadata")
        shape = tuple(mosaic.shape)
    else:
        i2d, store = _existing_mosaic(ctx)
        if i2d is None:
            log.warning(
                "source_catalog: no mosaic (resample skipped, no %s); skipped",
                ctx.product_path("i2d").name,
            )
            return data
        meta, shape = read_i2d_meta(i2d)
    if meta.meta.bunit_data not in (None, "MJy/sr") or meta.meta.bunit_err not in (None, "MJy/sr"):
        raise InputError(f"{i2d}: data and err must be in MJy/sr, not {meta.meta.bunit_data}")
    area = meta.meta.photometry.pixelarea_steradians
    if not area:
        raise InputError(f"{i2d}: meta.photometry.pixelarea_steradians is missing")
    crpix = (meta.meta.wcsinfo.crpix1, meta.meta.wcsinfo.crpix2)
    ref_pix = (
        (float(crpix[0]) - 1.0, float(crpix[1]) - 1.0)
        if None not in crpix
        else ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    )
    if mosaic is None:
        store = store if _store_usable(store, shape) else None
    info = MosaicInfo(location(i2d), store, shape, float(area), ref_pix, meta.meta.wcs)
    params = catalog_params(cfg)
    references = ctx.references
    if references is None:  # the step run on its own: resolved here, once
        members = [e.source_path or e.path for e in data.exposures]
        references = resolve_references(
            members, ctx.config, steps=["source_catalog"], apply_pars=False
        )
        ctx.references = references
    for msg in references.lookup_failed.values():
        log.warning("%s Source catalog will not be created.", msg)
        return data
    try:
        refdata = resolve_refdata(cfg, meta, references)
    except ReferenceDataMismatch as exc:  # jwst: a warning and no catalog, the run goes on
        log.warning("%s Source catalog will not be created.", exc)
        return data
    log.info("source_catalog: %s", refdata.source)
    if refdata.uncorrected:
        ctx.products["photometry"] = "UNCORRECTED: " + "; ".join(refdata.uncorrected)
    log.info(
        "source_catalog: snr_threshold=%g npixels=%d kernel_fwhm=%g bkg_boxsize=%d deblend=%s",
        params.snr_threshold,
        params.npixels,
        params.kernel_fwhm,
        params.bkg_boxsize,
        params.deblend,
    )
    tiled, reason = choose_catalog_mode(
        cfg["tiled"],
        shape,
        worker_memory(ctx.client),
        store is not None,
        threads=total_threads(ctx.client),
        box=effective_box_size(params.bkg_boxsize, shape),
    )
    log.info("source_catalog: %s mode (%s)", "tiled" if tiled else "single-frame", reason)
    segm_store = store if store is not None else ctx.work_dir / "catalog_segm.zarr"
    extra_meta = {**_extra_meta(cfg), "ref_file": ref_file_meta(references)}
    if tiled:
        catalog, _ = _run_tiled(ctx, info, params, refdata, extra_meta, segm_store, mosaic)
    else:
        chunks = (
            tuple(MosaicStore(store).read_chunks("sci")[-2:])
            if store
            else (min(shape[0], 1024), shape[1])
        )
        after = list(mosaic.tiles.values()) if mosaic is not None else []
        (catalog,) = ctx.run_now(
            [
                TaskSpec(
                    "catalog-frame",
                    ctx.product_name,
                    frame_task,
                    (info, params, refdata, extra_meta, segm_store, chunks),
                    after=after,
                )
            ],
            "source_catalog: frame",
        )
    ctx.catalog = catalog
    if len(catalog) == 0:
        log.warning("No sources found in the image. Catalog will be empty.")
        return data
    log.info("source_catalog: %d sources", len(catalog))
    if not cfg.get("save_results", True):
        return data
    cat_path = ctx.product_path("cat", "ecsv")
    segm_path = ctx.product_path("segm")
    meta.meta.source_catalog = cat_path.name  # as jwst sets it before copying the metadata
    record_ref_files(meta, references)
    ctx.submit(
        [
            TaskSpec(
                "catalog-segm-fits",
                ctx.product_name,
                write_segm_task,
                (meta, segm_store, segm_path),
                priority=1,
            )
        ]
    )
    write_catalog(catalog, cat_path)  # while a worker writes the segmentation map
    log.info("Wrote source catalog: %s", cat_path)
    ctx.products["cat"] = cat_path
    ctx.products["segm"] = segm_path
    if segm_store == store:
        ctx.products["segm_zarr"] = store  # plane "segm" of the mosaic store
    return data


def run(ctx, exposures: list) -> list:
    """:func:`submit` and wait for the run's tasks; returns ``exposures``."""
    submit(ctx, StepData(exposures))
    ctx.finish_pending()
    return exposures

"""Tiled source catalog: detection per tile, label join, measurement per source group.

Flow (each numbered step is a pure function; a graph layer can run the
per-tile and per-group steps in parallel):

0. Background: :func:`.background.mesh_statistics` per tile (tiles aligned to
   the ``bkg_boxsize`` grid), :func:`.background.finalize_mesh` once on the
   small global mesh.
1. :func:`detect_tile` on a tile core plus a halo of at least
   :func:`detection_halo` pixels: background from the global mesh,
   convolution, threshold, connected-component labels on the core grown by one
   pixel.  Returns the core labels and small per-label summaries.
2. :func:`join_tile_labels` (small, global): labels that share a pixel in the
   one-pixel ring around a core are the same object (like dask-image's
   ``ndmeasure.label`` face join); connected components of that graph are the
   segments.  The ``npixels`` cut is applied to the joined pixel counts and the
   segments are numbered by the raster position of their first pixel -- the
   numbering of ``scipy.ndimage.label`` on the whole mosaic.
3. :func:`measure_group` on a window covering a group of segments plus
   :func:`.measure.measurement_margin`: the labelling is recomputed in the
   window (a segment is the component containing its first pixel), each
   segment is deblended on its own bounding box and measured.
4. :func:`assign_source_ids` (small, global): official ids (segments kept
   whole first, in raster order, then the deblended children in parent order,
   as photutils numbers them) and :func:`finalize_catalog` builds the table.
5. :func:`segmentation_tile` paints the final ids into each tile core.

Equivalence with the single-frame catalog: box statistics, the mesh filter
and the bicubic mesh interpolation are computed on the global grid, so the
background and threshold of every pixel are identical; convolution is exact
at ``kernel_half_size`` pixels from a window edge; labels join exactly over
the ring; deblending and all measurements only read a segment's bounding box
or a disc of the largest aperture/annulus radius around its centroid.  The
results therefore match the single-frame catalog to rounding (last-bit
differences in centroids from adding the window origin).  What differs: the
official fallback to one whole-image background box (when no mesh box has
enough pixels, e.g. mosaics smaller than ``bkg_boxsize`` -- which fit on one
worker anyway) needs the whole image on one task.  A segment whose bounding
box plus margin does not fit in one worker cannot be measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import QTable
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .background import BackgroundMesh, background_from_mesh
from .detection import (
    convolve_detection,
    deblend_segment,
    kernel_half_size,
    label_above_threshold,
)
from .measure import finalize_catalog, measure_sources

__all__ = [
    "CatalogParams",
    "GroupResult",
    "IdMap",
    "TileDetection",
    "assign_source_ids",
    "coverage_mask",
    "detect_tile",
    "detection_halo",
    "finalize_catalog",
    "group_window",
    "join_tile_labels",
    "measure_group",
    "segment_weights",
    "segmentation_tile",
    "split_group",
    "to_jy",
]


@dataclass(frozen=True)
class CatalogParams:
    """Parameters of the segmentation source catalog (jwst 3.0 names and defaults).

    Attributes
    ----------
    snr_threshold, bkg_boxsize, kernel_fwhm, npixels, connectivity, nlevels,
    contrast, multithresh_mode, deblend, localbkg_width, apermask_method,
    ci1_star_threshold, ci2_star_threshold
        As in ``SourceCatalogStep.spec``.
    """

    snr_threshold: float = 3.0
    bkg_boxsize: int = 1000
    kernel_fwhm: float = 2.0
    npixels: int = 25
    connectivity: int = 8
    nlevels: int = 32
    contrast: float = 0.001
    multithresh_mode: str = "exponential"
    deblend: bool = True
    localbkg_width: int = 0
    apermask_method: str = "correct"
    ci1_star_threshold: float = 2.0
    ci2_star_threshold: float = 1.8


def to_jy(data: np.ndarray, pixel_area_sr: float) -> u.Quantity:
    """Convert MJy/sr to Jy per pixel exactly as the official step (dtype kept).

    Parameters
    ----------
    data : numpy.ndarray
        Surface brightness in MJy/sr.
    pixel_area_sr : float
        Pixel area in steradians (``meta.photometry.pixelarea_steradians``).

    Returns
    -------
    astropy.units.Quantity
        Values in Jy.
    """
    arr = np.array(data, copy=True)
    arr *= 1.0e6 * pixel_area_sr
    return arr << u.Jy


def coverage_mask(err: np.ndarray, wht: np.ndarray | None = None) -> np.ndarray:
    """Pixels without coverage: ``isnan(err) | (wht == 0)`` as in the official step.

    Parameters
    ----------
    err : numpy.ndarray
        Total error array.
    wht : numpy.ndarray, optional
        Drizzle weight map.

    Returns
    -------
    numpy.ndarray
        Boolean mask.
    """
    mask = np.isnan(np.asarray(err))
    if wht is not None:
        mask |= np.asarray(wht) == 0
    return mask


def detection_halo(kernel_fwhm: float) -> int:
    """Minimum halo (pixels) around a tile core for :func:`detect_tile`.

    Parameters
    ----------
    kernel_fwhm : float
        Detection kernel FWHM.

    Returns
    -------
    int
        ``kernel_half_size + 1``.
    """
    return kernel_half_size(kernel_fwhm) + 1


@dataclass
class TileDetection:
    """Result of :func:`detect_tile` (everything but ``labels`` is small).

    Attributes
    ----------
    core : tuple of int
        Global ``(y0, y1, x0, x1)`` of the core.
    labels : numpy.ndarray
        int32 local labels of the core pixels.
    npix : numpy.ndarray
        Core pixel count per local label (index ``label - 1``).
    bbox : numpy.ndarray
        ``(n, 4)`` global ``ymin, ymax, xmin, xmax`` (inclusive) in the core.
    first : numpy.ndarray
        Global raster index ``y * nx + x`` of the first core pixel per label.
    ring_index, ring_label : numpy.ndarray
        Global raster index and local label of labelled ring pixels (the pixels
        just outside the core, labelled together with the core).
    edge_index, edge_label : numpy.ndarray
        Same for the labelled pixels on the border of the core.
    """

    core: tuple[int, int, int, int]
    labels: np.ndarray
    npix: np.ndarray
    bbox: np.ndarray
    first: np.ndarray
    ring_index: np.ndarray
    ring_label: np.ndarray
    edge_index: np.ndarray
    edge_label: np.ndarray


def _window_arrays(
    data: u.Quantity | np.ndarray,
    cover: np.ndarray,
    mesh: BackgroundMesh,
    window: tuple[slice, slice],
    params: CatalogParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    values = data.value if isinstance(data, u.Quantity) else np.asarray(data)
    bkg, rms = background_from_mesh(mesh, window, coverage_mask=cover, dtype=values.dtype)
    sub = values - bkg
    conv = convolve_detection(sub, params.kernel_fwhm, mask=cover)
    threshold = params.snr_threshold * rms
    return values, bkg, conv, threshold


def _norm_window(window: tuple[slice, slice], shape: tuple[int, int]) -> tuple[slice, slice]:
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(window, shape, strict=True))


def detect_tile(
    data: u.Quantity | np.ndarray,
    cover: np.ndarray,
    mesh: BackgroundMesh,
    *,
    window: tuple[slice, slice],
    core: tuple[slice, slice],
    params: CatalogParams = CatalogParams(),
) -> TileDetection:
    """Detect (label) above-threshold pixels of one tile.

    Parameters
    ----------
    data : astropy.units.Quantity or numpy.ndarray
        Mosaic pixels (Jy, see :func:`to_jy`) of ``window``.
    cover : numpy.ndarray
        Coverage mask of ``window``.
    mesh : BackgroundMesh
        Global background mesh.
    window : tuple of slice
        Global slices of ``data``: the core plus a halo of at least
        :func:`detection_halo` pixels (clipped at the mosaic edges).
    core : tuple of slice
        Global slices of the tile core (tiles' cores partition the mosaic).
    params : CatalogParams, optional
        Step parameters.

    Returns
    -------
    TileDetection
        Core labels and summaries for :func:`join_tile_labels`.
    """
    ny, nx = mesh.shape
    window = _norm_window(window, mesh.shape)
    core = _norm_window(core, mesh.shape)
    wy0, wx0 = window[0].start, window[1].start
    cy0, cy1, cx0, cx1 = core[0].start, core[0].stop, core[1].start, core[1].stop
    ry0, ry1 = max(cy0 - 1, 0), min(cy1 + 1, ny)
    rx0, rx1 = max(cx0 - 1, 0), min(cx1 + 1, nx)
    halo = detection_halo(params.kernel_fwhm)
    if (
        wy0 > max(cy0 - halo, 0)
        or wx0 > max(cx0 - halo, 0)
        or window[0].stop < min(cy1 + halo, ny)
        or window[1].stop < min(cx1 + halo, nx)
    ):
        raise ValueError(f"window must extend at least {halo} pixels beyond the core")
    _, _, conv, thr = _window_arrays(data, cover, mesh, window, params)
    reg = (slice(ry0 - wy0, ry1 - wy0), slice(rx0 - wx0, rx1 - wx0))
    labels, nlab = label_above_threshold(conv[reg], thr[reg], cover[reg], params.connectivity)
    yy, xx = np.mgrid[ry0:ry1, rx0:rx1]
    lin = yy.astype(np.int64) * nx + xx
    in_core = (yy >= cy0) & (yy < cy1) & (xx >= cx0) & (xx < cx1)
    csl = (slice(cy0 - ry0, cy1 - ry0), slice(cx0 - rx0, cx1 - rx0))
    core_labels = labels[csl]
    index = np.arange(1, nlab + 1)
    npix = np.bincount(core_labels.ravel(), minlength=nlab + 1)[1:]
    bbox = np.zeros((nlab, 4), dtype=np.int64)
    first = np.full(nlab, np.iinfo(np.int64).max, dtype=np.int64)
    if nlab:
        for k, sl in enumerate(ndimage.find_objects(core_labels, max_label=nlab)):
            if sl is not None:
                bbox[k] = (
                    sl[0].start + cy0,
                    sl[0].stop - 1 + cy0,
                    sl[1].start + cx0,
                    sl[1].stop - 1 + cx0,
                )
        present = npix > 0
        first[present] = ndimage.minimum(lin[csl], core_labels, index[present]).astype(np.int64)
    ring = ~in_core & (labels > 0)
    border = np.zeros_like(in_core)
    border[csl] = True
    border[csl][1:-1, 1:-1] = False
    edge = border & (labels > 0)
    return TileDetection(
        core=(cy0, cy1, cx0, cx1),
        labels=np.ascontiguousarray(core_labels),
        npix=npix,
        bbox=bbox,
        first=first,
        ring_index=lin[ring],
        ring_label=labels[ring],
        edge_index=lin[edge],
        edge_label=labels[edge],
    )


def join_tile_labels(
    tiles: list[TileDetection], *, n_pixels: int, shape: tuple[int, int]
) -> tuple[QTable, list[np.ndarray]]:
    """Join tile labels into mosaic segments (union over shared ring pixels).

    Parameters
    ----------
    tiles : list of TileDetection
        One per tile; cores partition the mosaic.
    n_pixels : int
        Minimum segment size (``npixels``), applied to the joined segments.
    shape : tuple of int
        Mosaic shape.

    Returns
    -------
    parents : astropy.table.QTable
        One row per segment, numbered ``parent_id = 1..P`` in raster order of
        the first pixel: ``parent_id``, ``seed_y``, ``seed_x`` (first pixel),
        ``bbox_ymin``, ``bbox_ymax``, ``bbox_xmin``, ``bbox_xmax``, ``npix``.
    luts : list of numpy.ndarray
        Per tile, ``lut[local_label] -> parent_id`` (0 = dropped/background).
    """
    counts = [len(t.npix) for t in tiles]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnodes = int(offsets[-1])
    edge_idx = np.concatenate([t.edge_index for t in tiles] + [np.zeros(0, np.int64)])
    edge_node = np.concatenate(
        [t.edge_label.astype(np.int64) - 1 + offsets[i] for i, t in enumerate(tiles)]
        + [np.zeros(0, np.int64)]
    )
    order = np.argsort(edge_idx, kind="stable")
    edge_idx, edge_node = edge_idx[order], edge_node[order]
    src, dst = [], []
    for i, t in enumerate(tiles):
        if not t.ring_index.size or not edge_idx.size:
            continue
        pos = np.searchsorted(edge_idx, t.ring_index)
        pos = np.clip(pos, 0, edge_idx.size - 1)
        hit = edge_idx[pos] == t.ring_index
        src.append(t.ring_label[hit].astype(np.int64) - 1 + offsets[i])
        dst.append(edge_node[pos[hit]])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(nnodes, nnodes))
    _, comp = connected_components(graph, directed=False) if nnodes else (0, np.zeros(0, int))
    npix = np.concatenate([t.npix for t in tiles] + [np.zeros(0, np.int64)])
    first = np.concatenate([t.first for t in tiles] + [np.zeros(0, np.int64)])
    bbox = np.concatenate([t.bbox for t in tiles] + [np.zeros((0, 4), np.int64)])
    ncomp = int(comp.max()) + 1 if nnodes else 0
    c_npix = np.bincount(comp, weights=npix, minlength=ncomp).astype(np.int64)
    c_first = np.full(ncomp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(c_first, comp, first)
    big = np.iinfo(np.int64).max
    present = npix > 0
    c_bbox = np.tile(np.array([big, -1, big, -1], dtype=np.int64), (ncomp, 1))
    np.minimum.at(c_bbox[:, 0], comp[present], bbox[present, 0])
    np.maximum.at(c_bbox[:, 1], comp[present], bbox[present, 1])
    np.minimum.at(c_bbox[:, 2], comp[present], bbox[present, 2])
    np.maximum.at(c_bbox[:, 3], comp[present], bbox[present, 3])
    keep = np.flatnonzero(c_npix >= n_pixels)
    keep = keep[np.argsort(c_first[keep], kind="stable")]
    comp_to_parent = np.zeros(ncomp, dtype=np.int64)
    comp_to_parent[keep] = np.arange(1, keep.size + 1)
    node_parent = comp_to_parent[comp] if nnodes else np.zeros(0, np.int64)
    luts = [
        np.concatenate([[0], node_parent[offsets[i] : offsets[i + 1]]]).astype(np.int64)
        for i in range(len(tiles))
    ]
    nx = shape[1]
    parents = QTable()
    parents["parent_id"] = np.arange(1, keep.size + 1, dtype=np.int64)
    parents["seed_y"] = c_first[keep] // nx
    parents["seed_x"] = c_first[keep] % nx
    for k, name in enumerate(("bbox_ymin", "bbox_ymax", "bbox_xmin", "bbox_xmax")):
        parents[name] = c_bbox[keep, k]
    parents["npix"] = c_npix[keep]
    return parents, luts


def group_window(parents: QTable, margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Window covering the bounding boxes of a group of segments plus a margin.

    Parameters
    ----------
    parents : astropy.table.QTable
        Rows of the :func:`join_tile_labels` table.
    margin : int
        :func:`.measure.measurement_margin`.
    shape : tuple of int
        Mosaic shape.

    Returns
    -------
    tuple of slice
        Global ``(y, x)`` slices.
    """
    y0 = max(int(np.min(parents["bbox_ymin"])) - margin, 0)
    y1 = min(int(np.max(parents["bbox_ymax"])) + 1 + margin, shape[0])
    x0 = max(int(np.min(parents["bbox_xmin"])) - margin, 0)
    x1 = min(int(np.max(parents["bbox_xmax"])) + 1 + margin, shape[1])
    return slice(y0, y1), slice(x0, x1)


def segment_weights(parents: QTable) -> np.ndarray:
    """Bounding-box area of each segment: what its deblending and photometry cost grows with."""
    span_y = np.asarray(parents["bbox_ymax"] - parents["bbox_ymin"] + 1, dtype=float)
    span_x = np.asarray(parents["bbox_xmax"] - parents["bbox_xmin"] + 1, dtype=float)
    return span_y * span_x


def split_group(parents: QTable, parts: int) -> list[QTable]:
    """A group of segments cut into ``parts`` consecutive pieces of about equal weight.

    The rows keep their order (raster order of the segments in a tile, so each piece is a
    compact band with a small window); each piece has at least one row. The measurements of
    a segment do not depend on the group it is measured in.

    Parameters
    ----------
    parents : astropy.table.QTable
        Rows of the :func:`join_tile_labels` table.
    parts : int
        Pieces wanted; exactly that many are returned (at most one per row).

    Returns
    -------
    list of astropy.table.QTable
    """
    n = len(parents)
    parts = max(1, min(int(parts), n))
    if parts == 1:
        return [parents]
    cum = np.cumsum(segment_weights(parents))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="right").tolist()
    # strictly increasing, leaving at least one row to each piece
    for j in range(parts - 1):
        cuts[j] = min(max(cuts[j], cuts[j - 1] + 1 if j else 1), n - (parts - 1 - j))
    bounds = [0, *cuts, n]
    return [parents[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass
class GroupResult:
    """Result of :func:`measure_group`.

    Attributes
    ----------
    table : astropy.table.QTable
        :func:`.measure.measure_sources` columns plus ``parent_id`` and
        ``child`` (0 for a segment kept whole, ``1..k`` for deblended
        children); ``label`` is provisional until :func:`assign_source_ids`.
    patches : list of tuple
        ``(parent_id, (ymin, xmin), child_labels)`` for deblended segments.
    """

    table: QTable
    patches: list[tuple[int, tuple[int, int], np.ndarray]] = field(default_factory=list)


def measure_group(
    data: u.Quantity,
    error: u.Quantity,
    cover: np.ndarray,
    mesh: BackgroundMesh,
    parents: QTable,
    *,
    window: tuple[slice, slice],
    aperture_params: dict[str, Any],
    params: CatalogParams = CatalogParams(),
) -> GroupResult:
    """Deblend and measure a group of segments on a window of the mosaic.

    Parameters
    ----------
    data, error : astropy.units.Quantity
        Mosaic pixels and total error (Jy) of ``window``.
    cover : numpy.ndarray
        Coverage mask of ``window``.
    mesh : BackgroundMesh
        Global background mesh.
    parents : astropy.table.QTable
        Rows of the :func:`join_tile_labels` table to measure.
    window : tuple of slice
        Global slices of the arrays, e.g. :func:`group_window` with
        :func:`.measure.measurement_margin`.
    aperture_params : dict
        Aperture radii / corrections (:mod:`.refdata`).
    params : CatalogParams, optional
        Step parameters.

    Returns
    -------
    GroupResult
        Measured rows and deblending patches.
    """
    window = _norm_window(window, mesh.shape)
    wy0, wx0 = window[0].start, window[1].start
    values, bkg, conv, thr = _window_arrays(data, cover, mesh, window, params)
    labels, _ = label_above_threshold(conv, thr, cover, params.connectivity)
    segm = np.zeros(labels.shape, dtype=np.int32)
    keys: list[tuple[int, int]] = []
    patches = []
    for row in parents:
        sy, sx = int(row["seed_y"]) - wy0, int(row["seed_x"]) - wx0
        bsl = (
            slice(int(row["bbox_ymin"]) - wy0, int(row["bbox_ymax"]) + 1 - wy0),
            slice(int(row["bbox_xmin"]) - wx0, int(row["bbox_xmax"]) + 1 - wx0),
        )
        pmask = labels[bsl] == labels[sy, sx]
        if labels[sy, sx] == 0 or np.count_nonzero(pmask) != int(row["npix"]):
            raise ValueError(f"segment {int(row['parent_id'])} is not inside the window")
        children = None
        if params.deblend:
            children = deblend_segment(
                conv[bsl] << u.Jy,
                pmask,
                n_pixels=params.npixels,
                n_levels=params.nlevels,
                contrast=params.contrast,
                mode=params.multithresh_mode,
                connectivity=params.connectivity,
            )
        view = segm[bsl]
        if children is None:
            keys.append((int(row["parent_id"]), 0))
            view[pmask] = len(keys)
        else:
            patches.append(
                (int(row["parent_id"]), (bsl[0].start + wy0, bsl[1].start + wx0), children)
            )
            base = len(keys)
            nchild = int(children.max())
            keys.extend((int(row["parent_id"]), c) for c in range(1, nchild + 1))
            view[children > 0] = children[children > 0] + base
    table = measure_sources(
        data,
        bkg,
        conv << u.Jy,
        error,
        segm,
        cover,
        aperture_params=aperture_params,
        kernel_fwhm=params.kernel_fwhm,
        labels=np.arange(1, len(keys) + 1),
        origin=(wy0, wx0),
        aperture_mask_method=params.apermask_method,
        local_bkg_width=params.localbkg_width,
    )
    if len(keys):
        karr = np.array(keys, dtype=np.int64)
        local = np.asarray(table["label"]) - 1
        table["parent_id"] = karr[local, 0]
        table["child"] = karr[local, 1]
    return GroupResult(table, patches)


@dataclass
class IdMap:
    """Final source ids from segment ids.

    Attributes
    ----------
    parent_label : numpy.ndarray
        ``parent_label[parent_id]``: final id of a segment kept whole (0 if
        deblended or unknown).
    child_base : numpy.ndarray
        ``child_base[parent_id] + child - 1``: final id of a child.
    """

    parent_label: np.ndarray
    child_base: np.ndarray

    def label(self, parent_id: np.ndarray, child: np.ndarray) -> np.ndarray:
        """Final ids of ``(parent_id, child)`` pairs.

        Parameters
        ----------
        parent_id, child : numpy.ndarray
            Segment ids and child numbers (0 = not deblended).

        Returns
        -------
        numpy.ndarray
            Final labels.
        """
        parent_id = np.asarray(parent_id)
        child = np.asarray(child)
        return np.where(
            child == 0, self.parent_label[parent_id], self.child_base[parent_id] + child - 1
        )


def assign_source_ids(tables: list[QTable]) -> IdMap:
    """Official ids and in-place relabelling of group tables.

    Segments kept whole come first in raster order of their first pixel,
    then the children of deblended segments, parent by parent -- the
    numbering of ``SourceFinder(relabel=True)``.

    Parameters
    ----------
    tables : list of astropy.table.QTable
        ``GroupResult.table`` of every group; their ``label`` columns are
        replaced by the final ids.

    Returns
    -------
    IdMap
        For painting the segmentation image.
    """
    pid = np.concatenate(
        [np.asarray(t["parent_id"]) for t in tables if len(t)] + [np.zeros(0, int)]
    )
    child = np.concatenate([np.asarray(t["child"]) for t in tables if len(t)] + [np.zeros(0, int)])
    nparent = int(pid.max()) + 1 if pid.size else 1
    parent_label = np.zeros(nparent, dtype=np.int64)
    whole = np.unique(pid[child == 0])
    parent_label[whole] = np.arange(1, whole.size + 1)
    nchild = np.zeros(nparent, dtype=np.int64)
    np.maximum.at(nchild, pid[child > 0], child[child > 0])
    child_base = np.zeros(nparent, dtype=np.int64)
    child_base[1:] = whole.size + 1 + np.cumsum(nchild)[:-1]
    idmap = IdMap(parent_label, child_base)
    for t in tables:
        if len(t):
            t["label"] = idmap.label(t["parent_id"], t["child"])
    return idmap


def segmentation_tile(
    tile: TileDetection,
    lut: np.ndarray,
    patches: list[tuple[int, tuple[int, int], np.ndarray]],
    idmap: IdMap,
) -> np.ndarray:
    """Final segmentation image (int32) of a tile core.

    Parameters
    ----------
    tile : TileDetection
        The tile's detection.
    lut : numpy.ndarray
        The tile's ``local label -> parent_id`` table from :func:`join_tile_labels`.
    patches : list of tuple
        All ``GroupResult.patches`` (only those overlapping the core are used).
    idmap : IdMap
        From :func:`assign_source_ids`.

    Returns
    -------
    numpy.ndarray
        Source ids of the core pixels (0 = background).
    """
    pid = lut[tile.labels]
    plabel = np.concatenate([idmap.parent_label, [0]])
    pid_safe = np.where(pid < idmap.parent_label.size, pid, idmap.parent_label.size)
    out = plabel[pid_safe].astype(np.int32)
    cy0, cy1, cx0, cx1 = tile.core
    for parent_id, (py0, px0), children in patches:
        ny, nx = children.shape
        y0, y1 = max(py0, cy0), min(py0 + ny, cy1)
        x0, x1 = max(px0, cx0), min(px0 + nx, cx1)
        if y0 >= y1 or x0 >= x1:
            continue
        sub = children[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
        view = out[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
        sel = sub > 0
        view[sel] = idmap.child_base[parent_id] + sub[sel] - 1
    return out

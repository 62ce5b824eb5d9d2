"""Global (simultaneous) alignment of exposure groups from all overlapping pairs.

The official ``tweakreg`` aligns each group to one growing reference catalog, so a
mosaic whose tiles do not all overlap the reference tile is left partly unaligned (with the
default ``expand_refcat=False``) or accumulates errors along the alignment chain. Here, like
SCAMP's global astrometric solution, every overlapping pair of groups is matched in one
common tangent plane and a single least-squares problem is solved for a linear correction
per group (shift, rotation and optionally scale/skew), with either one group or the mean
correction held fixed:

1. `~image3_dask.algorithms.global_pairs.tangent_plane_positions` -- sources of each exposure in the common tangent plane
   (arcsec), through the exposure's WCS and the tangent plane of a reference corrector.
2. `~image3_dask.algorithms.global_pairs.match_pair` -- ``tweakwcs`` ``XYXYMatch`` (2D-histogram offset + ``xyxymatch``) on the
   sources of two groups inside their common footprint; one task per overlapping pair.
3. `solve_global` -- iterated (Gauss-Newton) linear least squares over the graph of
   overlaps with sigma clipping; pairs with too few matches or mostly clipped are dropped,
   groups outside the graph keep their WCS.
4. `apply_correction` -- the solution is inserted in each exposure's gwcs with
   ``tweakwcs.correctors.JWSTWCSCorrector.set_correction`` (a ``v2v3corr`` frame before
   ``v2v3 -> world``), exactly like the official step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from astropy.table import Table
from tweakwcs.correctors import JWSTWCSCorrector

from .align_common import (
    AlignResult,
    exposure_names,
    make_corrector,
    rename_xy_columns,
    unchanged_result,
    wcs_bounding_box,
)
from .global_pairs import (
    PairMatch,
    footprint_tangent_plane,
    inside_any,
    match_pairs,
    tangent_plane_positions,
    xy_box,
)
from .tweakreg_catalog import filter_catalog_by_bounding_box

__all__ = ["GroupSolution", "apply_correction", "global_align", "solve_global"]

log = logging.getLogger(__name__)

_NPAR = {"shift": 2, "rshift": 3, "rscale": 4, "general": 6}


@dataclass
class GroupSolution:
    """Linear tangent-plane correction of one group: ``xy' = matrix @ xy + shift``.

    Attributes
    ----------
    matrix : numpy.ndarray
        ``2x2`` matrix.
    shift : numpy.ndarray
        Shift in arcsec.
    status : str
        ``'SUCCESS'``, ``'REFERENCE'`` (the fixed group) or ``'FAILED: ...'``.
    rmse, mae : float
        Fit residuals (arcsec) of the matched sources involving this group.
    nmatches : int
        Matched sources (after clipping) involving this group.
    npairs : int
        Overlapping groups used.
    """

    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    status: str = "FAILED: no overlaps"
    rmse: float = float("nan")
    mae: float = float("nan")
    nmatches: int = 0
    npairs: int = 0

    @property
    def rotation(self) -> float:
        """Proper rotation angle in degrees."""
        return float(
            np.rad2deg(
                np.arctan2(
                    self.matrix[1, 0] - self.matrix[0, 1], self.matrix[0, 0] + self.matrix[1, 1]
                )
            )
        )

    @property
    def scale(self) -> float:
        """Mean scale, ``sqrt(|det(matrix)|)``."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))


def _components(n: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def _design_block(d: np.ndarray, npar: int) -> np.ndarray:
    """Jacobian ``(2K, npar)`` of ``dxy = dshift + dA @ d`` w.r.t. the group parameters."""
    k = len(d)
    jac = np.zeros((2 * k, npar))
    jac[0::2, 0] = 1.0
    jac[1::2, 1] = 1.0
    if npar == 3 or npar == 4:
        jac[0::2, 2] = -d[:, 1]  # rotation
        jac[1::2, 2] = d[:, 0]
    if npar == 4:
        jac[0::2, 3] = d[:, 0]  # scale
        jac[1::2, 3] = d[:, 1]
    if npar == 6:
        jac[0::2, 2] = d[:, 0]
        jac[0::2, 3] = d[:, 1]
        jac[1::2, 4] = d[:, 0]
        jac[1::2, 5] = d[:, 1]
    return jac


def _increment_matrix(p: np.ndarray, fitgeom: str) -> np.ndarray:
    if fitgeom == "shift":
        return np.eye(2)
    if fitgeom in ("rshift", "rscale"):
        s = 1.0 + (p[3] if fitgeom == "rscale" else 0.0)
        c, sn = np.cos(p[2]), np.sin(p[2])
        return s * np.array([[c, -sn], [sn, c]])
    return np.eye(2) + np.array([[p[2], p[3]], [p[4], p[5]]])


def solve_global(
    pairs: Sequence[PairMatch],
    n_groups: int,
    *,
    fitgeometry: str = "rshift",
    fixed_group: int | None = None,
    nclip: int = 3,
    sigma: float = 3.0,
    minobj: int = 15,
    min_pair_matches: int = 4,
    n_iter: int = 3,
) -> list[GroupSolution]:
    """Least-squares corrections of all groups from their pairwise matches.

    For every matched source ``k`` of a pair ``(a, b)`` the corrected positions must agree:
    ``M_a xy_a + t_a = M_b xy_b + t_b``. The problem is linearised about the current
    solution (rotation/scale about each group's centre) and iterated; after each round
    sources beyond ``sigma`` times the global RMS are clipped (``nclip`` rounds), and pairs
    that lose more than half of their matches are dropped as mismatched.

    Parameters
    ----------
    pairs : sequence of PairMatch
        Matches of the overlapping pairs.
    n_groups : int
        Number of groups.
    fitgeometry : {'shift', 'rshift', 'rscale', 'general'}, optional
        Allowed correction per group.
    fixed_group : int or None, optional
        Group whose correction is held at identity. `None` holds the mean correction of
        each connected set of groups at zero. Connected sets not containing
        ``fixed_group`` use the mean condition.
    nclip : int, optional
        Number of clipping rounds.
    sigma : float, optional
        Clipping limit in units of the RMS of the residuals.
    minobj : int, optional
        Minimum number of matches (over all its pairs) for a group to be solved.
    min_pair_matches : int, optional
        Minimum number of matches for a pair to be used.
    n_iter : int, optional
        Gauss-Newton iterations per clipping round.

    Returns
    -------
    list of GroupSolution
        One per group; groups that could not be solved keep the identity with a
        ``'FAILED: ...'`` status.

    Raises
    ------
    ValueError
        If ``fitgeometry`` is unknown.
    """
    if fitgeometry not in _NPAR:
        raise ValueError(f"Unsupported fitgeometry {fitgeometry!r}")
    npar = _NPAR[fitgeometry]
    sols = [GroupSolution() for _ in range(n_groups)]
    use = [p for p in pairs if p.n >= min_pair_matches and p.a != p.b]

    # drop groups with too few matches (iteratively: dropping one can starve another)
    while True:
        counts = np.zeros(n_groups, dtype=int)
        for p in use:
            counts[p.a] += p.n
            counts[p.b] += p.n
        bad = {g for g in range(n_groups) if 0 < counts[g] < minobj}
        if not bad:
            break
        for g in bad:
            sols[g].status = "FAILED: not enough matches"
        use = [p for p in use if p.a not in bad and p.b not in bad]
    if not use:
        return sols

    mats = [np.eye(2) for _ in range(n_groups)]
    shifts = [np.zeros(2) for _ in range(n_groups)]
    raw_all = {}
    for p in use:
        raw_all.setdefault(p.a, []).append(p.xy_a)
        raw_all.setdefault(p.b, []).append(p.xy_b)
    centers = {g: np.concatenate(v).mean(axis=0) for g, v in raw_all.items()}

    active = [np.ones(p.n, dtype=bool) for p in use]
    live = np.ones(len(use), dtype=bool)

    def corrected(g: int, xy: np.ndarray) -> np.ndarray:
        return xy @ mats[g].T + shifts[g]

    for rnd in range(nclip + 1):
        for _ in range(n_iter):
            edges = [(p.a, p.b) for p, ok in zip(use, live, strict=True) if ok]
            comps = [c for c in _components(n_groups, edges) if len(c) > 1]
            free: list[int] = []
            gauge_rows = []
            for comp in comps:
                if fixed_group is not None and fixed_group in comp:
                    free.extend(g for g in comp if g != fixed_group)
                else:
                    free.extend(comp)
                    gauge_rows.append(comp)
            col = {g: i * npar for i, g in enumerate(free)}
            ncol = npar * len(free)
            if ncol == 0:
                break
            blocks = []
            rhs = []
            for p, act, ok in zip(use, active, live, strict=True):
                if not ok or not act.any():
                    continue
                pa = corrected(p.a, p.xy_a[act])
                pb = corrected(p.b, p.xy_b[act])
                rows = np.zeros((2 * len(pa), ncol))
                if p.a in col:
                    rows[:, col[p.a] : col[p.a] + npar] += _design_block(pa - centers[p.a], npar)
                if p.b in col:
                    rows[:, col[p.b] : col[p.b] + npar] -= _design_block(pb - centers[p.b], npar)
                blocks.append(rows)
                rhs.append((pb - pa).ravel())
            weight = 1e3 * np.sqrt(sum(len(r) for r in rhs) + 1.0)
            for comp in gauge_rows:
                rows = np.zeros((npar, ncol))
                for g in comp:
                    rows[:, col[g] : col[g] + npar] += np.eye(npar) * weight
                blocks.append(rows)
                rhs.append(np.zeros(npar))
            design = np.vstack(blocks)
            vec = np.concatenate(rhs)
            sol, *_ = np.linalg.lstsq(design, vec, rcond=None)
            for g in free:
                dp = sol[col[g] : col[g] + npar]
                dm = _increment_matrix(dp, fitgeometry)
                c = centers[g]
                mats[g] = dm @ mats[g]
                shifts[g] = dm @ (shifts[g] - c) + c + dp[:2]

        # residuals and clipping
        res = [corrected(p.a, p.xy_a) - corrected(p.b, p.xy_b) for p in use]
        rnorm = [np.hypot(r[:, 0], r[:, 1]) for r in res]
        act_all = np.concatenate([r[a] for r, a, ok in zip(rnorm, active, live, strict=True) if ok])
        rmse = float(np.sqrt(np.mean(act_all**2))) if act_all.size else 0.0
        if rnd == nclip or rmse == 0.0:
            break
        new_active = [r <= sigma * rmse for r in rnorm]
        for i, (p, na) in enumerate(zip(use, new_active, strict=True)):
            if live[i] and (na.sum() < min_pair_matches or na.sum() < 0.5 * p.n):
                log.warning(
                    "Dropping mismatched pair of groups (%d, %d): %d of %d matches "
                    "within %.3g arcsec",
                    p.a,
                    p.b,
                    na.sum(),
                    p.n,
                    sigma * rmse,
                )
                live[i] = False
        active = new_active

    # fit statistics per group
    edges = [(p.a, p.b) for p, ok in zip(use, live, strict=True) if ok]
    comps = [c for c in _components(n_groups, edges) if len(c) > 1]
    in_graph = {g for c in comps for g in c}
    per_group: dict[int, list[np.ndarray]] = {}
    npairs = np.zeros(n_groups, dtype=int)
    for p, act, ok in zip(use, active, live, strict=True):
        if not ok:
            continue
        r = corrected(p.a, p.xy_a[act]) - corrected(p.b, p.xy_b[act])
        for g in (p.a, p.b):
            per_group.setdefault(g, []).append(r)
            npairs[g] += 1
    for g in range(n_groups):
        if g not in in_graph:
            if sols[g].status.startswith("FAILED: no"):
                sols[g].status = "FAILED: no overlapping group with enough matches"
            continue
        r = np.concatenate(per_group[g])
        norm = np.hypot(r[:, 0], r[:, 1])
        sols[g] = GroupSolution(
            matrix=mats[g],
            shift=shifts[g],
            status="REFERENCE" if g == fixed_group else "SUCCESS",
            rmse=float(np.sqrt(np.mean(norm**2))) if norm.size else float("nan"),
            mae=float(np.mean(norm)) if norm.size else float("nan"),
            nmatches=int(len(r)),
            npairs=int(npairs[g]),
        )
    return sols


def apply_correction(
    wcs: Any,
    wcsinfo: Mapping[str, float],
    matrix: np.ndarray,
    shift: np.ndarray,
    ref_corrector: JWSTWCSCorrector,
) -> Any:
    """Insert a tangent-plane correction into a JWST gwcs.

    Parameters
    ----------
    wcs : gwcs.WCS
        The exposure's WCS (not modified).
    wcsinfo : mapping
        ``v2_ref``, ``v3_ref`` (arcsec) and ``roll_ref`` (deg) of the exposure.
    matrix, shift : numpy.ndarray
        Correction ``xy' = matrix @ xy + shift`` defined in the tangent plane of
        ``ref_corrector`` (arcsec).
    ref_corrector : tweakwcs.correctors.JWSTWCSCorrector
        Corrector defining that tangent plane.

    Returns
    -------
    gwcs.WCS
        A new WCS with a ``v2v3corr`` frame (``JWSTWCSCorrector.set_correction``).
    """
    corr = make_corrector(wcs, wcsinfo)
    corr.set_correction(
        matrix=np.asarray(matrix, float), shift=np.asarray(shift, float), ref_tpwcs=ref_corrector
    )
    return corr.wcs


def global_align(
    catalogs: Sequence[Table],
    wcses: Sequence[Any],
    wcsinfos: Sequence[Mapping[str, float]],
    group_ids: Sequence[Hashable],
    *,
    names: Sequence[str] | None = None,
    fixed_group: Hashable | None = None,
    searchrad: float = 2.0,
    separation: float = 1.0,
    use2dhist: bool = True,
    tolerance: float = 0.7,
    xoffset: float = 0.0,
    yoffset: float = 0.0,
    minobj: int = 15,
    min_pair_matches: int = 4,
    fitgeometry: str = "rshift",
    nclip: int = 3,
    sigma: float = 3.0,
    apply: bool = True,
    map_batches: Callable[[Callable, list], Iterable[list]] | None = None,
    pair_batch: int = 16,
) -> AlignResult:
    """Align all groups together from every overlapping pair of groups.

    Parameters
    ----------
    catalogs : sequence of astropy.table.Table
        Per exposure: sources with ``x``, ``y`` (0-based pixels).
    wcses : sequence of gwcs.WCS
        Per exposure: JWST gwcs (``detector -> v2v3 -> world``).
    wcsinfos : sequence of mapping
        Per exposure: ``v2_ref``, ``v3_ref``, ``roll_ref``.
    group_ids : sequence of hashable
        Per exposure: group identifier.
    names : sequence of str, optional
        Exposure names for log messages.
    fixed_group : hashable or None, optional
        Group id held fixed; `None` (default) holds the mean correction at zero.
    searchrad, separation, use2dhist, tolerance, xoffset, yoffset
        Pair matching options (arcsec), as the official ``XYXYMatch`` options.
    minobj : int, optional
        Minimum number of matches, over all its overlaps, for a group to be aligned.
    min_pair_matches : int, optional
        Minimum number of matches for an overlapping pair to be used.
    fitgeometry : {'shift', 'rshift', 'rscale', 'general'}, optional
        Correction fitted per group.
    nclip : int, optional
        Clipping rounds.
    sigma : float, optional
        Clipping limit in units of the fit RMS.
    apply : bool, optional
        Insert the corrections into the WCSs. When False the WCSs are returned unchanged and
        ``extra`` holds ``'corrections'`` (exposure index -> ``(matrix, shift)``) and
        ``'tangent_plane'`` (the reference corrector), for :func:`apply_correction` to be
        called elsewhere (e.g. one task per exposure).
    map_batches : callable, optional
        ``map_batches(func, batches)`` returns ``[func(b) for b in batches]`` in order, possibly
        computed in parallel (one task per batch on a cluster); the pairs are matched in
        batches of ``pair_batch``. Default: here, one batch after the other.
    pair_batch : int, optional
        Overlapping pairs per batch.

    Returns
    -------
    AlignResult
        Corrected WCSs and fit info per exposure (``shift`` in arcsec and ``matrix`` in the
        common tangent plane, ``rotation`` in deg, ``rmse``/``mae`` in arcsec, ``nmatches``,
        ``npairs``); ``extra`` holds ``'pairs'`` (group index pairs with their number of
        matches) and ``'group_order'``.
    """
    names = exposure_names(len(wcses), names)
    order = list(dict.fromkeys(group_ids))
    gindex = {g: i for i, g in enumerate(order)}
    if len(order) < 2:
        return unchanged_result(
            wcses,
            group_ids,
            "global",
            "At least two exposure groups are required for relative alignment.",
        )
    if fixed_group is not None and fixed_group not in gindex:
        raise ValueError(f"fixed_group {fixed_group!r} is not one of the group ids")

    # common tangent plane: exposure closest to the centre of the whole set (or the fixed group)
    centers = np.array([np.asarray(w.footprint(), float).mean(axis=0) for w in wcses])
    if fixed_group is not None:
        cand = [i for i, g in enumerate(group_ids) if g == fixed_group]
    else:
        mean = centers.mean(axis=0)
        cand = [int(np.argmin(np.sum((centers - mean) ** 2, axis=1)))]
    iref = cand[0]
    ref = make_corrector(wcses[iref], wcsinfos[iref], name="tangent-plane reference")
    tp_pscale = ref.tanp_center_pixel_scale

    # per group: tangent-plane positions and footprints
    ngrp = len(order)
    gxy: list[list[np.ndarray]] = [[] for _ in range(ngrp)]
    gquads: list[list[np.ndarray]] = [[] for _ in range(ngrp)]
    for cat, w, g in zip(catalogs, wcses, group_ids, strict=True):
        cat = filter_catalog_by_bounding_box(rename_xy_columns(Table(cat)), wcs_bounding_box(w))
        gxy[gindex[g]].append(tangent_plane_positions(cat, w, ref))
        gquads[gindex[g]].append(footprint_tangent_plane(w, ref))
    gpos = [np.concatenate(v) if v else np.zeros((0, 2)) for v in gxy]

    margin = searchrad + tolerance + 2 * max(abs(xoffset), abs(yoffset))
    # a point inside a footprint grown by ``margin`` lies inside its bounding box grown by
    # ``margin``: the pairs whose boxes are apart have nothing to match (spares O(groups^2)
    # polygon tests on large mosaics)
    pbox = np.array([xy_box(p) for p in gpos])
    qbox = np.array([xy_box(np.concatenate(q) if q else np.zeros((0, 2))) for q in gquads])
    qbox[:, :2] -= margin
    qbox[:, 2:] += margin
    reach = (
        (pbox[:, None, 0] <= qbox[None, :, 2])
        & (pbox[:, None, 2] >= qbox[None, :, 0])
        & (pbox[:, None, 1] <= qbox[None, :, 3])
        & (pbox[:, None, 3] >= qbox[None, :, 1])
    )
    jobs = []
    for a in range(ngrp):
        for b in range(a + 1, ngrp):
            if not (reach[a, b] and reach[b, a]):
                continue
            sel_a = inside_any(gpos[a], gquads[b], margin)
            sel_b = inside_any(gpos[b], gquads[a], margin)
            if sel_a.sum() == 0 or sel_b.sum() == 0:
                continue
            jobs.append((a, b, gpos[a][sel_a], gpos[b][sel_b]))
    match = partial(
        match_pairs,
        searchrad=searchrad,
        separation=separation,
        use2dhist=use2dhist,
        tolerance=tolerance,
        xoffset=xoffset,
        yoffset=yoffset,
        tp_pscale=tp_pscale,
    )
    batches = [jobs[k : k + pair_batch] for k in range(0, len(jobs), pair_batch)]
    mapped = map_batches(match, batches) if map_batches is not None else map(match, batches)
    # in the order of the serial loop, whatever order the batches ran in
    pairs: list[PairMatch] = [p for found in mapped for p in found]

    sols = solve_global(
        pairs,
        ngrp,
        fitgeometry=fitgeometry,
        fixed_group=None if fixed_group is None else gindex[fixed_group],
        nclip=nclip,
        sigma=sigma,
        minobj=minobj,
        min_pair_matches=min_pair_matches,
    )

    out_wcs = []
    infos = []
    corrections: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, (w, info, g, n) in enumerate(zip(wcses, wcsinfos, group_ids, names, strict=True)):
        s = sols[gindex[g]]
        fi: dict[str, Any] = {"status": s.status, "group_id": g}
        if s.status in ("SUCCESS", "REFERENCE"):
            fi.update(
                shift=s.shift.copy(),
                matrix=s.matrix.copy(),
                rotation=s.rotation,
                scale=s.scale,
                rmse=s.rmse,
                mae=s.mae,
                nmatches=s.nmatches,
                npairs=s.npairs,
                fitgeom=fitgeometry,
            )
        if s.status == "SUCCESS" and apply:
            out_wcs.append(apply_correction(w, info, s.matrix, s.shift, ref))
        elif s.status == "SUCCESS":
            out_wcs.append(w)
            corrections[i] = (s.matrix.copy(), s.shift.copy())
        else:
            out_wcs.append(w)
            if s.status != "REFERENCE":
                log.warning("Exposure %s (group %s) not aligned: %s", n, g, s.status)
        infos.append(fi)
    extra: dict[str, Any] = {
        "pairs": [(order[p.a], order[p.b], p.n) for p in pairs],
        "group_order": order,
    }
    if not apply:
        extra.update(corrections=corrections, tangent_plane=ref)
    return AlignResult(wcs=out_wcs, fit_info=infos, success=True, mode="global", extra=extra)

"""Consecutive steps overlap: what the client submits, in which order (issue 12)."""

from __future__ import annotations

from helpers import run_context

from image3_dask.io.exposures import read_exposures
from image3_dask.pipeline.image3 import _submit_steps


def test_sky_statistics_are_submitted_before_the_client_plans_the_pixel_maps(
    client, small_dither, tmp_path
):
    """After the alignment the workers wait for the client: skymatch's statistics go first,
    then the client plans the output grid and submits the pixel maps."""
    skip = {"skip": True}
    ctx = run_context(
        client, small_dither.asn_path, tmp_path, {"source_catalog": skip, "resample": skip}
    )
    data = _submit_steps(ctx, read_exposures(small_dither.cal_paths), {})
    assert all(e.background_level is not None for e in data.exposures)
    kinds = [f.key[0] for _, f in ctx.tasks._entries]
    first = {k: kinds.index(k) for k in ("tweakreg-align", "skymatch-stats", "pixmap-exposure")}
    assert first["tweakreg-align"] < first["skymatch-stats"] < first["pixmap-exposure"], kinds

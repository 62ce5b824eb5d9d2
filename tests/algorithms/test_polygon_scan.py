"""algorithms.polygon_scan marks exactly the pixels gwcs's Polygon.scan marks (stcal's skymatch)."""

from __future__ import annotations

import numpy as np
import pytest
from gwcs import region

from image3_dask.algorithms.polygon_scan import scan_polygon


def _polygons(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for trial in range(n):
        ny, nx = (int(v) for v in rng.integers(5, 80, 2))
        kind = trial % 4
        k = int(rng.integers(3, 10))
        if kind == 0:  # convex, anywhere (partly or wholly outside the image, negative)
            c = rng.uniform(-20, 100, 2)
            r = rng.uniform(0.5, 60)
            t = np.sort(rng.uniform(0, 2 * np.pi, k))
            pts = np.column_stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)])
        elif kind == 1:  # self-intersecting
            pts = rng.uniform(-30, 110, (k, 2))
        elif kind == 2:  # vertices on integers and half-integers (rounding ties)
            pts = rng.integers(-10, 90, (k, 2)) + rng.choice([0.0, 0.5], (k, 2))
        else:  # the frame's own footprint, give or take a pixel (the usual overlap)
            x0, y0 = rng.uniform(-3, 3, 2)
            x1, y1 = nx - 1 + rng.uniform(-3, 3), ny - 1 + rng.uniform(-3, 3)
            pts = np.array([[x0, y0], [x1, y0 + rng.uniform(-1, 1)], [x1, y1], [x0, y1]])
        yield np.vstack([pts, pts[:1]]), rng.random((ny, nx)) < 0.1


def test_same_pixels_as_gwcs_polygon_scan():
    n_marked = 0
    for verts, start in _polygons(seed=1, n=2000):
        want = region.Polygon(True, [tuple(p) for p in verts]).scan(start.copy())
        got = scan_polygon(verts, start.copy())
        np.testing.assert_array_equal(got, want, err_msg=str(verts.tolist()))
        n_marked += int(np.count_nonzero(want & ~start))
    assert n_marked > 100_000  # the polygons cover pixels (the comparison is not of empties)


def test_bad_vertices_are_refused():
    with pytest.raises(ValueError, match="minimum 4"):
        scan_polygon(np.zeros((3, 2)), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="finite"):
        scan_polygon(np.array([[0, 0], [np.nan, 1], [2, 2], [0, 0]]), np.zeros((4, 4), bool))

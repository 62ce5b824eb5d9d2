"""Planning: enough tiles for the workers, plans shared between steps."""

from image3_dask.graph.plan import _enough_tiles, wcs_fingerprint


def test_tiles_are_split_for_parallelism_balanced_and_bounded():
    # a memory-derived whole-mosaic tile is split so that 2 threads get 2 tiles each, evenly
    ty, tx = _enough_tiles((1080, 1073), (1080, 1073), threads=2)
    ny, nx = -(-1080 // ty), -(-1073 // tx)
    assert ny * nx >= 4
    assert 1080 - (ny - 1) * ty > ty * 0.9 and 1073 - (nx - 1) * tx > tx * 0.9  # no thin edge tiles
    # about 256 px or more, split evenly; never above what memory allows
    assert _enough_tiles((500, 500), (300, 300), threads=64) == (150, 150)
    assert all(120 < s <= 128 for s in _enough_tiles((128, 128), (10000, 10000), threads=2))
    # memory to spare: tiles stay at most 1024 px, so memory per task is flat in mosaic size
    ty, tx = _enough_tiles((8192, 8192), (20000, 20000), threads=2)
    assert 900 < ty <= 1024 and 900 < tx <= 1024


def test_wcs_fingerprint_sees_small_corrections(small_dither):
    from image3_dask.io.exposures import read_exposure_info

    info = read_exposure_info(small_dither.cal_paths[0])
    fp = wcs_fingerprint(info.wcs, info.shape)
    assert fp == wcs_fingerprint(info.wcs, info.shape)
    from image3_dask.simulate import build_true_wcs

    assert fp != wcs_fingerprint(build_true_wcs(small_dither.truth, 0), info.shape)

"""Planning: enough tiles for the workers, plans shared between steps."""

from image3_dask.graph.plan import _enough_tiles, wcs_fingerprint


def test_tiles_are_split_for_parallelism_but_not_too_small():
    # a memory-derived whole-mosaic tile is split so that 2 threads get 4 tiles each
    ty, tx = _enough_tiles((1080, 1073), (1080, 1073), threads=2)
    assert (1080 // ty + 1) * (1073 // tx + 1) >= 8
    assert ty % 64 == 0 and ty >= 256
    # never below 256 px, never above what memory allows or the grid
    assert _enough_tiles((500, 500), (300, 300), threads=64) == (256, 256)
    assert _enough_tiles((128, 128), (10000, 10000), threads=2) == (128, 128)
    # memory to spare: tiles stay at most 1024 px, so memory per task is flat in mosaic size
    assert _enough_tiles((8192, 8192), (20000, 20000), threads=2) == (1024, 1024)


def test_wcs_fingerprint_sees_small_corrections(small_dither):
    from image3_dask.io.exposures import read_exposure_info

    info = read_exposure_info(small_dither.cal_paths[0])
    fp = wcs_fingerprint(info.wcs, info.shape)
    assert fp == wcs_fingerprint(info.wcs, info.shape)
    from image3_dask.simulate import build_true_wcs

    assert fp != wcs_fingerprint(build_true_wcs(small_dither.truth, 0), info.shape)

"""Array-level algorithms: pure functions on numpy arrays and WCS objects, no Dask and no files."""

"""File input/output: associations, JWST exposures, Zarr mosaic stores and FITS products."""

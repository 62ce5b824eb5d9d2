"""image3-dask: the JWST level-3 imaging pipeline (calwebb_image3) as a tiled Dask graph.

Layers, each importing only from the ones before it:

``io``          associations, JWST datamodels, Zarr and FITS products
``algorithms``  pure functions on numpy arrays and WCS objects (no Dask, no files)
``graph``       builders of the Dask tasks of each step
``pipeline``    configuration, step order, outputs
``cli``         the ``image3-dask`` command
"""

__version__ = "0.1.0"

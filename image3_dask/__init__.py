"""image3-dask: the JWST level-3 imaging pipeline (calwebb_image3) as a tiled Dask graph.

``from image3_dask import Image3Pipeline`` gives the pipeline (as ``from jwst.pipeline import
Image3Pipeline`` does with jwst); ``plot_i2d`` draws a mosaic and its catalog as jwst's
notebooks do. Both are imported on first use, so ``import image3_dask`` stays light.

Layers, each importing only from the ones before it:

``io``          associations, JWST datamodels, Zarr and FITS products
``algorithms``  pure functions on numpy arrays and WCS objects (no Dask, no files)
``graph``       builders of the Dask tasks of each step
``pipeline``    configuration, step order, outputs
``cli``         the ``image3-dask`` command
"""

__version__ = "0.1.0"

__all__ = ["Image3Pipeline", "__version__", "plot_i2d"]


def __getattr__(name: str):
    if name == "Image3Pipeline":
        from image3_dask.pipeline.image3 import Image3Pipeline

        return Image3Pipeline
    if name == "plot_i2d":
        from image3_dask.plotting import plot_i2d

        return plot_i2d
    raise AttributeError(f"module 'image3_dask' has no attribute {name!r}")

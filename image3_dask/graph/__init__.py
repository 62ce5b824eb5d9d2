"""Builders of the Dask task graph of each step."""

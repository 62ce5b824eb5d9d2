"""Running image3-dask as a service: submitted jobs, their status, and TLS security."""

"""``python -m image3_dask.cli``: the ``image3-dask`` command."""

import sys

from image3_dask.cli import main

sys.exit(main())

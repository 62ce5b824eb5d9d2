"""jwst's Image3Pipeline and ours on the same simulated association, for the parity tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def run_both(root: Path, sim, client) -> dict:
    """Run jwst 3.0 and image3-dask (``align_mode='official'``) on ``sim`` under ``root``.

    Both get the simulator's APCORR/ABVEGAOFFSET files as ``override_*``; jwst runs with the
    working directory in ``root`` (anything it writes beside its products stays there).

    Returns
    -------
    dict
        ``sim``, ``jwst`` and ``ours`` (product folders) and ``products`` (ours).
    """
    pytest.importorskip("jwst")
    from jwst.pipeline import Image3Pipeline as Theirs

    from image3_dask.pipeline.image3 import Image3Pipeline as Ours
    from image3_dask.simulate.refs import write_reference_files

    apcorr, abvega = write_reference_files("miri", root / "refs")
    refs = {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        Theirs.call(
            str(sim.asn_path), output_dir=str(root / "jwst"), save_results=True,
            steps={"source_catalog": refs},
        )  # fmt: skip
    ours = Ours.call(
        sim.asn_path, output_dir=root / "ours", client=client, progress=False,
        steps={"tweakreg": {"align_mode": "official"}, "source_catalog": refs},
    )  # fmt: skip
    return {"sim": sim, "jwst": root / "jwst", "ours": root / "ours", "products": ours}

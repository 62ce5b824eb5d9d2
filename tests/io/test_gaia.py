"""``abs_refcat = GAIADR3``: the catalog service's query, answered by a local HTTP server.

The server on 127.0.0.1 answers ``/vo/CatalogSearch.aspx`` the way stcal's ``get_catalog``
reads STScI's service (``https://gsss.stsci.edu/webservices``): CSV with ``#`` comment lines,
a header line and one row per source (``objID, GaiaID, ra, dec, epoch, ..., mag, ..., pmra,
pmdec, ...``), empty proper motions for sources the service could not move to the epoch, and
``No data records`` for an empty field. Its sources are the simulator's true star positions
within the query's radius, so that absolute alignment must undo the pointing errors the
simulator wrote into every exposure's WCS (0.5" RMS per axis here, ~2.5 MIRI pixels).
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from helpers import run_context

from image3_dask.errors import InputError
from image3_dask.graph import tweakreg
from image3_dask.io.exposures import read_exposures
from image3_dask.io.gaia import field_of_view, parse_gaia_csv
from image3_dask.pipeline.context import RunContext
from image3_dask.simulate import build_true_wcs

HEADER = (
    "objID,GaiaID,ra,dec,epoch,ra_error,dec_error,mag,mag_error,pmra,pmdec,"
    "pmra_error,pmdec_error,parallax,parallax_error"
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("gaia_sim")
    return simulate(instrument="miri", n=4, out_dir=out, seed=3, pattern="dither",
                    shape=(256, 256), n_stars=3000, n_galaxies=300, pointing_error=0.5)


class _Service:
    """A local stand-in for the catalog service, answering from the simulator's truth."""

    def __init__(self, stars: Table, n_without_pm: int = 5):
        self.stars = stars
        self.n_without_pm = n_without_pm
        self.queries: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                service.queries.append({"path": url.path, **query})
                body = service.answer(query).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, q: dict[str, str]) -> str:
        ra0, dec0, radius = float(q["RA"]), float(q["DEC"]), float(q["SR"])
        ra, dec = np.asarray(self.stars["ra"], float), np.asarray(self.stars["dec"], float)
        cosd = np.sin(np.deg2rad(dec)) * np.sin(np.deg2rad(dec0)) + np.cos(
            np.deg2rad(dec)
        ) * np.cos(np.deg2rad(dec0)) * np.cos(np.deg2rad(ra - ra0))
        inside = np.flatnonzero(np.rad2deg(np.arccos(np.clip(cosd, -1, 1))) <= radius)
        if len(inside) == 0:
            return "No data records found\r\n"
        lines = [f"#@catalog={q['CAT']} epoch={q.get('EPOCH', '')}", HEADER]
        for k, i in enumerate(inside):
            mag = 16.0 + 6.0 * (i % 97) / 97.0
            pm = ("", "") if k < self.n_without_pm else ("0.0", "0.0")
            lines.append(
                f"{1000 + i},{5000 + i},{ra[i]:.10f},{dec[i]:.10f},{q.get('EPOCH', '2016.0')},"
                f"0.1,0.1,{mag:.3f},0.01,{pm[0]},{pm[1]},0.05,0.05,0.5,0.1"
            )
        return "\r\n".join(lines) + "\r\n"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _ctx(client, sim, out, **params) -> RunContext:
    return run_context(client, sim.asn_path, out, {"tweakreg": params})


def _absolute_residual(sim, wcses, step=8) -> float:
    """RMS (pixels) of WCS-vs-true positions on a pixel grid, nothing removed."""
    ny, nx = sim.truth.shape
    y, x = np.mgrid[4:ny - 4:step, 4:nx - 4:step].astype(float)
    d = []
    for i, w in enumerate(wcses):
        ra, dec = w(x, y)
        xt, yt = build_true_wcs(sim.truth, i).invert(ra, dec)
        d.append(np.stack([xt - x, yt - y], axis=-1).reshape(-1, 2))
    return float(np.sqrt(np.nanmean((np.array(d) ** 2).sum(axis=-1))))


def test_parse_answer_and_empty_field():
    text = "#@x\r\n" + HEADER + "\r\n1,2,10.0,-5.0,2024.5,0,0,18,0,,,0,0,0,0\r\n" \
        "3,4,10.1,-5.1,2024.5,0,0,17,0,1.0,2.0,0,0,0,0\r\n"
    assert len(parse_gaia_csv(text, 2024.5)) == 1  # no proper motion: dropped at an epoch
    assert len(parse_gaia_csv(text, None)) == 2
    assert len(parse_gaia_csv("No data records found\r\n", 2024.5)) == 0
    ra, dec, r = field_of_view([np.array([[10.0, 0.0], [10.2, 0.0]])], margin_arcsec=36.0)
    assert ra == pytest.approx(10.1) and dec == pytest.approx(0.0, abs=1e-12)
    assert r == pytest.approx(0.1 + 0.01, rel=1e-6)


def test_gaia_alignment_recovers_the_absolute_offset(client, sim, tmp_path, monkeypatch):
    src = sim.truth.sources
    stars = src[src["kind"] == "star"]
    infos = read_exposures(sim.cal_paths)
    with _Service(stars) as service:
        monkeypatch.setenv("ASTROMETRIC_CATALOG_URL", service.url)
        ctx = _ctx(client, sim, tmp_path, abs_refcat="GAIADR3", align_mode="official")
        out = tweakreg.run(ctx, infos)
    assert len(service.queries) == 1  # once, by the client
    q = service.queries[0]
    assert q["path"] == "/vo/CatalogSearch.aspx" and q["CAT"] == "GAIADR3" and q["FORMAT"] == "CSV"
    date = fits.getheader(sim.cal_paths[0], 0)["DATE-OBS"]
    assert float(q["EPOCH"]) == pytest.approx(Time(date).decimalyear)
    footprints = [np.asarray(e.wcs.footprint()) for e in infos]
    assert float(q["SR"]) == pytest.approx(field_of_view(footprints)[2] + 6.0 / 3600.0)
    saved = Table.read(tmp_path / "fit_gaiadr3_ref.ecsv")
    assert ctx.products["abs_refcat"] == tmp_path / "fit_gaiadr3_ref.ecsv"
    assert {"RA", "DEC", "mag", "objID", "epoch"} <= set(saved.colnames) and len(saved) > 30
    rep = ctx.products["tweakreg"]
    assert rep["absolute"] is True
    before = _absolute_residual(sim, [e.wcs for e in infos])
    after = _absolute_residual(sim, [e.wcs for e in out])
    print(f"Gaia alignment: {before:.3f} -> {after:.4f} px (nothing removed)")
    # one rshift for all exposures (as jwst): what is left is the relative alignment's residual
    assert before > 2.0
    assert after < 0.06
    assert all(e.wcs.name == "FIT-LVL3-GAIADR3" for e in out)
    # the saved catalog, given back as a file, aligns the same way (no network needed)
    (tmp_path / "again").mkdir()
    ctx2 = _ctx(client, sim, tmp_path / "again", abs_refcat=str(tmp_path / "fit_gaiadr3_ref.ecsv"),
                align_mode="official")
    again = tweakreg.run(ctx2, infos)
    for a, b in zip(out, again, strict=True):
        ra1, dec1 = a.wcs(100.0, 120.0)
        ra2, dec2 = b.wcs(100.0, 120.0)
        assert abs(ra1 - ra2) < 1e-10 and abs(dec1 - dec2) < 1e-10


def test_unreachable_service_is_one_clear_error(client, sim, tmp_path, monkeypatch):
    infos = read_exposures(sim.cal_paths)
    monkeypatch.delenv("ASTROMETRIC_CATALOG_URL", raising=False)
    ctx = _ctx(client, sim, tmp_path, abs_refcat="gaiadr2", abs_refcat_url="http://127.0.0.1:9")
    with pytest.raises(InputError) as err:
        tweakreg.run(ctx, infos)
    msg = str(err.value)
    assert "http://127.0.0.1:9" in msg and "catalog file" in msg and "GAIADR2" in msg

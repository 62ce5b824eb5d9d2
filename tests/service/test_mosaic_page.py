"""The live mosaic page: state mapping, JSON, HTTP, and a real headless browser on a running job."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.browser import chromium

from image3_dask.service.mosaic_page import (
    STATES,
    MosaicMonitor,
    MosaicPage,
    footprint_polygon,
    scheduler_state,
    subject,
)

ONLY_RESAMPLE = {
    "tweakreg": {"skip": True},
    "skymatch": {"skip": True},
    "outlier_detection": {"skip": True},
    "source_catalog": {"skip": True},
    "resample": {"tile_shape": [32, 32]},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two simulated 128x128 MIRI exposures (dither)."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("tiny")
    return simulate(instrument="miri", n=2, out_dir=out, seed=5, pattern="dither", shape=(128, 128))


@pytest.fixture(scope="module")
def tiny_plan(tiny):
    """A plan of the tiny association on 32x32 tiles, made without a cluster."""
    from image3_dask.algorithms.tiles import plan_tiles
    from image3_dask.graph.plan import MosaicPlan, output_grid
    from image3_dask.io.asn import resolve_inputs
    from image3_dask.io.exposures import read_exposures

    exposures = read_exposures(resolve_inputs(tiny.asn_path).members)
    grid = output_grid(exposures, {})
    plan = MosaicPlan(grid=grid, tiles=plan_tiles(grid.shape, (32, 32)), halo=0, pixmaps={})
    return plan, exposures


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "idle"),
        ("released", "waiting"),
        ("waiting", "waiting"),
        ("queued", "waiting"),
        ("no-worker", "waiting"),
        ("processing", "running"),
        ("memory", "done"),
        ("forgotten", "done"),
        ("erred", "failed"),
        ("pending", "waiting"),
        ("finished", "done"),
        ("error", "failed"),
        ("cancelled", "cancelled"),
        ("lost", "waiting"),
    ],
)
def test_scheduler_state(given, expected):
    assert scheduler_state(given) == expected
    assert expected in STATES


def test_footprints_on_grid(tiny_plan):
    plan, exposures = tiny_plan
    ny, nx = plan.grid.shape
    for e in exposures:
        pts = footprint_polygon(e.wcs, e.shape, plan.grid.wcs)
        assert len(pts) == 32
        xs, ys = zip(*pts, strict=True)
        # the grid is made (from S_REGION) to hold every exposure: outlines about within it
        assert min(xs) > -8 and max(xs) < nx + 8 and min(ys) > -8 and max(ys) < ny + 8
        # a 128x128 detector covers about 128x128 output pixels (pixel_scale_ratio 1)
        assert 100 < max(xs) - min(xs) < 200 and 100 < max(ys) - min(ys) < 200


def test_monitor_json(tiny_plan):
    plan, exposures = tiny_plan
    tok = "t0k3n"
    mon = MosaicMonitor(tok)
    names = [t.name for t in plan.tiles]
    assert mon.state()["layouts"] == [] and mon.state()["current"] is None

    # per-exposure tasks before any grid
    for e in exposures:
        mon.task_event(("tweakreg-catalog", e.name, tok), "waiting")
    mon.task_event(("tweakreg-catalog", exposures[0].name, tok), "done")
    mon.task_event(("resample-tile", names[0], "other-run"), "waiting")  # ignored

    mon.add_plan(plan, exposures, "outlier_detection")
    mon.add_plan(plan, exposures, "resample")
    for n in names:
        mon.task_event(("outlier-median", n, tok), "waiting")
        mon.task_event(("outlier-median", n, tok), "done")
    for n in names[:3]:
        mon.task_event(("resample-tile", n, tok), "waiting")
    mon.task_event(("resample-tile", names[0], tok), "done")
    mon.task_event(("resample-tile", names[1], tok), "failed")
    mon.set_running([["resample-tile", names[2], tok], ("resample-tile", names[3], "x")])
    mon.task_event(("outlier-flag", exposures[1].name, tok), "waiting")
    mon.set_running([("resample-tile", names[2], tok), ("outlier-flag", exposures[1].name, tok)])

    s = json.loads(json.dumps(mon.state()))  # JSON-able
    assert s["status"] == "running" and s["token"] == tok and s["states"] == list(STATES)
    assert [lay["id"] for lay in s["layouts"]] == ["outlier_detection", "resample"]
    assert s["current"] == "resample"
    res = s["layouts"][1]
    assert res["grid"] == list(plan.grid.shape) and res["prefix"] == "resample-"
    by = {t["name"]: t for t in res["tiles"]}
    assert len(by) == len(plan.tiles)
    t0 = plan.tiles[0]
    assert {k: by[t0.name][k] for k in ("y0", "y1", "x0", "x1")} == {
        "y0": t0.y0, "y1": t0.y1, "x0": t0.x0, "x1": t0.x1
    }
    assert [by[n]["state"] for n in names[:4]] == ["done", "failed", "running", "idle"]
    assert by[names[0]]["action"] == "resample-tile" and by[names[3]]["action"] is None
    # the outlier layout only shows outlier tasks
    assert {t["state"] for t in s["layouts"][0]["tiles"]} == {"done"}
    fps = {f["name"]: f for f in res["footprints"]}
    assert fps[exposures[0].name]["state"] == "done"
    assert fps[exposures[0].name]["action"] == "tweakreg-catalog"
    assert fps[exposures[1].name]["state"] == "running"
    assert fps[exposures[1].name]["action"] == "outlier-flag"
    assert s["actions"]["resample-tile"] == {
        "waiting": 0, "running": 1, "done": 1, "failed": 1, "cancelled": 0
    }
    assert list(s["actions"]) == ["tweakreg-catalog", "outlier-median", "resample-tile", "outlier-flag"]

    # the tiled catalog: its own tiles, the footprints of the grid of the same shape
    mon.add_tiles("source_catalog", plan.tiles[:2], plan.grid.shape)
    mon.task_event(("catalog-detect", names[0], tok), "waiting")
    mon.task_event(("catalog-detect", names[0], tok), "cancelled")
    mon.task_event(("resample-tile", names[0], tok), "cancelled")  # done stays done
    s = mon.state()
    cat = s["layouts"][-1]
    assert s["current"] == "source_catalog" and cat["prefix"] == "catalog-"
    assert len(cat["footprints"]) == len(exposures)
    assert cat["tiles"][0]["state"] == "cancelled" and cat["tiles"][1]["state"] == "idle"
    assert s["layouts"][1]["tiles"][0]["state"] == "done"
    # pieces of a tile's or an exposure's work are that tile's or exposure's
    mon.task_event(("catalog-measure", f"{names[1]} 2/7", tok), "waiting")
    mon.task_event(("catalog-measure", f"{names[1]}-s12", tok), "waiting")
    mon.set_running([("catalog-measure", f"{names[1]} 2/7", tok)])
    mon.task_event(("skymatch-stats", f"{exposures[-1].name} overlaps 1/3", tok), "done")
    s = mon.state()
    tile = s["layouts"][-1]["tiles"][1]
    assert (tile["action"], tile["state"]) in (
        ("catalog-measure", "running"),
        ("catalog-measure", "waiting"),
    )
    fp = {f["name"]: f for f in s["layouts"][-1]["footprints"]}[exposures[-1].name]
    assert (fp["action"], fp["state"]) == ("skymatch-stats", "done")

    mon.finish("failed", "boom")
    s = mon.state()
    assert s["status"] == "failed" and s["message"] == "boom"
    # nothing is running once the run ended
    assert all(t["state"] != "running" for lay in s["layouts"] for t in lay["tiles"])


class _FakeClient:
    def __init__(self, keys):
        self.keys = keys
        self.calls = 0

    def processing(self):
        self.calls += 1
        return {"tcp://w1": list(self.keys)}


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, b"", ""


def _packaged_page() -> bytes:
    import importlib.resources

    return importlib.resources.files("image3_dask.service").joinpath("mosaic_page.html").read_bytes()


def test_page_is_package_data():
    """The page is a file of the package, declared so that a wheel (non-editable) ships it."""
    import tomllib

    page = _packaged_page().decode()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'fetch("state.json"' in page
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    assert "mosaic_page.html" in package_data["image3_dask.service"]


def test_page_http(tiny_plan):
    plan, exposures = tiny_plan
    mon = MosaicMonitor("tok")
    mon.add_plan(plan, exposures, "resample")
    name = plan.tiles[0].name
    mon.task_event(("resample-tile", name, "tok"), "waiting")
    client = _FakeClient([("resample-tile", name, "tok")])
    with MosaicPage(mon, client, port=0, poll_interval=0.0) as page:
        assert page.url.startswith("http://127.0.0.1:")
        tok = f"?token={page.token}"
        code, body, ctype = _get(page.url)
        assert code == 200 and ctype.startswith("text/html") and b"state.json" in body
        assert body == _packaged_page()
        code, body, ctype = _get(page.base_url + "state.json" + tok)
        assert code == 200 and ctype == "application/json"
        s = json.loads(body)
        assert s["layouts"][0]["tiles"][0]["state"] == "running"
        assert client.calls == 1
        assert _get(page.base_url + "nothing" + tok)[0] == 404
        mon.finish("done")
        s = json.loads(_get(page.base_url + "state.json" + tok)[1])
        assert client.calls == 1  # the scheduler is not asked after the end
        t0 = time.perf_counter()
        page.stop(linger=5.0)  # the final state was served: no wait
        assert time.perf_counter() - t0 < 2
    with pytest.raises(OSError):
        _get(page.url)


def _request(page, path: str, host: str | None = None, cookie: str | None = None):
    """GET ``path`` from the page with the given ``Host`` and ``Cookie`` headers."""
    import http.client

    conn = http.client.HTTPConnection(*page._server.server_address[:2], timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        port = page._server.server_address[1]
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        if cookie:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Set-Cookie")
    finally:
        conn.close()


def test_page_needs_its_token_and_a_local_host_name():
    mon = MosaicMonitor("tok")
    with MosaicPage(mon, port=0) as page, MosaicPage(MosaicMonitor("t2"), port=0) as other:
        port = page._server.server_address[1]
        assert len(page.token) >= 32 and page.token != other.token
        assert page.url == f"http://127.0.0.1:{port}/?token={page.token}"
        # no token, a wrong one, another page's: refused, and nothing of the run is shown
        for path in ("/", "/state.json", "/?token=", "/?token=x", f"/?token={other.token}"):
            code, body, cookie = _request(page, path)
            assert code == 403 and b"token" in body and b"tok" not in body.split(b":", 1)[0]
            assert cookie is None
        # the token in the URL: served, and a cookie (HttpOnly, SameSite=Strict) for the rest
        code, body, cookie = _request(page, f"/?token={page.token}")
        assert code == 200 and body == _packaged_page()
        assert cookie.startswith(f"{page.cookie_name}={page.token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        code, body, _ = _request(page, "/state.json", cookie=cookie.split(";")[0])
        assert code == 200 and json.loads(body)["token"] == "tok"
        wrong = f"{page.cookie_name}={other.token}"
        assert _request(page, "/state.json", cookie=wrong)[0] == 403
        assert _request(page, "/state.json", cookie=f"{other.cookie_name}={other.token}")[0] == 403
        # DNS rebinding: a foreign Host is refused even with the token
        q = f"/state.json?token={page.token}"
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            code, body, _ = _request(page, q, host=host)
            assert code == 403 and b"answers only to" in body, host
        for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}", "LOCALHOST:9999"):
            assert _request(page, q, host=host)[0] == 200, host


def test_the_ledger_tells_its_watcher(client):
    from image3_dask.graph.tasks import RunWatcher, StepFailed, TaskLedger, TaskSpec

    events = []

    class Watcher(RunWatcher):
        def task_event(self, key, state):
            events.append((key[0], key[1], state))

        def add_plan(self, plan, exposures, stage):
            raise RuntimeError("a broken watcher never fails the run")

    ledger = TaskLedger(client, "wt", progress=False, watcher=Watcher())
    assert ledger.wait(
        ledger.submit([TaskSpec("t-add", f"n{i}", max, (i, 1)) for i in range(3)]), "add"
    ) == [1, 1, 2]
    ledger.tell("add_plan", None, [], "stage")
    ledger.tell("add_tiles", "stage", [], (1, 1))  # not overridden: the base class's no-op
    with pytest.raises(StepFailed):
        ledger.wait(ledger.submit([TaskSpec("t-fail", "bad", int, ("x",))]), "fail")
    time.sleep(0.2)  # the done callbacks run on the client's thread
    assert sorted(e for e in events if e[0] == "t-add") == sorted(
        [("t-add", f"n{i}", s) for i in range(3) for s in ("waiting", "done")]
    )
    assert ("t-fail", "bad", "failed") in events and ("t-fail", "bad", "waiting") in events


def test_pipeline_page_stops_with_run(tiny, client, tmp_path):
    """A run started with mosaic_page serves it while it runs and frees the port after."""
    from image3_dask.pipeline.image3 import Image3Pipeline

    port = _free_port()
    Image3Pipeline.call(
        tiny.asn_path, output_dir=tmp_path, steps=ONLY_RESAMPLE, client=client, progress=False,
        mosaic_page=port,
    )
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/state.json")


# -- a real browser on a running job -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_GATE = threading.Event()


def _gated_resample_tile(*args, **kwargs):
    """resample_tile held until the test has watched the page mid-run."""
    from image3_dask.graph import resample

    _GATE.wait(120)
    return resample._original_resample_tile(*args, **kwargs)


@pytest.mark.slow
def test_page_in_headless_chromium(tiny, tmp_path, monkeypatch, caplog):
    browser, driver_path = chromium()
    from distributed import Client, LocalCluster
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from image3_dask.graph import resample
    from image3_dask.pipeline.image3 import Image3Pipeline

    # in-process workers (threads), so that the test holds the tile tasks with an Event
    monkeypatch.setattr(resample, "_original_resample_tile", resample.resample_tile, raising=False)
    monkeypatch.setattr(resample, "resample_tile", _gated_resample_tile)
    _GATE.clear()
    port = _free_port()
    out: dict = {}
    # the page's address with its token, as the run prints it ("Mosaic page: URL")
    caplog.set_level(logging.DEBUG, logger="image3_dask")
    monkeypatch.setattr(logging.getLogger("image3_dask"), "disabled", False)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "image3_dask"]

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster, Client(cluster) as c:

        def run():
            try:
                out["products"] = Image3Pipeline.call(
                    tiny.asn_path, output_dir=tmp_path / "out", steps=ONLY_RESAMPLE, client=c,
                    progress=False, mosaic_page=port,
                )
            except BaseException as exc:  # reported by the test below
                out["error"] = exc
            finally:
                _GATE.set()

        job = threading.Thread(target=run, daemon=True)
        job.start()
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1200,900",
                  f"--user-data-dir={tmp_path / 'chromium-profile'}"):
            opts.add_argument(a)
        drv = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            # the page comes up with the run (before the plan: no tiles yet)
            deadline = time.time() + 60
            while not [m for m in said() if m.startswith("Mosaic page: ")]:
                assert "error" not in out, out.get("error")
                assert time.time() < deadline, f"the run never said its page's address: {said()}"
                time.sleep(0.1)
            url = [m for m in said() if m.startswith("Mosaic page: ")][0].split(": ", 1)[1]
            base, token = url.split("?token=")
            assert base == f"http://127.0.0.1:{port}/" and len(token) >= 32
            assert _get(base + "state.json")[0] == 403  # no token, no state
            while True:
                try:
                    state = json.loads(_get(base + "state.json?token=" + token)[1])
                    if state["layouts"]:
                        break
                except OSError:
                    pass
                assert "error" not in out, out.get("error")
                assert time.time() < deadline, "the run never made its plan"
                time.sleep(0.2)
            n_tiles = len(state["layouts"][0]["tiles"])
            assert n_tiles >= 16  # 32x32 tiles on a ~150x150 grid
            drv.get(url)
            wait = WebDriverWait(drv, 60, poll_frequency=0.2)
            # mid-run: every tile drawn; the tiles held on the worker "running" (its 2 threads
            # and the tasks the scheduler has already sent it), the others waiting, none done
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "rect.tile")) == n_tiles)
            wait.until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "rect.tile[data-state=running]"))
                >= 2
            )
            states = [e.get_attribute("data-state")
                      for e in drv.find_elements(By.CSS_SELECTOR, "rect.tile")]
            assert set(states) == {"running", "waiting"}, states
            # the token set the page's cookie, its fetches carry it; the address bar drops it
            assert drv.current_url == base
            assert states.count("running") <= 8, states
            assert len(drv.find_elements(By.CSS_SELECTOR, "polygon.footprint")) == 2
            assert "resample" in drv.find_element(By.ID, "layouts").text
            mid = tmp_path / "mosaic_page_mid.png"
            assert drv.save_screenshot(str(mid))
            # let the tiles run: they turn done, the page says the run is done
            _GATE.set()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
                "data-status") == "done")
            tiles = drv.find_elements(By.CSS_SELECTOR, "rect.tile")
            assert len(tiles) == n_tiles
            assert {e.get_attribute("data-state") for e in tiles} == {"done"}
            assert "run done" in drv.find_element(By.ID, "status").text
            end = tmp_path / "mosaic_page_done.png"
            assert drv.save_screenshot(str(end))
            print(f"screenshots: {mid} {end}")
        finally:
            _GATE.set()
            drv.quit()
            job.join(120)
    assert "error" not in out, out.get("error")
    assert Path(out["products"]["i2d"]).exists()
    for png in (mid, end):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r000c001", "r000c001"),
        ("r000c001 2/7", "r000c001"),
        ("r002c003-s15", "r002c003"),
        ("jw01234001001_02101_00001_mirimage overlaps 1/3", "jw01234001001_02101_00001_mirimage"),
        ("jw01234001001_02101_00001_mirimage", "jw01234001001_02101_00001_mirimage"),
        ("miri_dither 3/8", "miri_dither"),
    ],
)
def test_subject_of_a_task_name(name, expected):
    assert subject(name) == expected

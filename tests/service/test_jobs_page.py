"""The page of a scheduler's jobs (``image3-dask serve``): its JSON, its token and Host check,
the command, and the page in headless Chromium listing jobs submitted to a real cluster."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.browser import chromium, headless_chrome

from image3_dask.service.jobs_page import JobsPage, job_rows
from image3_dask.service.mosaic_page import MosaicMonitor, MosaicPage

RECORDS = {
    "old-done": {
        "job": "old-done", "state": "done", "product": "p1", "output_dir": "/out/1",
        "steps": ["resample"], "steps_done": ["resample"], "submitted": 100.0,
        "started": 101.0, "finished": 111.5, "attempt": 1,
        "products": {"i2d": "/out/1/p1_i2d.fits", "crf": ["/out/1/a_crf.fits"]},
        "mosaic_page": "javascript:alert(1)",
    },
    "mid-run": {
        "job": "mid-run", "state": "running", "product": "p2", "output_dir": "s3://b/out",
        "steps": ["tweakreg", "resample"], "steps_done": ["tweakreg"], "step": "resample",
        "tasks": {"resample-tile": [3, 9]}, "submitted": 200.0, "started": 201.0,
        "attempt": 2, "mosaic_page": "http://127.0.0.1:9999/?token=x",
    },
    "waiting": {"job": "waiting", "state": "queued", "product": "p3", "submitted": 300.0},
    "broken": {
        "job": "broken", "state": "failed", "product": "p4", "submitted": 150.0,
        "started": 151.0, "finished": 152.0, "error": "<b>no such file</b>",
    },
}


class _FakeClient:
    """The scheduler calls the page makes: ``get_metadata`` and ``dashboard_link``."""

    dashboard_link = "http://127.0.0.1:8787/status"

    def __init__(self, jobs):
        self.jobs = jobs
        self.calls = 0
        self.fail: Exception | None = None

    def get_metadata(self, keys, default=None):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        assert keys == ["image3-dask-jobs"]
        return self.jobs


def _request(page, path: str, host: str | None = None, cookie: str | None = None):
    """GET ``path`` from the page with the given ``Host`` and ``Cookie`` headers."""
    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{page.port}")
        if cookie:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Content-Type"), r.getheader("Set-Cookie")
    finally:
        conn.close()


def _packaged_page() -> bytes:
    import importlib.resources

    return importlib.resources.files("image3_dask.service").joinpath("jobs_page.html").read_bytes()


def test_page_is_package_data():
    import tomllib

    page = _packaged_page().decode()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'fetch("jobs.json"' in page and "innerHTML" not in page  # record text is never HTML
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "jobs_page.html" in pyproject["tool"]["setuptools"]["package-data"]["image3_dask.service"]


def test_job_rows():
    rows = job_rows(RECORDS, now=211.0)
    assert [r["job"] for r in rows] == ["waiting", "mid-run", "broken", "old-done"]  # newest first
    by = {r["job"]: r for r in rows}
    assert by["mid-run"]["progress"] == "1/2 steps, resample (resample-tile 3/9)"
    assert by["mid-run"]["elapsed"] == 10.0 and by["mid-run"]["finished"] is None
    assert by["old-done"]["elapsed"] == 10.5 and by["old-done"]["progress"] == "1/1 steps"
    assert by["waiting"]["elapsed"] is None and by["waiting"]["started"] is None
    assert by["broken"]["error"] == "<b>no such file</b>"
    assert by["old-done"]["products"]["i2d"] == "/out/1/p1_i2d.fits"
    # only http(s) links are kept
    assert by["mid-run"]["mosaic_page"] == "http://127.0.0.1:9999/?token=x"
    assert by["old-done"]["mosaic_page"] is None


def test_jobs_json_over_http():
    client = _FakeClient(RECORDS)
    with JobsPage(client, poll_interval=60.0) as page:
        assert page.url.startswith("http://127.0.0.1:") and page.port > 0
        tok = f"?token={page.token}"
        code, body, ctype, _ = _request(page, "/" + tok)
        assert code == 200 and ctype.startswith("text/html") and body == _packaged_page()
        code, body, ctype, _ = _request(page, "/jobs.json" + tok)
        assert code == 200 and ctype == "application/json"
        s = json.loads(body)
        assert s["dashboard"] == "http://127.0.0.1:8787/status" and s["error"] == ""
        assert s["counts"] == {"queued": 1, "running": 1, "done": 1, "failed": 1}
        assert [j["job"] for j in s["jobs"]] == ["waiting", "mid-run", "broken", "old-done"]
        assert s["jobs"][1]["state"] == "running" and s["jobs"][1]["step"] == "resample"
        assert s["updated"] is not None
        # two viewers within poll_interval: the scheduler is asked once
        _request(page, "/jobs.json" + tok)
        assert client.calls == 1
        assert _request(page, "/nothing" + tok)[0] == 404
        # the scheduler stops answering: the last list stays, and the page says why
        client.fail = OSError("connection refused")
        page._asked = 0.0
        s = json.loads(_request(page, "/jobs.json" + tok)[1])
        assert client.calls == 2 and len(s["jobs"]) == 4
        assert "cannot ask the scheduler" in s["error"] and "connection refused" in s["error"]
        client.fail = None
        client.jobs = {}
        page._asked = 0.0
        s = json.loads(_request(page, "/jobs.json" + tok)[1])
        assert s["jobs"] == [] and s["error"] == "" and sum(s["counts"].values()) == 0


def test_no_dashboard_is_no_link():
    class NoDashboard(_FakeClient):
        @property
        def dashboard_link(self):
            raise KeyError("dashboard")

    with JobsPage(NoDashboard({})) as page:
        assert page.state()["dashboard"] is None
    with JobsPage(_FakeClient({}), dashboard="http://proxy.example/dask/status") as page:
        assert page.state()["dashboard"] == "http://proxy.example/dask/status"


def test_page_needs_its_token_and_a_local_host_name():
    with (
        JobsPage(_FakeClient(RECORDS)) as page,
        JobsPage(_FakeClient({})) as other,
        MosaicPage(MosaicMonitor("t"), port=0) as mosaic,
    ):
        assert len(page.token) >= 32 and page.token != other.token
        assert page.cookie_name != mosaic.cookie_name.replace(str(mosaic.port), str(page.port))
        # no token, a wrong one, another page's: refused, and no job shown
        for path in ("/", "/jobs.json", "/?token=", "/?token=x", f"/jobs.json?token={other.token}",
                     f"/jobs.json?token={mosaic.token}"):
            code, body, _, cookie = _request(page, path)
            assert code == 403 and b"token missing or wrong" in body and b"mid-run" not in body
            assert b"Jobs page: http://127.0.0.1:PORT/?token=" in body
            assert cookie is None
        # the token in the URL: served, with a cookie (HttpOnly, SameSite=Strict) for the rest
        code, body, _, cookie = _request(page, f"/?token={page.token}")
        assert code == 200 and body == _packaged_page()
        assert cookie.startswith(f"{page.cookie_name}={page.token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        code, body, _, again = _request(page, "/jobs.json", cookie=cookie.split(";")[0])
        assert code == 200 and len(json.loads(body)["jobs"]) == 4 and again is None
        assert _request(page, "/jobs.json", cookie=f"{page.cookie_name}={other.token}")[0] == 403
        # DNS rebinding: a foreign Host is refused even with the token
        q = f"/jobs.json?token={page.token}"
        for host in ("evil.example", f"evil.example:{page.port}", "127.0.0.1.evil.example", ""):
            code, body, _, _ = _request(page, q, host=host)
            assert code == 403 and b"answers only to" in body and b"mid-run" not in body, host
        for host in (f"localhost:{page.port}", "127.0.0.1", f"[::1]:{page.port}", "LOCALHOST:1"):
            assert _request(page, q, host=host)[0] == 200, host
    # a name given with allow_hosts is accepted, others still not
    with JobsPage(_FakeClient({}), allow_hosts=["Head-Node.example"]) as page:
        q = f"/jobs.json?token={page.token}"
        assert _request(page, q, host=f"head-node.example:{page.port}")[0] == 200
        assert _request(page, q, host="other-node.example")[0] == 403


def test_serve_command_errors(capsys):
    from image3_dask.cli import main

    assert main(["serve"]) == 2
    assert "needs the cluster: give --scheduler" in capsys.readouterr().err
    assert main(["serve", "--scheduler", "tcp://127.0.0.1:1", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["serve", "--scheduler", "tcp://127.0.0.1:1", "--dashboard", "ftp://x"]) == 2
    assert "--dashboard ftp://x: give an http://" in capsys.readouterr().err


def test_serve_command_prints_the_address_and_serves(monkeypatch, capsys):
    """``cmd_serve`` with a stand-in client: prints the page's address, serves it, stops."""
    import contextlib

    from image3_dask.cli import service
    from image3_dask.cli.parser import build_parser

    @contextlib.contextmanager
    def fake_remote_client(args):
        yield _FakeClient(RECORDS)

    monkeypatch.setattr(service, "remote_client", fake_remote_client)
    args = build_parser().parse_args(["serve", "--scheduler", "tcp://127.0.0.1:1"])
    assert args.host == "127.0.0.1" and args.port == 0
    stop = threading.Event()
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", service.cmd_serve(args, stop)))
    t.start()
    try:
        deadline = time.time() + 10
        while "Jobs page: " not in (text := capsys.readouterr().out):
            assert time.time() < deadline and t.is_alive()
            time.sleep(0.05)
        url = text.split("Jobs page: ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        import urllib.request

        with urllib.request.urlopen(url.replace("/?", "/jobs.json?"), timeout=10) as r:
            assert len(json.loads(r.read())["jobs"]) == 4
    finally:
        stop.set()
        t.join(10)
    assert out["rc"] == 0


# -- the page in a browser, jobs submitted to a real cluster ---------------------------------

SKIP = [
    "--steps.tweakreg.skip=true",
    "--steps.skymatch.skip=true",
    "--steps.outlier_detection.skip=true",
    "--steps.source_catalog.skip=true",
]
CLI = [sys.executable, "-m", "image3_dask.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    chromium()  # skips (or fails under IMAGE3_REQUIRE_BROWSER=1) without the browser
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from image3_dask.service.devcluster import ProcessCluster
    from image3_dask.simulate import simulate

    sim = simulate(instrument="miri", n=2, out_dir=tmp_path / "sim", seed=5, pattern="dither",
                   shape=(128, 128))
    out = tmp_path / "out"
    with ProcessCluster(tmp_path / "cluster", n_workers=2, nthreads=1) as pc:
        addr = ["--scheduler", pc.address]
        serve = subprocess.Popen([*CLI, "serve", *addr], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        drv = None
        try:
            line = serve.stdout.readline()  # the first line: its address
            assert line.startswith("Jobs page: http://127.0.0.1:"), line + serve.stderr.read()
            url = line.split(": ", 1)[1].strip()
            base, token = url.split("?token=")
            assert len(token) >= 32
            # a job whose driver needs a resource no worker has stays queued
            r = _cli("submit", str(sim.asn_path), *addr, "-o", str(out / "a"), "--job-id",
                     "parked", "--driver-resource", "nowhere", *SKIP)
            assert r.returncode == 0, r.stderr
            drv = headless_chrome(tmp_path / "chromium-profile", window="1400,900")
            drv.get(url)
            wait = WebDriverWait(drv, 120, poll_frequency=0.2)

            # the page rebuilds its rows every 2 s: each row is read in one script, at once
            # (an element found first and read later may be a replaced, stale one)
            def row_of(job):
                return drv.execute_script(
                    """const r = document.querySelector(`tr[data-job="${arguments[0]}"]`);
                    if (!r) return null;
                    const text = (sel) => { const e = r.querySelector(sel);
                                            return e ? e.textContent.trim() : null; };
                    const a = r.querySelector("td.mosaic a");
                    return {state: r.dataset.state, error: text("td.error"),
                            i2d: text('td.products div[data-kind="i2d"]'),
                            progress: text("td.progress"), elapsed: text("td.elapsed"),
                            mosaic: a ? a.href : null};""",
                    job,
                )

            def state_of(job):
                row = row_of(job)
                return row["state"] if row else None

            wait.until(lambda d: state_of("parked") == "queued")
            assert drv.current_url == base  # the cookie holds the token; the address bar not
            assert "scheduler " + pc.address in drv.find_element(By.ID, "scheduler").text
            # the scheduler's HTTP server (Dask names it "dashboard" even with --no-dashboard)
            link = drv.find_element(By.CSS_SELECTOR, "#dashboard a")
            assert link.text == "Dask dashboard"
            assert link.get_attribute("href").startswith("http://127.0.0.1:")
            # a job that runs: listed, then done with its products (the page refreshes itself)
            r = _cli("submit", str(sim.asn_path), *addr, "-o", str(out / "b"), "--job-id",
                     "ref-job", *SKIP)
            assert r.returncode == 0, r.stderr
            wait.until(lambda d: state_of("ref-job") in ("queued", "running", "done"))
            wait.until(lambda d: state_of("ref-job") == "done")
            row = row_of("ref-job")
            i2d = out / "b" / "miri_dither_i2d.fits"
            assert i2d.is_file()
            assert row["i2d"] == f"i2d: {i2d}"
            assert row["progress"] == "1/1 steps"
            assert row["elapsed"].endswith(" s")
            # the job's driver served the run's mosaic page; its address (token included) is
            # linked; the job that never started has none
            mosaic = row["mosaic"]
            assert mosaic.startswith("http://127.0.0.1:") and "token=" in mosaic, mosaic
            assert row_of("parked")["mosaic"] is None
            # newest first
            jobs = drv.execute_script(
                'return [...document.querySelectorAll("tbody tr")].map(r => r.dataset.job)')
            assert jobs == ["ref-job", "parked"]
            # cancelling the parked job: it turns failed, with why
            r = _cli("cancel", "parked", *addr)
            assert r.returncode == 0, r.stderr
            wait.until(lambda d: state_of("parked") == "failed")
            assert row_of("parked")["error"] == "cancelled before it started"
            assert drv.save_screenshot(str(tmp_path / "jobs_page.png"))
        finally:
            if drv is not None:
                drv.quit()
            serve.terminate()
            serve.wait(30)


def test_run_tells_the_mosaic_page_address_while_it_serves(client, tmp_path):
    """``Image3Pipeline.run(on_page=...)`` (what a submitted job's driver records) is called
    with the page's address once the page answers with its token, and refuses without it."""
    import urllib.error
    import urllib.request

    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import Image3Pipeline
    from image3_dask.simulate import simulate

    sim = simulate(instrument="miri", n=2, out_dir=tmp_path / "sim", seed=5, pattern="dither",
                   shape=(128, 128))
    seen = []

    def on_page(url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback test server
            seen.append((url, r.status, "mosaic" in r.read().decode().lower()))
        base = url.split("?token=")[0]
        try:
            urllib.request.urlopen(base, timeout=10)  # noqa: S310
        except urllib.error.HTTPError as exc:
            seen.append(("no token", exc.code))

    skip = ("tweakreg", "skymatch", "outlier_detection", "source_catalog")
    config = PipelineConfig({s: {"skip": True} for s in skip})
    products = Image3Pipeline(config).run(
        sim.asn_path, tmp_path / "out", client=client, progress=False, mosaic_page=0,
        on_page=on_page,
    )
    assert products["i2d"].is_file()
    assert len(seen) == 2, seen
    url, status, is_page = seen[0]
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    assert status == 200 and is_page
    assert seen[1] == ("no token", 403)

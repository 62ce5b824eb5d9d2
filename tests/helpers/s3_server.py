"""A real S3-compatible server for the tests: moto's server, in its own process, on 127.0.0.1.

Run as a program (``python tests/s3_server.py PORT LOG``) it serves moto's S3 over HTTP and
appends one JSON line per request to LOG: method, key, Range header, bytes sent and received.
The tests read that log to prove ranged reads (:func:`read_log`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto S3 server process; ``endpoint`` is its URL, ``log`` its request log."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = Path(folder) / "s3-requests.jsonl"
        self.log.write_text("")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "s3_server.py"), str(self.port), str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(folder) / "s3-server.err", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto S3 server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def read_log(self) -> list[dict]:
        """Every request so far (one dict each: method, key, range, sent, received)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def mark(self) -> int:
        """Number of requests so far (to read the log from here on)."""
        return len(self.read_log())


def _serve(port: int, log_path: str) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    moto_app = DomainDispatcherApplication(create_backend_app)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115

    def app(environ, start_response):
        sent = 0
        status_code = [""]
        t0 = time.time()

        def start(status, headers, exc_info=None):
            status_code[0] = status.split()[0]
            return start_response(status, headers, exc_info)

        body = moto_app(environ, start)
        try:
            for chunk in body:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            url = urlsplit(environ.get("RAW_URI") or environ.get("PATH_INFO", ""))
            log.write(
                json.dumps(
                    {
                        "method": environ["REQUEST_METHOD"],
                        "key": unquote(environ.get("PATH_INFO", "")),
                        "query": environ.get("QUERY_STRING", "") or url.query,
                        "range": environ.get("HTTP_RANGE"),
                        "status": status_code[0],
                        "sent": sent,
                        "received": int(environ.get("CONTENT_LENGTH") or 0),
                        "t0": t0,
                        "t1": time.time(),
                    }
                )
                + "\n"
            )

    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    parent = os.getppid()

    def orphaned() -> None:  # the test process died without stopping us: stop too
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    _serve(int(sys.argv[1]), sys.argv[2])

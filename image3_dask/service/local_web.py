"""A small web page served from a thread, open only to whoever holds its token.

Shared by the run's mosaic page (:mod:`image3_dask.service.mosaic_page`) and the page of a
scheduler's jobs (:mod:`image3_dask.service.jobs_page`). :class:`TokenPage` is the server; a
page subclasses it and answers its paths in :meth:`TokenPage.respond`.

Access, as Jupyter's: the page listens on ``127.0.0.1`` (unless told otherwise) and answers only
requests that carry its random token (``?token=...`` in the URL it prints; the first such request
sets a cookie, ``HttpOnly`` and ``SameSite=Strict``, so that the page's own fetches need no
token) and whose ``Host`` header names this machine (``127.0.0.1``, ``localhost``, ``::1``, the
address the page is bound to or a name it was told to accept, any port): another local user, or
a web site that rebinds its DNS name to 127.0.0.1, gets ``403``.
"""

from __future__ import annotations

import hmac
import http.cookies
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("image3_dask")

__all__ = ["LOCAL_HOSTS", "TokenPage", "host_name"]

#: Host names a page answers to, besides the address it is bound to (any port).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:8000`` -> ``::1``), lowercase."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


class _Handler(BaseHTTPRequestHandler):
    page: TokenPage  # set on the subclass made per server

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        allowed = self.page.allowed_hosts
        if host_name(self.headers.get("Host", "")) not in allowed:
            self._refuse("this page answers only to " + ", ".join(sorted(allowed)))
            return
        given = urllib.parse.parse_qs(url.query).get("token", [""])[-1]
        cookie = http.cookies.SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            pass
        morsel = cookie.get(self.page.cookie_name)
        from_query = self.page.check_token(given)
        if not (from_query or (morsel is not None and self.page.check_token(morsel.value))):
            self._refuse(
                "token missing or wrong: open the address image3-dask printed "
                f"({self.page.title}: http://127.0.0.1:PORT/?token=...)"
            )
            return
        answer = self.page.respond(url.path)
        if answer is None:
            self.send_error(404)
            return
        body, ctype = answer
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        if from_query:
            self.send_header(
                "Set-Cookie",
                f"{self.page.cookie_name}={self.page.token}; Path=/; HttpOnly; SameSite=Strict",
            )
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")  # the token stays on this page
        self.send_header("X-Content-Type-Options", "nosniff")

    def _refuse(self, why: str) -> None:
        body = f"403 Forbidden: {why}\n".encode()
        self.send_response(403)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug(f"{self.page.title}: " + format, *args)


class TokenPage:
    """An HTTP server in a daemon thread that answers only its token and local host names.

    Subclasses set :attr:`title` and :attr:`cookie_prefix` and implement :meth:`respond`.

    Parameters
    ----------
    host : str
        Interface to listen on (default: this machine only).
    port : int
        Port; 0 picks a free one.
    token : str, optional
        The secret every request must carry (default: 32 random bytes, URL-safe).
    allow_hosts : iterable of str, optional
        More names accepted in the ``Host`` header (e.g. the name of the machine, when the page
        listens on another interface than the loopback one).
    """

    #: Name of the page in its log lines, its thread and the 403 message (``Mosaic page``).
    title = "page"
    #: The cookie holding the token is ``<cookie_prefix>_<port>``.
    cookie_prefix = "image3_token"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_hosts: Iterable[str] = (),
    ):
        #: The secret in the page's URL (``?token=...``) and in its cookie.
        self.token = token or secrets.token_urlsafe(32)
        handler = type(f"{type(self).__name__}Handler", (_Handler,), {"page": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._extra_hosts = frozenset({host.lower(), *(h.lower() for h in allow_hosts)})

    def respond(self, path: str) -> tuple[bytes, str] | None:
        """The body and content type of ``path`` (the token was checked), `None` for 404."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/`` of the page (without the token: answered with 403)."""
        host, port = self._server.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    @property
    def url(self) -> str:
        """``http://HOST:PORT/?token=TOKEN``: the address to open."""
        return f"{self.base_url}?token={self.token}"

    @property
    def port(self) -> int:
        """The port the page listens on."""
        return int(self._server.server_address[1])

    @property
    def cookie_name(self) -> str:
        """The cookie holding the token (one per port: cookies do not tell ports apart)."""
        return f"{self.cookie_prefix}_{self.port}"

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host names accepted in the ``Host`` header (:data:`LOCAL_HOSTS`, the bound one and
        those given as ``allow_hosts``)."""
        return LOCAL_HOSTS | self._extra_hosts | {str(self._server.server_address[0]).lower()}

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the page's token (compared in constant time)."""
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def start(self):
        """Serve in a daemon thread; returns self."""
        name = "image3-dask-" + self.title.lower().replace(" ", "-")
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

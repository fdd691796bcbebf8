"""Serve a generated corpus over HTTP on 127.0.0.1 with its planted behaviours.

    log = []
    with serve(cfg, request_log=log) as base_url:   # base_url like http://127.0.0.1:18431
        ...download...
    # log: one {"method", "path", "host", "status"} per request, in arrival order

What each URL does is looked up in the corpus's routes.json (written at generation), never recomputed:
404 for dead links and unknown paths, 500/503 for server errors, a `slow_seconds` delay for slow images,
text/html for non-images, `X-Robots-Tag` for opted-out images, 302 + Location for planted redirects,
robots.txt at /robots.txt, image/jpeg or image/png otherwise.

The request log is the ground truth for "no request was made": a test that a downloader never fetched a
robots-disallowed path or an SSRF probe (which all lead back here) reads it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from synthweb.config import WebConfig
from synthweb.corpus import Corpus, ensure_corpus

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request stuck in a slow delay must not block shutdown
    routes: dict[str, dict]
    files_dir: str
    slow_seconds: float
    stopping: threading.Event
    request_log: list | None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "synthweb/1.0"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)  # quiet: no line per request on stderr

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def _respond(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        route = self.server.routes.get(path)
        if self.server.request_log is not None:  # list.append is atomic: safe from the handler threads
            self.server.request_log.append({"method": self.command, "path": path,
                                            "host": self.headers.get("Host", ""),
                                            "user_agent": self.headers.get("User-Agent", ""),
                                            "status": route["status"] if route else 404})
        if route is None:
            self._send(404, "text/html", b"<html><body>Not found</body></html>\n", {}, send_body)
            return
        # An Event rather than sleep, so a shutting-down server drops slow requests at once.
        if route.get("slow") and self.server.stopping.wait(self.server.slow_seconds):
            return
        status = int(route["status"])
        if route.get("file"):
            with open(os.path.join(self.server.files_dir, route["file"]), "rb") as f:
                body = f.read()
        else:
            body = f"<html><body>{status} {self.responses.get(status, ('',))[0]}</body></html>\n".encode()
        self._send(status, route["content_type"], body, route.get("headers", {}), send_body)

    def _send(self, status: int, content_type: str, body: bytes, headers: dict, send_body: bool) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if send_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a downloader's timeout): normal for slow images


def _bind(cfg: WebConfig) -> _Server:
    try:
        return _Server((cfg.host, cfg.port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"web.port: {cfg.host}:{cfg.port} is already in use (another "
                          "synthweb server or another program); stop it or set web.port to a free port") from exc
        raise OSError(exc.errno, f"web.host/web.port: cannot bind {cfg.host}:{cfg.port}: {exc.strerror}") from exc


@contextlib.contextmanager
def serve(cfg: WebConfig, corpus: Corpus | None = None, request_log: list | None = None) -> Iterator[str]:
    """Serve the corpus of `cfg` (generated first if missing) in a background thread; yields the base URL.

    With `request_log`, every request is appended to it as {"method", "path", "host", "user_agent", "status"}."""
    corpus = corpus or ensure_corpus(cfg)
    with open(corpus.routes_path, encoding="utf-8") as f:
        routes = json.load(f)
    server = _bind(cfg)
    server.routes, server.files_dir = routes, corpus.files_dir
    server.slow_seconds, server.stopping = cfg.slow_seconds, threading.Event()
    server.request_log = request_log
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"synthweb-{cfg.port}", daemon=True)
    thread.start()
    log.info("serving corpus %s at %s", corpus.corpus_id, cfg.base_url())
    try:
        yield cfg.base_url()
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

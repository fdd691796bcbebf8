"""A quiet threaded HTTP server on 127.0.0.1 for tests: a handler base with one reply helper, and a context
manager that serves in a daemon thread and always shuts down."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Subclasses write do_GET with self.reply(...); request logging stays out of the test output."""

    def reply(self, code: int, body: bytes, ctype: str, headers: dict | None = None, length: bool = True) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            if length:  # False: a body with no Content-Length (the client must cap bytes while reading)
                self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client hung up on purpose (caps, opt-outs, timeouts)
            pass

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve `handler` on a free loopback port; the server's port is server.server_address[1]."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

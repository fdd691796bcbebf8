"""An S3 fault-injecting HTTP proxy for tests: in front of an S3 server (the moto server of tests/conftest.py),
on 127.0.0.1, it answers a seeded fraction of requests with S3's own throttling error (503 SlowDown, the XML
body S3 sends) and forwards every other request unchanged.

    with S3FaultProxy(upstream="http://127.0.0.1:PORT", rate=0.1, seed=7) as proxy:
        # point AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL at proxy.endpoint, run the code under test
        proxy.injected          # Counter: 503s answered, by S3 operation (PutObject, GetObject, UploadPart, ...)
        proxy.log               # every request: time, operation, key, status, SDK invocation id and attempt
        proxy.retry_gaps()      # seconds between each injected 503 and the client's retry of that request

Which requests fail is decided per request, not by arrival order (concurrent clients reorder arrivals): the
n-th occurrence of (operation, key, query) fails when sha256(seed, operation, key, query, n) falls below `rate`
(the key without its bucket, the query without the server-chosen uploadId: the same on every run), except right
after `max_consecutive` 503s in a row for the same request, so every request gets through within that many
retries and the test is about recovery, not about exhausting a retry budget.

`hold(match)` parks the next request that `match`es until released, and tells the test which client port sent
it: tests use it to find (and kill) the process that is in the middle of a given read.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

SLOWDOWN_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 "<Message>Please reduce your request rate.</Message><RequestId>{rid}</RequestId>"
                 "<HostId>{rid}</HostId></Error>")
# Hop-by-hop headers (RFC 9110 7.6.1) and framing this proxy redoes itself: never forwarded as they are.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "expect", "content-length"}


def s3_operation(method: str, path: str, query: str, headers: dict[str, str]) -> str:
    """The S3 API operation a path-style request calls (enough of them to report and filter by)."""
    q = parse_qs(query, keep_blank_values=True)
    has_key = path.strip("/").count("/") >= 1
    if method == "PUT":
        if "partNumber" in q:
            return "UploadPart"
        if not has_key:
            return "CreateBucket"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in q else "POST"
    if method == "GET":
        if has_key:
            return "ListParts" if "uploadId" in q else "GetObject"
        return "ListMultipartUploads" if "uploads" in q else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in q else ("DeleteObject" if has_key else "DeleteBucket")
    return method


@dataclass
class Request:
    """One request as the proxy saw it."""

    time: float  # time.monotonic() when its headers and body had arrived
    op: str
    path: str
    query: str
    status: int
    injected: bool
    invocation: str  # amz-sdk-invocation-id: the same for every attempt of one SDK call ("" if absent)
    attempt: int  # amz-sdk-request "attempt=N": which attempt of its SDK call this is (0 if absent)
    max_attempts: int  # amz-sdk-request "max=N": the client's retry limit (0 if absent)
    client_port: int

    @property
    def target(self) -> tuple[str, str, str]:
        return self.op, self.path, self.query



class Hold:
    """A request parked by S3FaultProxy.hold until release()."""

    def __init__(self, match: Callable[[str, str], bool]) -> None:
        self.match = match  # (operation, path) -> park it?
        self.arrived = threading.Event()
        self.released = threading.Event()
        self.client_port = 0  # the parked request's client socket: which process is waiting on it

    def release(self) -> None:
        self.released.set()


class S3FaultProxy:
    """The proxy (see the module docstring); a context manager: serving inside the `with` block."""

    def __init__(self, upstream: str, rate: float, seed: int = 0, ops: Collection[str] | None = None,
                 max_consecutive: int = 1) -> None:
        if not 0.0 <= rate <= 1.0 or max_consecutive < 1:
            raise ValueError(f"S3FaultProxy: rate must lie in [0, 1] (got {rate}), max_consecutive >= 1")
        split = urlsplit(upstream)
        self.upstream_host, self.upstream_port = split.hostname or "127.0.0.1", split.port or 80
        self.rate, self.seed, self.ops, self.max_consecutive = rate, seed, ops, max_consecutive
        self.injected: Counter[str] = Counter()
        self.log: list[Request] = []
        self._seen: Counter[tuple[str, str, str]] = Counter()
        self._streak: Counter[tuple[str, str, str]] = Counter()
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    # ---------------------------------------------------------------------------------------------- control

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for h in self._holds:
            h.release()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, match: Callable[[str, str], bool]) -> Hold:
        """Park the next request for which match(operation, path) is true (injection does not apply to it)."""
        h = Hold(match)
        with self._lock:
            self._holds.append(h)
        return h

    def retry_gaps(self) -> list[tuple[Request, Request | None, float]]:
        """(injected 503, the client's next attempt at the same request or None, seconds between them)."""
        out = []
        log = sorted(self.log, key=lambda r: r.time)
        for i, r in enumerate(log):
            if not r.injected:
                continue
            nxt = next((s for s in log[i + 1:] if s.target == r.target
                        and (not r.invocation or s.invocation == r.invocation)), None)
            out.append((r, nxt, (nxt.time - r.time) if nxt else float("inf")))
        return out

    # ------------------------------------------------------------------------------------------- decisions

    def _decide(self, op: str, path: str, query: str) -> bool:
        # Keyed without the bucket (tests make fresh random ones) and the uploadId (the server picks it): the same
        # requests get the same decisions on every run.
        query = urlencode(sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "uploadId"))
        target = (op, path.lstrip("/").partition("/")[2], query)
        with self._lock:
            n = self._seen[target]
            self._seen[target] += 1
            if (self.ops is not None and op not in self.ops) or self._streak[target] >= self.max_consecutive:
                self._streak[target] = 0
                return False
            digest = hashlib.sha256(f"{self.seed}/{op}/{target[1]}?{query}/{n}".encode()).digest()
            inject = int.from_bytes(digest[:8], "big") / 2**64 < self.rate
            self._streak[target] = self._streak[target] + 1 if inject else 0
            if inject:
                self.injected[op] += 1
            return inject

    def _take_hold(self, op: str, path: str) -> Hold | None:
        with self._lock:
            for h in self._holds:
                if not h.arrived.is_set() and h.match(op, path):
                    h.arrived.set()
                    return h
        return None

    # --------------------------------------------------------------------------------------------- serving

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients expect; every response sets its length

            def log_message(self, format: str, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                body = self._body()  # always read whole: the connection stays usable after a 503
                split = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                op = s3_operation(self.command, split.path, split.query, headers)
                arrived = time.monotonic()
                hold = proxy._take_hold(op, split.path)
                if hold is not None:
                    hold.client_port = self.client_address[1]
                    hold.released.wait(timeout=300)
                inject = hold is None and proxy._decide(op, split.path, split.query)
                sdk = dict(part.strip().partition("=")[::2] for part in headers.get("amz-sdk-request", "").split(";"))
                record = Request(arrived, op, split.path, split.query, 503, inject,
                                 headers.get("amz-sdk-invocation-id", ""), int(sdk.get("attempt") or 0),
                                 int(sdk.get("max") or 0), self.client_address[1])
                if inject:
                    rid = uuid.uuid4().hex[:16].upper()
                    payload = b"" if self.command == "HEAD" else SLOWDOWN_BODY.format(rid=rid).encode()
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-amz-request-id", rid)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                    try:
                        fwd = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                        if body or self.command in ("PUT", "POST"):
                            fwd["Content-Length"] = str(len(body))
                        conn.request(self.command, self.path, body=body, headers=fwd)
                        resp = conn.getresponse()
                        payload = resp.read()
                        record.status = resp.status
                        self.send_response(resp.status, resp.reason)
                        for k, v in resp.getheaders():
                            if k.lower() not in HOP_BY_HOP:
                                self.send_header(k, v)
                        # A HEAD answer carries the object's length with no body: pass the upstream's on.
                        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                        self.send_header("Content-Length", length or str(len(payload)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(payload)
                    finally:
                        conn.close()
                with proxy._lock:
                    proxy.log.append(record)

            def _handle(self) -> None:
                try:
                    self._serve()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (or was killed) mid-request

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler

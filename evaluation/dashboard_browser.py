"""Open a published dashboard in headless Chromium: what the console said, facts read from the DOM, and a
full-page screenshot for a person to look at.

    python -m evaluation.dashboard_browser data/dashboard --screenshot /tmp/dashboard.png

A local site folder is served on 127.0.0.1 for the visit; an http(s):// URL is opened as it is (an S3 website).
Exit status 1 when the page logged an error (a script exception, a console.error, a resource that failed to
load, a Content-Security-Policy violation), else 0.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-terminated JSON on the
child's fds 3 and 4, what Puppeteer and Playwright use), so nothing but the browser binary is needed: Debian's
`chromium` package, or the binary named by WITFORGE_CHROMIUM.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Self

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless=new", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
         "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--no-sandbox",
         "--disable-dev-shm-usage", "--window-size=1400,900")
# --no-sandbox: CI containers run as root, where Chromium refuses its sandbox; the page is our own site.


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    """The browser binary: WITFORGE_CHROMIUM, else the first of BROWSERS on PATH."""
    named = os.environ.get("WITFORGE_CHROMIUM")
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise BrowserError(f"WITFORGE_CHROMIUM={named} is not an executable file")
        return named
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError(f"no Chromium found (looked for {', '.join(BROWSERS)} on PATH): install Debian's "
                       f"`chromium` package or set WITFORGE_CHROMIUM to the binary")


@dataclass
class PageReport:
    url: str
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions, failed loads, CSP violations, in the order they came."""
    warnings: list[str] = field(default_factory=list)
    facts: Any = None
    """What the `probe` expression returned (JSON)."""
    screenshot: str = ""


class Chromium:
    """A headless Chromium and one DevTools connection to it over a pipe."""

    def __init__(self, binary: str | None = None, timeout_s: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        self.timeout_s = timeout_s
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []

    def __enter__(self) -> Self:
        self._profile = tempfile.mkdtemp(prefix="witforge-chromium-")
        self._log = open(os.path.join(self._profile, "chromium.log"), "wb")
        # Chromium reads commands on fd 3 and writes replies on fd 4: a POSIX shell moves our stdin/stdout
        # pipes there, sends the real stdout to the log, then becomes the browser (exec keeps the pid).
        wiring = 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2'
        self.proc = subprocess.Popen(["/bin/sh", "-c", wiring, "sh", self.binary, *FLAGS,
                                      f"--user-data-dir={self._profile}", "about:blank"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._w, self._r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:
            self.call("Browser.getVersion")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close")
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    # ---- the protocol ------------------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout_s:g} s{self._log_tail()}")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}){self._log_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()[-5:]
        return (": " + " | ".join(text)) if text else ""

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            reply = self._read_message(deadline)
            if "method" in reply:
                self.events.append(reply)

    # ---- a visit -----------------------------------------------------------------------------------------

    def visit(self, url: str, probe: str = "null", screenshot: str = "", width: int = 1400,
              max_height: int = 12000) -> PageReport:
        """Load `url`, wait for its load event, evaluate `probe` (a JS expression), save a full-page PNG."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        start = len(self.events)
        nav = self.call("Page.navigate", {"url": url}, session)
        if nav.get("errorText"):
            raise BrowserError(f"{url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        # A round trip after load: events the page raised while loading are in by the time it returns.
        facts = self.call("Runtime.evaluate", {"expression": probe, "returnByValue": True, "awaitPromise": True},
                          session)
        if "exceptionDetails" in facts:
            raise BrowserError(f"probe failed: {facts['exceptionDetails'].get('text')}")
        report = PageReport(url, facts=facts.get("result", {}).get("value"))
        for ev in self.events[start:]:
            if ev.get("sessionId") == session:
                _classify(ev, report)
        if screenshot:
            size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": max(width, size["width"]), "height": min(size["height"], max_height),
                    "scale": 1}
            shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                        "clip": clip}, session)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            report.screenshot = screenshot
        self.call("Target.closeTarget", {"targetId": target})
        return report


def _classify(ev: dict, report: PageReport) -> None:
    method, p = ev.get("method"), ev.get("params", {})
    if method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        report.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
    elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        (report.warnings if p["type"] == "warning" else report.errors).append(f"console.{p['type']}: {text}")
    elif method == "Log.entryAdded":
        entry = p.get("entry", {})
        text = f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
        if entry.get("level") == "error":
            report.errors.append(text)
        elif entry.get("level") == "warning":
            report.warnings.append(text)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(directory: str) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port) for the duration; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def site_url(site: str) -> Iterator[str]:
    if site.startswith(("http://", "https://")):
        yield site
    elif os.path.isdir(site):
        with serve(site) as url:
            yield url
    else:
        raise BrowserError(f"{site}: neither an http(s):// URL nor a local site folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.dashboard_browser",
                                     description="Load a dashboard in headless Chromium: console errors, screenshot.")
    parser.add_argument("site", help="a local site folder (served on 127.0.0.1) or an http(s):// URL")
    parser.add_argument("--screenshot", default="", help="where to save a full-page PNG")
    args = parser.parse_args(argv)
    try:
        with site_url(args.site) as url, Chromium() as browser:
            report = browser.visit(url, screenshot=args.screenshot)
    except BrowserError as exc:
        print(f"python -m evaluation.dashboard_browser: {exc}", file=sys.stderr)
        return 2
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.errors:
        print(f"error: {line}")
    if report.screenshot:
        print(report.screenshot)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())

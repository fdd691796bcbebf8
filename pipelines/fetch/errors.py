"""Why a fetch failed: one reason per failure, carried in img2dataset's `error_message` as "<reason>: <detail>".

The reason is the funnel's drop reason (pipelines.stages.download.classify_error reads the prefix back), so
it must stay one of REASONS. TRANSIENT reasons are the ones a later attempt may cure; the retry pass
(pipelines.fetch.retry) refetches only those, and never a success.
"""

from __future__ import annotations

import re

SSRF_BLOCKED = "ssrf_blocked"
"""The URL (or a redirect hop) names, or resolves to, an address we must not connect to."""
ROBOTS_DISALLOWED = "robots_disallowed"
"""robots.txt of the host disallows the URL for our user-agent token: nothing but robots.txt was requested."""
ROBOTS_UNREACHABLE = "robots_unreachable"
"""robots.txt answered 5xx: RFC 9309 says assume everything is disallowed until it answers."""
CRAWL_DELAY = "crawl_delay"
"""robots.txt asks for more seconds between requests than pipeline.download.max_crawl_delay: the host is
skipped (nothing but robots.txt was requested) rather than crawled faster than its owner asked."""
OPT_OUT = "opt_out"
"""The image response carries an X-Robots-Tag directive that opts it out (noai, noimageai...)."""
TOO_LARGE = "too_large"
"""More bytes than pipeline.download.max_image_bytes (declared or received)."""
TOO_MANY_PIXELS = "too_many_pixels"
"""The image header declares more pixels than pipeline.download.max_image_pixels (never decoded)."""
TIMEOUT = "timeout"
DNS_ERROR = "dns_error"
CONNECTION_ERROR = "connection_error"
BAD_URL = "bad_url"
"""Not an http(s) URL with a host, or a port that is not a number."""
REDIRECT_ERROR = "redirect_error"
"""Too many redirects, or a redirect without a usable Location."""
HTTP_404, HTTP_429, HTTP_4XX, HTTP_5XX = "http_404", "http_429", "http_4xx", "http_5xx"
DECODE_ERROR = "decode_error"
OTHER = "other"

REASONS = frozenset({
    SSRF_BLOCKED, ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE, CRAWL_DELAY, OPT_OUT, TOO_LARGE, TOO_MANY_PIXELS, TIMEOUT,
    DNS_ERROR, CONNECTION_ERROR, BAD_URL, REDIRECT_ERROR, HTTP_404, HTTP_429, HTTP_4XX, HTTP_5XX, DECODE_ERROR, OTHER,
})
TRANSIENT = frozenset({TIMEOUT, DNS_ERROR, CONNECTION_ERROR, HTTP_5XX, HTTP_429, ROBOTS_UNREACHABLE})

_PREFIX = re.compile(r"^([a-z0-9_]+): ")


class FetchError(Exception):
    """A fetch refused or failed for `reason` (one of REASONS); str() is the error_message img2dataset stores."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown fetch failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT

    def __reduce__(self):  # picklable with both arguments (Ray and multiprocessing ship exceptions)
        return (FetchError, (self.reason, self.detail))


def http_reason(status: int) -> str:
    if status == 404:
        return HTTP_404
    if status == 429:
        return HTTP_429
    return HTTP_5XX if status >= 500 else HTTP_4XX


def reason_of_message(message: str | None) -> str | None:
    """The reason a FetchError message starts with, or None for messages written by someone else."""
    m = _PREFIX.match(message or "")
    return m.group(1) if m and m.group(1) in REASONS else None


_HTTP = re.compile(r"HTTP Error (\d{3})")
# Words of urllib/socket messages (img2dataset's own fetcher, or a library below ours) meaning the
# connection failed.
_CONNECTION = ("urlopen error", "connection", "remote end closed", "incompleteread", "incomplete read",
               "no route to host", "errno", "ssl", "badstatusline")
_DNS = ("name or service not known", "temporary failure in name resolution", "nodename nor servname")


def classify(status: str | None, message: str | None) -> str | None:
    """The drop reason of one img2dataset row (None for a success).

    Our client's messages carry their reason as a prefix; img2dataset's own messages (its resizer's, or its
    urllib fetcher's when run without ours) are recognised by their words."""
    if status == "success":
        return None
    if status == "failed_to_resize":  # the resizer decodes every image: not an image, truncated, too big...
        return DECODE_ERROR
    msg = message or ""
    ours = reason_of_message(msg)
    if ours:
        return ours
    low = msg.lower()
    if "x-robots-tag" in low:
        return OPT_OUT
    m = _HTTP.search(msg)
    if m:
        code = int(m.group(1))
        return http_reason(code) if code >= 400 else OTHER
    if "timed out" in low or "timeout" in low:
        return TIMEOUT
    if any(k in low for k in _DNS):
        return DNS_ERROR
    if any(k in low for k in _CONNECTION):
        return CONNECTION_ERROR
    return OTHER

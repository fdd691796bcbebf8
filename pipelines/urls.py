"""URL resolution, validation and normalisation of image links found on crawled pages.

One image under trivially different spellings of its URL must be recognised as one (uids and the exact-URL
dedupe depend on it), and a link that cannot be fetched must be dropped with a reason the funnel can count:

    url = normalize_url(absolutize(src, page_url))   # raises UrlError(reason) for an unusable link
    except UrlError as e: e.reason                   # "malformed_url" | "unsupported_scheme" | "too_long"

UrlError is a ValueError, so callers that only care whether a URL is usable may catch ValueError.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

MALFORMED = "malformed_url"
UNSUPPORTED_SCHEME = "unsupported_scheme"
TOO_LONG = "too_long"
MAX_URL_CHARS = 2048
"""Longest normalised URL accepted by default: what most servers, CDNs and browsers still handle reliably."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Browsers delete ASCII tab and newline anywhere in a URL (WHATWG URL parsing) and trim C0 controls and spaces
# at both ends; links in real HTML contain them often (attributes wrapped over lines).
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
# Characters a path may keep as they are: RFC 3986 unreserved + sub-delims + ":@/" and "%" (existing escapes).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class UrlError(ValueError):
    """A link that cannot become a fetchable http(s) URL; `reason` is the funnel's drop reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def clean(src: str) -> str:
    """A raw attribute value as a browser reads it: tabs/newlines removed, control chars and spaces trimmed."""
    return src.translate(_TAB_NEWLINE).strip(_C0_AND_SPACE)


def absolutize(src: str, page_url: str) -> str:
    """Resolve an <img src> (or a WAT link url) against the page it was found on (or its <base href>)."""
    try:
        return urljoin(page_url, clean(src))
    except ValueError as exc:  # urljoin parses both sides: e.g. "http://[::1" is not a URL
        raise UrlError(MALFORMED, f"cannot resolve {src!r} against {page_url!r}: {exc}") from None


def _host(hostname: str, url: str) -> str:
    host = hostname.lower().rstrip(".")  # "example.com." is example.com
    if not host:
        raise UrlError(MALFORMED, f"URL without a host: {url!r}")
    if ":" in host:  # an IPv6 literal (urlsplit already checked the brackets)
        if not re.fullmatch(r"[0-9a-f:.]+(%[\w.~-]+)?", host):
            raise UrlError(MALFORMED, f"bad IPv6 host in {url!r}")
        return f"[{host}]"
    if not host.isascii():
        try:  # internationalised names: one spelling (punycode) for the same host
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlError(MALFORMED, f"host of {url!r} is not a valid internationalised name") from None
    if _IPV4.match(host):
        if any(int(part) > 255 for part in host.split(".")):
            raise UrlError(MALFORMED, f"bad IPv4 host in {url!r}")
        return host
    if not _HOSTNAME.match(host):
        raise UrlError(MALFORMED, f"bad host {host!r} in {url!r}")
    return host


def normalize_url(url: str, max_chars: int = MAX_URL_CHARS) -> str:
    """Lower-case scheme and host (IDNA for non-ASCII hosts), drop default ports, fragments, user info and empty
    queries, sort query parameters, percent-encode what a browser would (spaces, non-ASCII) in the path.

    Paths are kept case-sensitive (servers treat them so). Raises UrlError with reason MALFORMED (no scheme, no
    or bad host, bad port, unparsable), UNSUPPORTED_SCHEME (not http/https: ftp:, javascript:, mailto: ...) or
    TOO_LONG (more than max_chars before or after normalisation).
    """
    url = clean(url)
    if len(url) > max_chars:  # checked first: never spend parsing time on megabyte-long attribute values
        raise UrlError(TOO_LONG, f"URL of {len(url)} chars (limit {max_chars})")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise UrlError(MALFORMED, f"unparsable URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise UrlError(MALFORMED, f"not an absolute URL: {url!r}")
    if scheme not in _DEFAULT_PORTS:
        raise UrlError(UNSUPPORTED_SCHEME, f"not an http(s) URL: {url!r}")
    host = _host(parts.hostname or "", url)
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    out = urlunsplit((scheme, netloc, path, query, ""))
    if len(out) > max_chars:  # percent-encoding can lengthen a URL past the limit
        raise UrlError(TOO_LONG, f"normalised URL of {len(out)} chars (limit {max_chars})")
    return out

"""URL normalisation, so one image under trivially different URLs is recognised as one (exact URL dedupe)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def absolutize(src: str, page_url: str) -> str:
    """Resolve an <img src> against the page it was found on."""
    return urljoin(page_url, src.strip())


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop default ports, fragments and empty queries, sort query parameters.

    Paths are kept case-sensitive (servers treat them so). Raises ValueError on URLs that are not http(s).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"URL without a host: {url!r}")
    port = parts.port
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):  # IPv6 literal
        netloc = f"[{host}]" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = parts.path or "/"
    return urlunsplit((scheme, netloc, path, query, ""))

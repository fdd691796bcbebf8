"""One crawl record -> the images of one page, for both formats Common Crawl publishes.

    page_url, page = read_page(record, max_page_bytes)   # None for records that describe no HTML page

- WARC: a `response` record whose HTTP Content-Type is HTML; the payload is parsed (html_images.parse_html).
- WAT: a `metadata` record with a JSON payload (Content-Type application/json) whose
  Envelope.WARC-Header-Metadata.WARC-Type is "response" and whose
  Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata exists. Images are the Links entries with
  path "IMG@/src" (url = the raw src attribute, alt = the alt attribute), in document order; Head.Base is the
  <base href>; the language hint comes from Head.Metas (http-equiv content-language, name language) and the
  HTTP Content-Language header. Common Crawl's WAT does not keep <html lang>, so a page that declares its
  language only there has a hint from its WARC record and none from its WAT record.
The format is decided per record (record type, then content type), so a file may even mix both.
"""

from __future__ import annotations

import json

from pipelines.stages import html_images
from pipelines.stages.html_images import ImgTag, PageImages

HTML_TYPES = ("text/html", "application/xhtml+xml")
IMG_SRC_PATH = "IMG@/src"


class BadWatRecord(ValueError):
    """A metadata record that claims to be JSON but is not a WAT envelope (counted, never fatal)."""


def _charset(content_type: str) -> str:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"\'')
    return "utf-8"


def decode(payload: bytes, content_type: str) -> str:
    try:
        return payload.decode(_charset(content_type), errors="replace")
    except LookupError:  # an unknown charset name in the header
        return payload.decode("utf-8", errors="replace")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def warc_page(record, max_page_bytes: int) -> tuple[str, PageImages] | None:
    if record.rec_type != "response" or record.http_headers is None:
        return None
    ctype = record.http_headers.get_header("Content-Type") or ""
    if _media_type(ctype) not in HTML_TYPES:
        return None
    page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
    html = decode(record.content_stream().read(max_page_bytes), ctype)
    return page_url, html_images.parse_html(html, page_url, record.http_headers.get_header("Content-Language"))


def _header(headers: dict, name: str) -> str | None:
    # WAT keeps the server's header spelling ("content-language", "Content-Language" ...).
    lowered = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == lowered and isinstance(value, str):
            return value
    return None


def wat_page_images(envelope: dict, page_url: str) -> PageImages | None:
    """PageImages from a WAT Envelope of a `response` record, or None if it describes no HTML page."""
    header_meta = envelope.get("WARC-Header-Metadata") or {}
    if header_meta.get("WARC-Type") != "response":
        return None
    http = (envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}
    meta = http.get("HTML-Metadata")
    if not isinstance(meta, dict):
        return None
    head = meta.get("Head") or {}
    imgs = []
    for link in meta.get("Links") or []:
        if isinstance(link, dict) and link.get("path") == IMG_SRC_PATH:
            src, alt = link.get("url"), link.get("alt")
            imgs.append(ImgTag(src=src if isinstance(src, str) else None, alt=alt if isinstance(alt, str) else None))
    metas = [m for m in head.get("Metas") or [] if isinstance(m, dict)]
    meta_lang = next((m.get("content") for m in metas
                      if str(m.get("http-equiv", "")).lower() == "content-language"), None)
    meta_name_lang = next((m.get("content") for m in metas
                           if str(m.get("name", "")).lower() in ("language", "content-language")), None)
    http_lang = _header(http.get("Headers") or {}, "Content-Language")
    base = head.get("Base") if isinstance(head.get("Base"), str) else None
    return PageImages(imgs=imgs, base=html_images.resolve_base(base, page_url),
                      lang=html_images.language_hint(meta_lang, meta_name_lang, http_lang))


def wat_page(record, max_record_bytes: int) -> tuple[str, PageImages] | None:
    if record.rec_type != "metadata":
        return None
    if _media_type(record.rec_headers.get_header("Content-Type")) != "application/json":
        return None
    raw = record.content_stream().read(max_record_bytes + 1)
    if len(raw) > max_record_bytes:
        raise BadWatRecord(f"WAT record over {max_record_bytes} bytes")
    try:
        data = json.loads(raw)
        envelope = data["Envelope"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadWatRecord(f"not a WAT JSON envelope: {type(exc).__name__}: {exc}") from None
    if not isinstance(envelope, dict):
        raise BadWatRecord("WAT Envelope is not an object")
    header_meta = envelope.get("WARC-Header-Metadata") or {}
    page_url = header_meta.get("WARC-Target-URI") or record.rec_headers.get_header("WARC-Target-URI") or ""
    page = wat_page_images(envelope, page_url)
    return None if page is None else (page_url, page)


def read_page(record, max_page_bytes: int) -> tuple[str, PageImages] | None:
    """(page URL, its images) for a WARC HTML response or a WAT metadata record of one; None otherwise.

    Raises BadWatRecord for a JSON metadata record that cannot be read as WAT (the caller counts it).
    A WAT record carries the page's whole link list as JSON, so it may be larger than the page limit: it gets
    four times `max_page_bytes`.
    """
    if record.rec_type == "response":
        return warc_page(record, max_page_bytes)
    if record.rec_type == "metadata":
        return wat_page(record, 4 * max_page_bytes)
    return None

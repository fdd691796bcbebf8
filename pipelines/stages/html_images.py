"""HTML -> image candidates: find every <img>, resolve its src against the page, classify it keep/drop.

Uses the standard library's html.parser, which never raises on broken markup (unclosed tags, stray '<',
bad entities): web pages are routinely malformed and one bad page must not fail a WARC file.

    page = parse_html(html_text, page_url, http_lang="")     # every <img> in document order, base URL, language
    cand, reason = classify(img, page.base, min_alt_chars=1)  # (Candidate, "") or (None, drop reason)

The WAT path (pipelines.stages.records) builds the same PageImages from Common Crawl's pre-parsed link list, so
both formats go through one `classify` and give identical candidates for the same page.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from pipelines.urls import MAX_URL_CHARS, UrlError, absolutize, normalize_url

# Drop reasons, in the order they are tested: the src decides first (no usable URL means no candidate at all,
# whatever the alt), then the alt text. URL reasons come from pipelines.urls: malformed_url,
# unsupported_scheme, too_long.
DATA_URI = "data_uri"
MISSING_SRC = "missing_src"
NO_ALT = "no_alt"

_WS = re.compile(r"\s+")
_LANG = re.compile(r"^[a-z]{2,3}$")


@dataclass(frozen=True)
class ImgTag:
    src: str | None
    alt: str | None


@dataclass(frozen=True)
class Candidate:
    uid: str
    url: str
    caption: str


@dataclass
class PageImages:
    """What extraction needs from one page, whichever format it came in."""

    imgs: list[ImgTag] = field(default_factory=list)
    base: str = ""
    """The URL relative srcs resolve against: <base href> resolved against the page URL, else the page URL."""
    lang: str = ""
    """The page's declared language as a lower-case primary subtag ("en"), or "" when it declares none."""


def language_hint(*declared: str | None) -> str:
    """The first usable declaration among `declared` (most authoritative first), as a primary subtag.

    "en-US", "EN_gb", "en, fr" all give "en"; values that are not a language tag ("x-default", "*", "") are
    skipped. A hint, not a measurement: the filter stage still identifies each caption's language itself.
    """
    for value in declared:
        first = (value or "").split(",")[0].strip().lower().replace("_", "-")
        primary = first.split("-")[0]
        if _LANG.match(primary):
            return primary
    return ""


class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[ImgTag] = []
        self.base_href: str | None = None
        self.html_lang: str | None = None
        self.meta_lang: str | None = None
        self.meta_name_lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            a = dict(attrs)
            self.imgs.append(ImgTag(src=a.get("src"), alt=a.get("alt")))
        elif tag == "base" and self.base_href is None:
            # <base href> changes what relative srcs resolve against (first one wins, as in browsers).
            self.base_href = dict(attrs).get("href") or None
        elif tag == "html" and self.html_lang is None:
            self.html_lang = dict(attrs).get("lang") or None
        elif tag == "meta":
            a = {k: (v or "") for k, v in attrs}
            if a.get("http-equiv", "").lower() == "content-language" and self.meta_lang is None:
                self.meta_lang = a.get("content")
            elif a.get("name", "").lower() in ("language", "content-language") and self.meta_name_lang is None:
                self.meta_name_lang = a.get("content")

    handle_startendtag = handle_starttag  # <img ... /> arrives here


def resolve_base(base_href: str | None, page_url: str) -> str:
    if not base_href:
        return page_url
    try:
        return absolutize(base_href, page_url)
    except UrlError:
        return page_url


def parse_html(html: str, page_url: str, http_lang: str | None = None) -> PageImages:
    """All <img> tags of `html` in document order, the URL relative srcs resolve against, the declared language.

    Language, most authoritative first: <html lang>, <meta http-equiv="content-language">,
    <meta name="language">, the HTTP Content-Language header (`http_lang`).
    """
    parser = _ImgParser()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # old Pythons' parser could assert on some garbage; keep what we have
        pass
    lang = language_hint(parser.html_lang, parser.meta_lang, parser.meta_name_lang, http_lang)
    return PageImages(imgs=parser.imgs, base=resolve_base(parser.base_href, page_url), lang=lang)


def find_images(html: str, page_url: str) -> tuple[list[ImgTag], str]:
    """All <img> tags of `html` in document order, and the URL relative srcs resolve against."""
    page = parse_html(html, page_url)
    return page.imgs, page.base


def clean_caption(alt: str | None) -> str:
    """Alt text with runs of whitespace collapsed to one space and the ends stripped."""
    return _WS.sub(" ", alt or "").strip()


def make_uid(url: str, caption: str) -> str:
    """Deterministic sample key: 24 lowercase hex chars (valid WebDataset key, see schema.UID_RE)."""
    return hashlib.sha256(f"{url}\t{caption}".encode()).hexdigest()[:24]


def classify(img: ImgTag, base_url: str, min_alt_chars: int = 1,
             max_url_chars: int = MAX_URL_CHARS) -> tuple[Candidate | None, str]:
    """(Candidate, "") for a usable image, else (None, reason): DATA_URI, MISSING_SRC, one of pipelines.urls'
    reasons (malformed_url, unsupported_scheme, too_long), or NO_ALT."""
    src = (img.src or "").strip()
    if src[:5].lower() == "data:":
        return None, DATA_URI
    if not src:
        return None, MISSING_SRC
    try:
        url = normalize_url(absolutize(src, base_url), max_url_chars)
    except UrlError as exc:
        return None, exc.reason
    caption = clean_caption(img.alt)
    if len(caption) < max(1, min_alt_chars):
        return None, NO_ALT
    return Candidate(uid=make_uid(url, caption), url=url, caption=caption), ""

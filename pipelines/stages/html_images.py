"""HTML -> image candidates: find every <img>, resolve its src against the page, classify it keep/drop.

Uses the standard library's html.parser, which never raises on broken markup (unclosed tags, stray '<',
bad entities): web pages are routinely malformed and one bad page must not fail a WARC file.

    imgs = find_images(html_text, page_url)                  # every <img>, in document order
    cand, reason = classify(img, page_url, min_alt_chars=1)  # (Candidate, "") or (None, drop reason)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from pipelines.urls import absolutize, normalize_url

# Drop reasons, in the order they are tested: the src decides first (no usable URL means no candidate at all,
# whatever the alt), then the alt text.
DATA_URI = "data_uri"
BAD_URL = "bad_url"
NO_ALT = "no_alt"

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class ImgTag:
    src: str | None
    alt: str | None


@dataclass(frozen=True)
class Candidate:
    uid: str
    url: str
    caption: str


class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[ImgTag] = []
        self.base_href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            a = dict(attrs)
            self.imgs.append(ImgTag(src=a.get("src"), alt=a.get("alt")))
        elif tag == "base" and self.base_href is None:
            # <base href> changes what relative srcs resolve against (first one wins, as in browsers).
            self.base_href = dict(attrs).get("href") or None

    handle_startendtag = handle_starttag  # <img ... /> arrives here


def find_images(html: str, page_url: str) -> tuple[list[ImgTag], str]:
    """All <img> tags of `html` in document order, and the URL relative srcs resolve against."""
    parser = _ImgParser()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # old Pythons' parser could assert on some garbage; keep what we have
        pass
    base = page_url
    if parser.base_href:
        try:
            base = absolutize(parser.base_href, page_url)
        except ValueError:
            base = page_url
    return parser.imgs, base


def clean_caption(alt: str | None) -> str:
    """Alt text with runs of whitespace collapsed to one space and the ends stripped."""
    return _WS.sub(" ", alt or "").strip()


def make_uid(url: str, caption: str) -> str:
    """Deterministic sample key: 24 lowercase hex chars (valid WebDataset key, see schema.UID_RE)."""
    return hashlib.sha256(f"{url}\t{caption}".encode("utf-8")).hexdigest()[:24]


def classify(img: ImgTag, base_url: str, min_alt_chars: int = 1) -> tuple[Candidate | None, str]:
    """(Candidate, "") for a usable image, else (None, reason) with reason one of DATA_URI, BAD_URL, NO_ALT."""
    src = (img.src or "").strip()
    if src.lower().startswith("data:"):
        return None, DATA_URI
    if not src:
        return None, BAD_URL
    try:
        url = normalize_url(absolutize(src, base_url))
    except ValueError:  # not http(s), no host, or unparsable (e.g. a bad IPv6 literal or port)
        return None, BAD_URL
    caption = clean_caption(img.alt)
    if len(caption) < max(1, min_alt_chars):
        return None, NO_ALT
    return Candidate(uid=make_uid(url, caption), url=url, caption=caption), ""

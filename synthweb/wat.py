"""WARC -> WAT: the metadata files Common Crawl publishes beside each WARC, made from the synthetic web's WARCs.

    python -m synthweb.wat data/web/<corpus id>/warc/00000.warc.gz /tmp/00000.warc.wat.gz
    paths = ensure_wats(corpus)   # <corpus root>/wat/00000.warc.wat.gz ..., one per WARC, made once

A WAT file is itself a WARC file (gzip'd, one member per record): a `warcinfo` record, then one `metadata`
record (Content-Type application/json, WARC-Refers-To the source record) for every record of the source WARC,
in order. Its JSON payload follows Common Crawl's layout (ia-web-commons' extractor):

    {"Container": {"Filename", "Compressed", "Offset", "Gzip-Metadata": {...}},
     "Envelope": {"Format": "WARC", "WARC-Header-Length", "Actual-Content-Length", "Block-Digest",
                  "WARC-Header-Metadata": {the source record's WARC headers},
                  "Payload-Metadata": {"Actual-Content-Type", "Trailing-Slop-Length",
                      "HTTP-Response-Metadata": {"Response-Message", "Headers", "Headers-Length", "Entity-Length",
                          "Entity-Digest", "Entity-Trailing-Slop-Length",
                          "HTML-Metadata": {"Head": {"Title", "Metas", "Link", "Scripts", "Base"},
                                            "Links": [{"path": "A@/href", "url", "text"},
                                                      {"path": "IMG@/src", "url", "alt"}, ...]}}}}}

Link urls are the raw attribute values (relative ones stay relative, as in Common Crawl's files); "alt" is
present only when the tag has one. The HTML is parsed here with its own small parser (not the pipeline's), so a
test comparing WARC and WAT extraction compares two independent readings of the same pages. Output bytes are a
function of the input bytes alone (record ids derived from the source's, dates taken from the source).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import sys
import uuid
from html.parser import HTMLParser

from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

# The reader's own charset handling: the generator and the extractor must decode a page the same way.
from pipelines.stages.records import decode

SOFTWARE = "witforge-synthweb-wat (Common Crawl WAT layout)"
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class _MetadataParser(HTMLParser):
    """Collects what Common Crawl's WAT keeps of an HTML page: head metadata and the link list."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.head: dict = {}
        self.links: list[dict] = []
        self._title: list[str] | None = None
        self._anchor: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v for k, v in attrs if v is not None}
        if tag == "title" and "Title" not in self.head:
            self._title = []
        elif tag == "meta" and a:
            self.head.setdefault("Metas", []).append(a)
        elif tag == "link" and "href" in a:
            entry = {"path": "LINK@/href", "url": a["href"]}
            entry.update({k: a[k] for k in ("rel", "type", "hreflang") if k in a})
            self.head.setdefault("Link", []).append(entry)
        elif tag == "script" and "src" in a:
            self.head.setdefault("Scripts", []).append({"path": "SCRIPT@/src", "url": a["src"]})
        elif tag == "base" and "href" in a and "Base" not in self.head:
            self.head["Base"] = a["href"]
        elif tag == "img" and "src" in a:  # no src attribute, no IMG@/src link (Common Crawl's behaviour)
            entry = {"path": "IMG@/src", "url": a["src"]}
            entry.update({k: a[k] for k in ("alt", "title") if k in a})
            self.links.append(entry)
        elif tag == "a" and "href" in a:
            self._anchor = {"path": "A@/href", "url": a["href"], "_text": []}
            if "title" in a:
                self._anchor["title"] = a["title"]
            self.links.append(self._anchor)

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title is not None:
            self.head["Title"] = " ".join("".join(self._title).split())
            self._title = None
        elif tag == "a":
            self._anchor = None

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)
        if self._anchor is not None:
            self._anchor["_text"].append(data)

    def result(self) -> dict:
        for link in self.links:
            if "_text" in link:
                text = " ".join("".join(link.pop("_text")).split())
                if text:
                    link["text"] = text
        out: dict = {}
        if self.head:
            out["Head"] = self.head
        if self.links:
            out["Links"] = self.links
        return out


def html_metadata(html: str) -> dict:
    parser = _MetadataParser()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):
        pass
    return parser.result()


def _sha1(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def _gzip_metadata(raw: bytes) -> dict:
    """Gzip-Metadata of one gzip member, as Common Crawl's WAT records it (footer: CRC32, ISIZE)."""
    crc, size = struct.unpack("<II", raw[-8:])
    return {"Deflate-Length": str(len(raw) - 18), "Header-Length": "10", "Footer-Length": "8",
            "Inflated-CRC": str(crc), "Inflated-Length": str(size)}


def _request_line(hh) -> dict:
    # warcio keeps a request line "GET /path HTTP/1.1" as protocol="GET", statusline="/path HTTP/1.1".
    words = f"{hh.protocol or ''} {hh.statusline or ''}".split()
    words += [""] * (3 - len(words))
    return {"Method": words[0], "Path": words[1], "Version": words[2]}


def _payload_metadata(record, entity: bytes) -> dict:
    """Payload-Metadata of one source record; `entity` is its block after any HTTP headers."""
    ctype = record.rec_headers.get_header("Content-Type") or ""
    meta: dict = {"Actual-Content-Type": ctype, "Trailing-Slop-Length": "4"}
    if record.rec_type == "warcinfo":
        fields = {}
        for line in entity.decode("utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        meta["WARC-Info-Metadata"] = fields
        return meta
    hh = record.http_headers
    if hh is None or record.rec_type not in ("response", "request"):
        return meta
    http = {"Headers-Length": str(len(hh.to_bytes())), "Entity-Length": str(len(entity)),
            "Entity-Trailing-Slop-Length": "0", "Entity-Digest": _sha1(entity),
            "Headers": {k: v for k, v in hh.headers}}
    if record.rec_type == "request":
        http["Request-Message"] = _request_line(hh)
        meta["HTTP-Request-Metadata"] = http
        return meta
    status, _, reason = (hh.statusline or "").partition(" ")
    http["Response-Message"] = {"Version": hh.protocol or "HTTP/1.1", "Status": status, "Reason": reason}
    content_type = hh.get_header("Content-Type") or ""
    if content_type.split(";")[0].strip().lower() in _HTML_TYPES:
        http["HTML-Metadata"] = html_metadata(decode(entity, content_type))
    meta["HTTP-Response-Metadata"] = http
    return meta


def _derived_id(source_id: str) -> str:
    return f"<urn:uuid:{uuid.UUID(bytes=hashlib.sha256(f'wat:{source_id}'.encode()).digest()[:16])}>"


def write_wat(warc_path: str, wat_path: str, filename: str | None = None) -> int:
    """Write the WAT of local WARC `warc_path` to `wat_path` (not atomically: see ensure_wats); `filename` is
    the name its warcinfo record gives (default: the basename of wat_path). Returns the metadata record count."""
    with open(warc_path, "rb") as f:
        raw = f.read()
    compressed = raw[:2] == b"\x1f\x8b"
    name = os.path.basename(warc_path)
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    extracted = None
    n = 0
    it = ArchiveIterator(io.BytesIO(raw))
    for record in it:
        entity = record.content_stream().read()  # the block after any HTTP headers, transfer-decoded
        it.read_to_end(record)
        offset, length = it.get_record_offset(), it.get_record_length()
        rec_date = record.rec_headers.get_header("WARC-Date") or "1970-01-01T00:00:00Z"
        if extracted is None:  # the WAT's own warcinfo comes first and is dated by the first source record
            extracted = rec_date
            info = (f"Software-Info: {SOFTWARE}\r\nExtracted-Date: {extracted}\r\n"
                    f"format: WARC File Format 1.0\r\n").encode()
            writer.write_record(writer.create_warc_record(
                "", "warcinfo", payload=io.BytesIO(info), length=len(info),
                warc_headers_dict={"WARC-Date": extracted, "WARC-Filename": filename or os.path.basename(wat_path),
                                   "WARC-Record-ID": _derived_id(f"{name}:warcinfo"),
                                   "Content-Type": "application/warc-fields"}))
        source_id = record.rec_headers.get_header("WARC-Record-ID") or f"{name}:{offset}"
        warc_headers = {k: v for k, v in record.rec_headers.headers}
        container = {"Filename": name, "Compressed": compressed, "Offset": str(offset)}
        if compressed:
            container["Gzip-Metadata"] = _gzip_metadata(raw[offset:offset + length])
        envelope = {"Format": "WARC", "WARC-Header-Length": str(len(record.rec_headers.to_bytes())),
                    "Actual-Content-Length": warc_headers.get("Content-Length", str(len(entity))),
                    "WARC-Header-Metadata": warc_headers,
                    "Block-Digest": warc_headers.get("WARC-Block-Digest") or _sha1(entity),
                    "Payload-Metadata": _payload_metadata(record, entity)}
        payload = json.dumps({"Container": container, "Envelope": envelope}, ensure_ascii=False,
                             separators=(",", ":")).encode("utf-8")
        target = record.rec_headers.get_header("WARC-Target-URI") or name
        writer.write_record(writer.create_warc_record(
            target, "metadata", payload=io.BytesIO(payload), length=len(payload),
            warc_content_type="application/json",
            warc_headers_dict={"WARC-Date": extracted, "WARC-Record-ID": _derived_id(source_id),
                               "WARC-Refers-To": source_id}))
        n += 1
    with open(wat_path, "wb") as f:
        f.write(out.getvalue())
    return n


def wat_path_for(warc_path: str, wat_dir: str) -> str:
    name = os.path.basename(warc_path)
    stem = name[:-len(".warc.gz")] if name.endswith(".warc.gz") else name.rsplit(".", 1)[0]
    return os.path.join(wat_dir, f"{stem}.warc.wat.gz")  # Common Crawl's naming: <name>.warc.wat.gz


def ensure_wats(corpus, wat_dir: str | None = None) -> list[str]:
    """The WAT files of `corpus` (a synthweb.corpus.Corpus), one per WARC, in the same order; each is written
    once, to a temporary name then renamed (a killed run never leaves a partial WAT under the final name)."""
    wat_dir = wat_dir or os.path.join(corpus.root, "wat")
    os.makedirs(wat_dir, exist_ok=True)
    paths = []
    for warc in corpus.warc_paths:
        path = wat_path_for(warc, wat_dir)
        if not os.path.isfile(path):
            tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
            try:
                write_wat(warc, tmp, filename=os.path.basename(path))
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m synthweb.wat IN.warc.gz OUT.warc.wat.gz", file=sys.stderr)
        return 2
    n = write_wat(args[0], args[1])
    print(f"{args[1]}: {n} metadata records")
    return 0


if __name__ == "__main__":
    sys.exit(main())

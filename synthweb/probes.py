"""Planted safety faults: SSRF probes in <img src> and the served robots.txt.

SSRF forms (the truth row's `form`). Every form but the link-local ones points back at this server's own
port, under a host spelling the download stage's allow-list (web.host:web.port exactly) does not match, and
the path it names serves a real image: a downloader that lets one through gets an image, and the server's
request log shows the request.
- direct: decimal (http://2130706433:P/...), hex (0x7f000001), octal (0177.0.0.01), short (127.1),
  ipv6_mapped ([::ffff:127.0.0.1]), ipv6_loopback ([::1]: nothing listens there), localhost (a name that
  resolves to loopback), and the cloud metadata service: metadata (169.254.169.254) and
  metadata_ipv6_mapped ([::ffff:a9fe:a9fe]). Those two are never contacted by anything in this project:
  `ssrf_target` is "link_local" in their truth rows, and whatever fetches the corpus unguarded (the
  benchmark's plain img2dataset) leaves them out.
- redirect_*: the URL is on the allowed server (web.host:web.port) and answers 302 to one of the loopback
  spellings above: the guard must re-check the redirect hop.

robots.txt: a group for `web.robots_agent` disallows /*/private/ (a wildcard rule; urllib.robotparser
does not understand it), another bot is disallowed everything (that must not apply to us), and `*` gets
a rule that must not apply to us either (a group naming us replaces `*`).
"""

from __future__ import annotations

import ipaddress

DIRECT_FORMS = ("decimal", "hex", "octal", "short", "ipv6_mapped", "ipv6_loopback", "localhost", "metadata",
                "metadata_ipv6_mapped")
REDIRECT_FORMS = ("redirect_localhost", "redirect_decimal", "redirect_ipv6_mapped")
SSRF_FORMS = DIRECT_FORMS + REDIRECT_FORMS
LINK_LOCAL_FORMS = ("metadata", "metadata_ipv6_mapped")
ROBOTS_FORMS = ("direct", "redirect")
PRIVATE_DIR = "private"


def loopback_spelling(form: str, host: str, port: int) -> str:
    """scheme://authority reaching web.host:port under a spelling that is not web.host itself."""
    ip = ipaddress.IPv4Address(host)
    n = int(ip)
    octets = str(ip).split(".")
    authority = {
        "decimal": str(n),
        "hex": f"0x{n:08x}",
        "octal": ".".join(f"0{int(o):o}" for o in octets),
        "short": f"{octets[0]}.{n & 0xFFFFFF}",
        "ipv6_mapped": f"[::ffff:{ip}]",
        "ipv6_loopback": "[::1]",
        "localhost": "localhost",
    }[form]
    return f"http://{authority}:{port}"


def ssrf_url(form: str, host: str, port: int, path: str) -> str:
    """The <img> URL of a direct probe whose path is `path` (served by this server, if it were reached)."""
    if form == "metadata":
        return f"http://169.254.169.254/latest/meta-data/iam/security-credentials{path}"
    if form == "metadata_ipv6_mapped":
        return f"http://[::ffff:a9fe:a9fe]/latest/meta-data{path}"
    return loopback_spelling(form, host, port) + path


def redirect_target(form: str, host: str, port: int, path: str) -> str:
    """Where a redirect_* probe's 302 points."""
    return loopback_spelling(form.removeprefix("redirect_"), host, port) + path


def robots_txt(agent: str) -> str:
    return "\n".join([
        "# synthweb: what crawlers may fetch here (RFC 9309). Planted rules: see truth.jsonl, robots_disallowed.",
        "User-agent: examplebot",
        "Disallow: /",
        "",
        "User-agent: *",
        "Disallow: /site-00/img/",
        "",
        f"User-agent: {agent}",
        f"Disallow: /*/{PRIVATE_DIR}/",
        "Allow: /site-00/",
        "",
    ])

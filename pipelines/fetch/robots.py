"""robots.txt (RFC 9309): parse, match our user-agent token, cache per origin.

Why our own parser: urllib.robotparser predates the RFC. It takes the first matching rule instead of the
longest, and knows neither `*` nor `$` in paths, so it allows URLs that sites mean to disallow.

Rules (RFC 9309 section 2):
- A group is one or more `User-agent:` lines followed by rules. Groups naming our product token (case-
  insensitive) are merged; if none does, the `*` groups are merged; if there is none either, all is allowed.
- The longest matching Allow/Disallow pattern wins (length of the pattern in octets); a tie goes to Allow.
  `*` matches any sequence, `$` at the end anchors. An empty Disallow matches nothing. /robots.txt itself
  is always allowed.
- Patterns and paths are compared percent-decoded, so /a%2Db and /a-b are one path.
- Only the first 500 KiB are parsed (the RFC's minimum; bigger files are truncated, not refused).

What the fetcher does with the HTTP answer (RobotsCache): 2xx parse; 4xx "unavailable": all allowed;
5xx "unreachable": all disallowed (a transient failure, retried later); redirects are followed by the
fetcher itself (every hop guarded); network errors keep their own reason (timeout, connection_error...).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pipelines.fetch.errors import FetchError
from pipelines.fetch.netguard import Endpoint

MAX_ROBOTS_BYTES = 500 * 1024
_LINE = re.compile(r"^\s*([A-Za-z-]+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern

    @property
    def length(self) -> int:
        return len(self.pattern.encode("utf-8"))


def _compile(pattern: str) -> re.Pattern:
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""), re.DOTALL)


@dataclass
class RobotsRules:
    """The rules that apply to one user-agent token on one origin."""

    rules: list[Rule] = field(default_factory=list)
    crawl_delay: float | None = None

    def allowed(self, path_and_query: str) -> bool:
        target = unquote(path_and_query or "/")
        if target == "/robots.txt":
            return True
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(target) and (
                    best is None or rule.length > best.length or (rule.length == best.length and rule.allow)):
                best = rule
        return best is None or best.allow


ALLOW_ALL = RobotsRules()
DISALLOW_ALL = RobotsRules([Rule(False, "/", _compile("/"))])


def parse_robots(text: str, token: str) -> RobotsRules:
    """The rules of `text` for product token `token` (merged groups; `*` groups only if none names us)."""
    token = token.strip().lower()
    groups: list[tuple[set[str], list[Rule], list[float]]] = []
    current: tuple[set[str], list[Rule], list[float]] | None = None
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0]
        m = _LINE.match(line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "user-agent":
            if current is None or not in_agents:
                current = (set(), [], [])
                groups.append(current)
            # The product token is the name before any version or comment ("Googlebot/2.1" -> googlebot).
            current[0].add(value.split("/", 1)[0].strip().lower())
            in_agents = True
            continue
        in_agents = False
        if current is None:
            continue  # rules before any User-agent line belong to no group (RFC 9309 2.1)
        if key in ("allow", "disallow"):
            if not value:
                continue  # "Disallow:" with no path allows everything: as if the line were absent
            pattern = unquote(value if value.startswith(("/", "*")) else "/" + value)
            current[1].append(Rule(key == "allow", pattern, _compile(pattern)))
        elif key == "crawl-delay":
            try:
                current[2].append(float(value))
            except ValueError:
                pass
    mine = [g for g in groups if token in g[0]] or [g for g in groups if "*" in g[0]]
    rules = [r for g in mine for r in g[1]]
    delays = [d for g in mine for d in g[2]]
    return RobotsRules(rules, max(delays) if delays else None)


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass
class _Entry:
    fetched_at: float
    rules: RobotsRules | None = None
    error: FetchError | None = None


class RobotsCache:
    """robots.txt rules per origin, fetched once per `ttl` seconds, whatever the number of threads asking.

    `fetch(endpoint)` returns (status, body) of GET <origin>/robots.txt through the guarded client, or raises
    FetchError. A failure (5xx, network) is remembered for `error_ttl` seconds, or until forget_failures()
    (called when a shard or retry round starts), so a thousand images on a dead host cost one attempt, not a
    thousand, while a retry round still asks again."""

    def __init__(self, token: str, fetch: Callable[[Endpoint], tuple[int, bytes]], ttl: float,
                 error_ttl: float = 30.0) -> None:
        self.token = token
        self._fetch = fetch
        self.ttl = ttl
        self.error_ttl = error_ttl
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetches = 0

    def forget_failures(self) -> None:
        """Drop remembered failures (a new shard or retry round asks again)."""
        with self._guard:
            self._entries = {k: e for k, e in self._entries.items() if e.error is None}

    def rules(self, endpoint: Endpoint) -> RobotsRules:
        key = endpoint.origin
        entry = self._fresh(key)
        if entry is None:
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:  # one fetch per origin; the other threads wait for its answer
                entry = self._fresh(key)
                if entry is None:
                    entry = self._load(endpoint)
                    with self._guard:
                        self._entries[key] = entry
        if entry.error is not None:
            raise FetchError(entry.error.reason, entry.error.detail)
        assert entry.rules is not None
        return entry.rules

    def _fresh(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        ttl = self.error_ttl if entry.error is not None else self.ttl
        return entry if time.monotonic() - entry.fetched_at < ttl else None

    def _load(self, endpoint: Endpoint) -> _Entry:
        self.fetches += 1
        now = time.monotonic()
        try:
            status, body = self._fetch(endpoint)
        except FetchError as exc:
            if exc.reason == "redirect_error":
                return _Entry(now, rules=ALLOW_ALL)  # RFC 9309 2.3.1.2: over 5 redirects, MAY assume unavailable
            return _Entry(now, error=FetchError(exc.reason, f"robots.txt of {endpoint.origin}: {exc.detail}"))
        if 200 <= status < 300:
            text = body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
            return _Entry(now, rules=parse_robots(text, self.token))
        if 400 <= status < 500:
            return _Entry(now, rules=ALLOW_ALL)  # "unavailable": no robots.txt means no restriction
        return _Entry(now, error=FetchError(
            "robots_unreachable", f"robots.txt of {endpoint.origin} answered {status}: all disallowed until it answers"))

"""robots.txt (pipelines.fetch.robots): RFC 9309 group selection and matching, and the per-origin cache."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.fetch.errors import FetchError
from pipelines.fetch.netguard import parse_endpoint
from pipelines.fetch.robots import RobotsCache, parse_robots, path_and_query
from synthweb.probes import robots_txt

TEXT = """
# comment line
Disallow: /before-any-group/          # belongs to no group: ignored

User-agent: otherbot
User-agent: Witforge/2.1              # the product token is what comes before the version
Disallow: /private/
Allow: /private/public/
Disallow: /*.gif$
Disallow: /tmp*/
Allow: /tie
Disallow: /tie
Disallow:
Crawl-delay: 2.5

User-agent: *
Disallow: /
"""


@pytest.mark.parametrize("path,allowed", [
    ("/", True), ("/before-any-group/x", True), ("/private/x.jpg", False), ("/private/public/x.jpg", True),
    ("/a/b.gif", False), ("/a/b.gif?x=1", True), ("/a/b.GIF", True), ("/tmpfiles/x", False), ("/tmp/x", False),
    ("/tie", True), ("/robots.txt", True), ("/priv%61te/x.jpg", False), ("/private%2Fx", False),
])
def test_our_group_longest_match_wildcards(path, allowed):
    rules = parse_robots(TEXT, "witforge")
    assert rules.allowed(path) is allowed
    assert rules.crawl_delay == 2.5


def test_star_group_applies_only_when_no_group_names_us():
    rules = parse_robots(TEXT, "somebot")
    assert not rules.allowed("/anything") and rules.allowed("/robots.txt")
    assert parse_robots("User-agent: a\nDisallow: /\n", "witforge").allowed("/x")  # no group for us, no *
    assert parse_robots("", "witforge").allowed("/x")
    # Groups naming us are merged, wherever they are; the * group then does not apply to us.
    merged = parse_robots("User-agent: witforge\nDisallow: /a\n\nUser-agent: *\nDisallow: /b\n"
                          "User-agent: witforge\nDisallow: /c\n", "witforge")
    assert [merged.allowed(p) for p in ("/a", "/b", "/c")] == [False, True, False]


def test_the_synthetic_webs_robots_txt():
    rules = parse_robots(robots_txt("witforge"), "witforge")
    assert not rules.allowed("/site-00/private/img-00001.jpg")  # longer Disallow beats Allow: /site-00/
    assert not rules.allowed("/site-07/private/img-00002-moved.jpg")
    assert rules.allowed("/site-00/img/img-00003.jpg")  # the * group's rule is not ours
    assert rules.allowed("/site-07/img/img-00004.jpg")
    assert not parse_robots(robots_txt("witforge"), "examplebot").allowed("/site-07/img/img-00004.jpg")


def test_path_and_query():
    assert path_and_query("http://h/a/b.jpg?x=1#frag") == "/a/b.jpg?x=1"
    assert path_and_query("http://h") == "/"


def test_cache_fetches_once_per_origin_under_concurrency():
    calls = []

    def fetch(ep):
        calls.append(ep.origin)
        time.sleep(0.2)  # every thread arrives while the first fetch is in flight
        return 200, b"User-agent: *\nDisallow: /no/\n"

    cache = RobotsCache("witforge", fetch, ttl=3600)
    ep = parse_endpoint("http://h.test:8080/x")
    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.rules(ep).allowed("/no/x"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["http://h.test:8080"] and out == [False] * 16
    cache.rules(parse_endpoint("https://h.test:8080/x"))  # another scheme is another origin
    assert len(calls) == 2


def test_cache_answers_by_status_and_remembers_failures():
    answers = {"http://four.test:80": (404, b""), "http://five.test:80": (503, b"")}

    def fetch(ep):
        if ep.host == "down.test":
            raise FetchError("connection_error", "refused")
        return answers[ep.origin]

    cache = RobotsCache("witforge", fetch, ttl=3600, error_ttl=3600)
    assert cache.rules(parse_endpoint("http://four.test/x")).allowed("/anything")
    with pytest.raises(FetchError) as exc:
        cache.rules(parse_endpoint("http://five.test/x"))
    assert exc.value.reason == "robots_unreachable" and exc.value.transient
    for _ in range(3):
        with pytest.raises(FetchError) as exc:
            cache.rules(parse_endpoint("http://down.test/x"))
        assert exc.value.reason == "connection_error" and "robots.txt" in exc.value.detail
    assert cache.fetches == 3  # failures are cached too (for error_ttl)...
    cache.forget_failures()  # ...until a new shard or retry round starts; successes stay
    with pytest.raises(FetchError):
        cache.rules(parse_endpoint("http://down.test/x"))
    cache.rules(parse_endpoint("http://four.test/x"))
    assert cache.fetches == 4

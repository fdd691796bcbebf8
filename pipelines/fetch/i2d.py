"""img2dataset with our fetcher: its shards, per-shard stats, resizer, writer and incremental resume, unchanged;
only the function that fetches one URL is ours (pipelines.fetch.client).

img2dataset builds one `Downloader` in `img2dataset.download` and ships it (pickled) to every worker: a Ray
task, a multiprocessing process or a Spark task. Each thread of a shard then calls the module-level
`img2dataset.downloader.download_image_with_retry`. So:

- `use_safe_downloader(policy)` makes img2dataset.download build a SafeDownloader (a Downloader subclass that
  carries the policy), and hands it to the caller for the retry pass.
- SafeDownloader.download_shard swaps `download_image_with_retry` for ours while the shard runs, in the worker,
  and puts img2dataset's back after. A process runs one shard at a time under a lock, so another library's
  plain img2dataset in the same worker later (a benchmark's baseline) gets the original function.

Why not a pre-pass that removes unsafe URLs and leaves the fetching to img2dataset: urllib follows redirects
and resolves DNS again on connect, so neither the redirect hops nor the address it finally connects to could
be checked; the robots.txt check would likewise miss a redirect into a disallowed path.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import threading
from collections.abc import Iterator

from img2dataset import downloader as i2d_downloader

from pipelines.fetch.client import Fetcher, FetchPolicy
from pipelines.fetch.errors import FetchError

_FETCHERS: dict[FetchPolicy, Fetcher] = {}
_FETCHERS_LOCK = threading.Lock()
_SHARD_LOCK = threading.Lock()


def fetcher_for(policy: FetchPolicy) -> Fetcher:
    """This process's Fetcher for `policy`: shards run by one worker share its DNS and robots.txt caches."""
    with _FETCHERS_LOCK:
        fetcher = _FETCHERS.get(policy)
        if fetcher is None:
            fetcher = _FETCHERS[policy] = Fetcher(policy)
        return fetcher


def fetch_row(fetcher: Fetcher, row, retries: int) -> tuple[int, io.BytesIO | None, str | None]:
    """img2dataset's (key, stream, error) for one (key, url) row; `retries` extra attempts, transient only."""
    key, url = row
    error: FetchError | None = None
    for _ in range(retries + 1):
        try:
            return key, io.BytesIO(fetcher.fetch_image(url)), None
        except FetchError as exc:
            error = exc
            if not exc.transient:
                break
    assert error is not None
    return key, None, str(error)


class SafeDownloader(i2d_downloader.Downloader):
    """img2dataset's Downloader whose URL fetches go through pipelines.fetch.client."""

    def __init__(self, *args, policy: FetchPolicy, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def download_shard(self, row) -> None:
        fetcher = fetcher_for(self.policy)
        fetcher.forget_failures()  # a retry round must really ask again, even in a worker that saw the failure

        def download_image_with_retry(row, timeout, retries, user_agent_token, disallowed_header_directives):
            # img2dataset's arguments are superseded by the policy (same config, enforced by our client).
            return fetch_row(fetcher, row, retries)

        with _SHARD_LOCK:
            original = i2d_downloader.download_image_with_retry
            i2d_downloader.download_image_with_retry = download_image_with_retry
            try:
                super().download_shard(row)
            finally:
                i2d_downloader.download_image_with_retry = original


@contextlib.contextmanager
def use_safe_downloader(policy: FetchPolicy) -> Iterator[list[SafeDownloader]]:
    """While active, img2dataset.download builds SafeDownloaders; the yielded list receives the one it built."""
    built: list[SafeDownloader] = []
    # The module, not `img2dataset.main`: the package re-exports a function of that name over it.
    i2d_main = importlib.import_module("img2dataset.main")
    original = i2d_main.Downloader

    def factory(**kwargs) -> SafeDownloader:  # img2dataset.download passes keyword arguments only
        d = SafeDownloader(policy=policy, **kwargs)
        built.append(d)
        return d

    i2d_main.Downloader = factory
    try:
        yield built
    finally:
        i2d_main.Downloader = original

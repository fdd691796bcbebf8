"""Stream a dataset version's WebDataset shards into (images, tokens) batches.

    manifest -> shard URIs -> [split by rank and loader worker] -> open via pipelines.storage (file or s3)
      -> tar_file_expander -> group_by_keys -> sample shuffle -> decode jpg/txt -> batch + tokenize

Two modes. Resampled (training default): each (rank, worker) draws shards with replacement from its OWN seed,
forever, so ranks never run dry at different times (a rank that stops early would deadlock the collective
ops of the others). Epoch: the shard list is shuffled with the shared seed and dealt out round-robin to
(rank, worker) slots, so each sample is seen exactly once per epoch and no two ranks overlap.
Corrupt samples (undecodable jpg, missing member, broken tar) are skipped and counted, never fatal.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from typing import Any, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipelines import storage
from pipelines.schema import load_manifest
from training.tokenizer import CaptionTokenizer
from training.transform import preprocess

__all__ = ["preprocess", "shard_uris", "make_dataset", "make_loader", "SKIPPED"]
log = logging.getLogger(__name__)

# Per-process count of skipped samples by error type; each batch carries its worker's running total.
SKIPPED: Counter = Counter()
DECODED = [0]
# Corruption is skipped, but a stream that is mostly failures (unreachable storage, a wrong path) must stop the
# run with the cause rather than spin forever: abort once this many were skipped and they exceed the fraction.
ABORT_MIN_SKIPPED = 100
ABORT_SKIP_FRACTION = 0.05


class TooManyCorruptSamples(RuntimeError):
    pass


def skip_and_count(exn: Exception) -> bool:
    """webdataset handler: record the failure and continue with the next sample/shard."""
    SKIPPED[type(exn).__name__] += 1
    skipped = sum(SKIPPED.values())
    if skipped <= 5:  # the first few are worth a log line; a flood is not
        log.warning("skipping corrupt sample: %r", exn)
    if skipped >= ABORT_MIN_SKIPPED and skipped > ABORT_SKIP_FRACTION * (skipped + DECODED[0]):
        raise TooManyCorruptSamples(f"{skipped} samples skipped against {DECODED[0]} decoded "
                                    f"({dict(SKIPPED)}); last error: {exn!r}") from exn
    return True


def shard_uris(manifest_uri: str) -> list[str]:
    manifest = load_manifest(manifest_uri)
    if not manifest.shards:
        raise ValueError(f"{manifest_uri}: the manifest lists no shards")
    return manifest.shard_uris(manifest_uri)


def _slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardSource(IterableDataset):
    """First pipeline stage: yields {"url": uri} for this rank and loader worker (decided at iteration time)."""

    def __init__(self, urls: list[str], rank: int, world: int, seed: int, resampled: bool, epochs: int | None):
        self.urls, self.rank, self.world, self.seed = list(urls), rank, world, seed
        self.resampled, self.epochs = resampled, epochs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = _slot()
        if self.resampled:
            # A different seed per (rank, worker): different shard sequences everywhere, reproducible per seed.
            rng = random.Random(f"{self.seed}/{self.rank}/{worker}")
            while True:
                yield {"url": rng.choice(self.urls)}
        if self.epochs is None and len(self.urls[self.rank::self.world][worker::nworkers]) == 0:
            # Repeating an empty share forever would spin without yielding: fail with the numbers instead.
            raise ValueError(f"{len(self.urls)} shards cannot feed rank {self.rank}/{self.world} loader worker "
                             f"{worker}/{nworkers} in epoch mode; use resampled mode or fewer workers")
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = list(self.urls)
            random.Random(f"{self.seed}/epoch{epoch}").shuffle(order)  # same order on every rank
            # Deal by rank first, then among this rank's loader workers: disjoint whatever the worker counts.
            for url in order[self.rank::self.world][worker::nworkers]:
                yield {"url": url}
            epoch += 1


def open_shards(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """{"url"} -> {"url", "stream"} through pipelines.storage (webdataset's gopen cannot open s3://)."""
    for sample in src:
        try:
            stream = storage.open_uri(sample["url"])
        except Exception as exn:  # noqa: BLE001 - an unreadable shard is skipped like a corrupt sample
            skip_and_count(exn)
            continue
        try:
            yield {"url": sample["url"], "stream": stream}
        finally:
            # Downstream expands the whole tar before asking for the next URL, so the stream is done here.
            stream.close()


def make_decoder(image_size: int):
    def decode(sample: dict[str, Any]) -> tuple[torch.Tensor, str]:
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            image = preprocess(img, image_size)
        caption = sample["txt"].decode("utf-8").strip()
        if not caption:
            raise ValueError(f"{sample.get('__url__')}:{sample.get('__key__')}: empty caption")
        DECODED[0] += 1
        return image, caption
    return decode


def make_collate(tokenizer: CaptionTokenizer):
    def collate(samples: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images = torch.stack([s[0] for s in samples])
        tokens = torch.from_numpy(tokenizer.encode([s[1] for s in samples]))
        worker, _ = _slot()
        return images, tokens, {"worker": worker, "skipped": sum(SKIPPED.values())}
    return collate


def make_dataset(urls: list[str], tokenizer: CaptionTokenizer, image_size: int, batch_size: int, *,
                 rank: int = 0, world: int = 1, seed: int = 0, resampled: bool = True, epochs: int | None = 1,
                 shuffle_buffer: int = 1000, partial: bool = False) -> wds.DataPipeline:
    """A webdataset pipeline yielding (images (b,3,s,s), tokens (b,context), stats) for one rank."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return wds.DataPipeline(
        ShardSource(urls, rank, world, seed, resampled, epochs),
        open_shards,
        wds.pipelinefilter(tar_file_expander)(handler=skip_and_count),
        wds.pipelinefilter(group_by_keys)(handler=skip_and_count),
        sample_shuffle(shuffle_buffer, f"{seed}/{rank}") if shuffle_buffer > 1 else _identity,
        wds.map(make_decoder(image_size), handler=skip_and_count),
        wds.batched(batch_size, collation_fn=make_collate(tokenizer), partial=partial),
    )


def _identity(src: Iterator[Any]) -> Iterator[Any]:
    return src


def sample_shuffle(bufsize: int, base_seed: str):
    """Sample shuffle whose RNG is seeded inside the loader worker, so every (rank, worker) shuffles differently."""
    def stage(src: Iterator[Any]) -> Iterator[Any]:
        rng = random.Random(f"{base_seed}/{_slot()[0]}")
        return wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(src)
    return stage


def make_loader(urls: list[str], tokenizer: CaptionTokenizer, image_size: int, batch_size: int, *,
                num_workers: int = 1, **kwargs: Any) -> DataLoader:
    """DataLoader over `make_dataset` (batching happens in the pipeline, so batch_size=None here)."""
    dataset = make_dataset(urls, tokenizer, image_size, batch_size, **kwargs)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)

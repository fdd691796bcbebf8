"""Stream a dataset version's WebDataset shards into batches, deterministically and exactly resumably.

    sources (manifests) -> per (rank, loader worker) slot: a deterministic shard sequence per source
      -> open via pipelines.storage (file or s3) -> tar members grouped by __key__ -> blocks of
         `shuffle_buffer` samples shuffled with a seed derived from (seed, epoch or draw, shard, block)
      -> [mixing: each sample's source drawn by weight] -> caption check + image decode (or raw bytes)
      -> batch + tokenize -> (images, tokens, info)

Slots. Rank r's DataLoader worker w is slot r * W + w of S = world * W slots (W = max(1, num_workers)). Each
slot is an independent, deterministic stream; nothing is shared between slots at run time.

Modes.
- resampled (training default): draw i of slot (r, w) from source s is a shard picked uniformly by a hash of
  (seed, s, r, w, i): with replacement, forever, different on every slot, and O(1) to locate for any i. Uniform
  per SHARD is uniform per SAMPLE because a draw reads its whole shard (weighting by size would make samples of
  big shards more frequent, not equally frequent).
  Ranks never run dry at different times (a rank that stops early would deadlock the others' collectives).
- epoch: the shard list is shuffled per epoch with the shared seed (order_e) and the concatenation
  order_0 + order_1 + ... is dealt round-robin to the slots: slot k takes global positions k, k + S, k + 2S, ...
  so shard position j belongs to epoch j // n. Every shard (hence every sample) is dealt exactly once per epoch
  across all ranks and workers, epochs follow each other without a gap or a short batch, the slots' shard
  counts never differ by more than one, and fewer shards than slots still works.

Shuffling. The pipeline shuffles samples globally before sharding, so shard-order shuffling plus a shuffle
INSIDE each shard is enough. A shard is read in blocks of `shuffle_buffer` samples and each block is permuted
with a seed from (seed, epoch, shard, block) (resampled: (seed, source, slot, draw, block)); memory is one block
per source per worker. Because nothing depends on what came before, a position is cheap to save and exact.

Position of a slot (JSON): {"sources": [[shard_index, taken], ...], "draws": n, "delivered": d,
"skipped": {reason: count}}: per source, the index in the slot's shard sequence and how many of that shard's
samples (in shuffled order, corrupt ones included) were already handed out; `draws` counts mixing draws. A
shard is left (index + 1, taken 0) the moment its last sample is handed out, so a position never points at a
finished shard. Resume skips whole shards without opening them, opens the current one, reads past (without
decoding) the blocks already consumed, re-permutes the current block and drops its `taken % shuffle_buffer`
first samples: the stream then yields exactly what the uninterrupted stream would have, in the same order.
The running skip counts travel with the position, so the abort threshold and the logs continue where they were.
Positions count samples, not batches, so the batch size, image size and decode mode may change across a resume;
the world size, loader worker count, mode, seed, shuffle_buffer and shard lists may not (make_loader raises a
ValueError naming each mismatch).

Loader workers and resume. DataLoader(num_workers=W) asks its workers for batches strictly round-robin
(0, 1, ..., W-1, 0, ...) and prefetches ahead. So (1) each batch carries the LOGICAL worker id and that
worker's position after the batch, and `StreamState` keeps, per worker, the position from the last batch the
trainer CONSUMED (prefetched batches never reach it); (2) a fresh DataLoader always asks its worker 0 first,
but after m consumed batches the uninterrupted stream's next batch comes from worker m % W. Restarting every
worker at its saved position alone would therefore replay the right batches in a rotated order. Instead the
state records next_worker = (last consumed worker + 1) % W and on resume DataLoader worker p plays logical slot
(p + next_worker) % W: worker k of the logical round still produces the k-th batch of each round, and the
resumed sequence of batches equals the uninterrupted one (tests/test_training_data.py checks it with W = 2 at
odd and even cut points). Caveat: once a FINITE stream (epoch mode with `epochs` set) has exhausted some
workers, DataLoader's order among the remaining ones depends on timing; training uses infinite streams.

Mixing (several sources, resampled only) is per SAMPLE: each sample's source is drawn by a hash of
(seed, rank, worker, draw) with probability proportional to its weight, and every source keeps its own open
shard and position. Per-shard mixing would make runs of hundreds or thousands of consecutive samples (a whole
shard) come from one source, so a rank's whole batch, and its in-batch contrastive negatives, would be
single-source for long stretches; per-sample mixing gives every batch the target proportions. It costs one open
shard per source per worker, which is fine for the handful of sources a mix has.

Skips. A sample without an image member, without a caption (no .txt or only whitespace), with a caption that is
not UTF-8, with image bytes that cannot be decoded (cpu mode) or, in raw mode, whose header cannot be parsed or
whose JPEG lacks its end-of-image marker (a cut download; found without decoding), an unreadable shard and a
truncated tar (the samples it lost, from the manifest's count when known) are skipped and counted by reason, per
worker. Corruption is never fatal by itself, but a stream that is mostly failures
(unreachable storage, a wrong path) must stop with its cause rather than spin: once a worker has skipped at
least `min_skips` samples and they exceed `max_skip_fraction` of what it read, it raises TooManyCorruptSamples
naming the counts and the last error.

Batches: (images, tokens, info)
- images: float32 (b, 3, s, s) preprocessed as training/transform.py's `preprocess`; with raw=True a
  training.decode.RawImages (undecoded bytes, packed) for training.decode.decode_batch on the GPU.
- tokens: int64 (b, context_length).
- info: {"uids": [b WebDataset __key__s], "sources": [b source indices], "worker": logical loader worker,
  "rank": rank, "epoch": epoch of the batch's last sample (None when resampled), "state": that worker's position
  after this batch (JSON), "skipped": {reason: count} running per worker}.

The trainer (one StreamState per rank):
    loader = make_loader(sources, tok, image_size, per_rank_batch, rank=r, world=w, seed=tc.seed,
                         mode=tc.data_mode, num_workers=tc.loader_workers, shuffle_buffer=tc.shuffle_buffer,
                         max_skip_fraction=tc.max_skip_fraction, raw=decode == "gpu",
                         state=saved_states[r] if resuming else None)
    stream = StreamState(loader)           # after make_loader: it starts from the loader's (resumed) positions
    for images, tokens, info in loader:   # every consumed batch, in order
        stream.update(info)
        ...
    checkpoint: all ranks' stream.state() (JSON-serialisable), e.g. gathered with all_gather_object.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import io
import itertools
import json
import logging
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from pipelines import storage
from pipelines.schema import load_manifest
from training.decode import RawImages, is_jpeg, jpeg_is_complete
from training.tokenizer import CaptionTokenizer
from training.transform import preprocess

__all__ = [
    "STATE_FORMAT",
    "ShardStream",
    "Source",
    "StreamState",
    "TooManyCorruptSamples",
    "load_source",
    "make_dataset",
    "make_loader",
    "mix_sources",
    "preprocess",
    "shard_uris",
]
log = logging.getLogger(__name__)

STATE_FORMAT = "witforge.stream/1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # first present wins; shards written by pipelines/ use jpg
SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (e.g. __index__), never samples
WARN_FIRST = 5  # log the first few skips per worker; a flood of warnings helps nobody


class TooManyCorruptSamples(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """One dataset version as the loader sees it: shard URIs, a mixing weight and (if known) per-shard counts.

    The counts (from the manifest) let a truncated or unreadable shard be counted as the samples it lost rather
    than as one error."""

    urls: tuple[str, ...]
    weight: float = 1.0
    samples: tuple[int, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(self.urls))
        if self.samples is not None:
            object.__setattr__(self, "samples", tuple(int(n) for n in self.samples))
        if not self.urls:
            raise ValueError(f"source {self.name or '?'}: no shards")
        if not self.weight > 0:
            raise ValueError(f"source {self.name or '?'}: weight {self.weight} must be positive")
        if self.samples is not None and len(self.samples) != len(self.urls):
            raise ValueError(f"source {self.name or '?'}: {len(self.samples)} sample counts for "
                             f"{len(self.urls)} shards")


def shard_uris(manifest_uri: str) -> list[str]:
    return list(load_source(manifest_uri).urls)


def load_source(manifest_uri: str, weight: float = 1.0) -> Source:
    """A manifest -> Source with its shard URIs and per-shard sample counts (a missing manifest names its URI)."""
    manifest = load_manifest(manifest_uri)
    if not manifest.shards:
        raise ValueError(f"{manifest_uri}: the manifest lists no shards")
    return Source(tuple(manifest.shard_uris(manifest_uri)), float(weight),
                  tuple(s.samples for s in manifest.shards), manifest_uri)


def mix_sources(mix: Sequence[dict[str, Any]]) -> list[Source]:
    """TrainConfig.mix ([{uri, weight}, ...]) -> sources for make_loader."""
    return [load_source(entry["uri"], entry["weight"]) for entry in mix]


def _as_source(entry: Source | Mapping[str, Any]) -> Source:
    if isinstance(entry, Source):
        return entry
    urls = entry.get("shards", entry.get("urls"))
    if urls is None:
        raise TypeError(f"a source mapping needs 'shards' (its shard URIs), got keys {sorted(entry)}")
    return Source(tuple(urls), float(entry.get("weight", 1.0)), entry.get("samples"), str(entry.get("uri", "")))


# What make_loader/make_dataset read: shard URIs (one source), a Source, or Sources / {shards, weight, ...} mappings.
SourcesArg = Sequence[str] | Source | Sequence[Source | Mapping[str, Any]]


def _as_sources(urls: SourcesArg) -> tuple[Source, ...]:
    if isinstance(urls, Source):
        return (urls,)
    items = list(urls)
    if not items:
        raise ValueError("no shards to read")
    if all(isinstance(u, (Source, Mapping)) for u in items):
        return tuple(_as_source(u) for u in items)
    if all(isinstance(u, str) for u in items):
        return (Source(tuple(items)),)
    raise TypeError("make_loader expects a list of shard URIs, or a list of Sources or of "
                    "{shards, weight[, samples, uri]} mappings")


def _fingerprint(sources: Sequence[Source]) -> str:
    """Identifies the shard lists a position refers to: shard names (the last two path components, so a
    dataset copied to another bucket or root still matches), sample counts and weights."""
    desc = [[s.weight, list(s.samples) if s.samples else None, ["/".join(u.rsplit("/", 2)[-2:]) for u in s.urls]]
            for s in sources]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def _uniform(*parts: Any) -> float:
    """A deterministic uniform [0, 1) from its arguments: a counter-based RNG, so draw i needs no draws 0..i-1."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


# ------------------------------------------------------------------------------------------------------- spec

@dataclass(frozen=True)
class StreamSpec:
    """Everything that defines a rank's stream (picklable: it travels to the loader workers)."""

    sources: tuple[Source, ...]
    image_size: int
    batch_size: int
    rank: int
    world: int
    num_workers: int
    seed: int
    resampled: bool
    epochs: int | None
    shuffle_buffer: int
    partial: bool
    raw: bool
    max_skip_fraction: float
    min_skips: int

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def slots(self) -> int:
        return self.world * self.workers

    @property
    def mode(self) -> str:
        return "resampled" if self.resampled else "epoch"

    @property
    def block(self) -> int:
        return max(1, self.shuffle_buffer)

    def identity(self) -> dict[str, Any]:
        """The fields a saved position is only valid for (batch size and image size may change on resume)."""
        return {"rank": self.rank, "world": self.world, "num_workers": self.workers, "mode": self.mode,
                "seed": self.seed, "shuffle_buffer": self.block, "sources": _fingerprint(self.sources)}


def _initial_position(spec: StreamSpec) -> dict[str, Any]:
    return {"sources": [[0, 0] for _ in spec.sources], "draws": 0, "delivered": 0, "skipped": {}}


def check_state(state: Any, spec: StreamSpec) -> None:
    """Raise ValueError naming every mismatch between a saved StreamState and the loader asked to resume it."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = f"a dict with format {state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a data stream state (expected a dict with format {STATE_FORMAT!r}, got {got})")
    names = {"rank": "rank", "world": "world size", "num_workers": "loader worker count (num_workers)",
             "mode": "data mode", "seed": "seed", "shuffle_buffer": "shuffle_buffer",
             "sources": "shard lists/weights (fingerprint)"}
    mine = spec.identity()
    bad = [f"{names[k]}: saved {state.get(k)!r}, this loader {mine[k]!r}" for k in names if state.get(k) != mine[k]]
    if bad:
        raise ValueError("cannot resume the data stream, the saved state does not match this loader: " + "; ".join(bad))
    workers = state.get("workers")
    next_worker = state.get("next_worker")
    if not isinstance(workers, list) or len(workers) != spec.workers or not isinstance(next_worker, int) \
            or not 0 <= next_worker < spec.workers:
        raise ValueError(f"cannot resume the data stream: malformed state (workers/next_worker) for "
                         f"{spec.workers} workers")
    for pos in workers:
        if pos is not None and (not isinstance(pos, dict) or len(pos.get("sources", [])) != len(spec.sources)):
            raise ValueError(f"cannot resume the data stream: a worker position does not cover "
                             f"{len(spec.sources)} sources")


# ------------------------------------------------------------------------------------------------ tar reading

class _TarReader:
    """Samples (members grouped by __key__, as webdataset groups them) from one tar stream, read sequentially.

    Never raises: a read error (truncated or corrupt tar) ends the shard and is kept in `error`; the sample being
    assembled when it happened is dropped (its members may be incomplete). `done` turns True as soon as the
    reader knows no further sample follows, which is while completing the last one (one member of lookahead)."""

    def __init__(self, stream: Any, url: str) -> None:
        self.stream, self.url = stream, url
        self.count = 0
        self.error: Exception | None = None
        self.done = False
        self._pending: tuple[str, str, bytes] | None = None
        self._members = self._iter_members()

    def _iter_members(self) -> Iterator[tuple[str, str, bytes]]:
        # Not a context manager: the generator may be abandoned mid-shard; close() closes the stream.
        tar = tarfile.open(fileobj=self.stream, mode="r|*")  # noqa: SIM115
        for info in tar:
            name = info.name
            if not info.isreg() or SKIP_META.match(name):
                continue
            key, ext = base_plus_ext(name)
            if key is None:
                continue
            data = tar.extractfile(info).read()
            tar.members = []  # stream mode keeps every TarInfo otherwise: memory grows with the shard
            yield key, ext.lower(), data

    def next_sample(self) -> dict[str, Any] | None:
        if self.done:
            return None
        sample: dict[str, Any] | None = None
        try:
            while True:
                member = self._pending if self._pending is not None else next(self._members, None)
                self._pending = None
                if member is None:
                    self.done = True
                    break
                key, ext, data = member
                if sample is None:
                    sample = {"__key__": key, "__url__": self.url}
                elif key != sample["__key__"]:
                    self._pending = member
                    break
                if ext in sample:
                    sample["__duplicate__"] = ext
                sample[ext] = data
        except Exception as exc:  # noqa: BLE001 - any read error ends this shard; the caller counts the loss
            self.error, self.done = exc, True
            return None
        if sample is not None:
            self.count += 1
        return sample

    def skip(self, n: int) -> None:
        for _ in range(n):
            if self.next_sample() is None:
                return

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception as exc:  # noqa: BLE001 - closing a half-read remote file must not fail the stream
            log.debug("closing %s: %r", self.url, exc)


class _Loc(NamedTuple):
    shard_no: int  # index into the source's urls
    epoch: int | None
    key: str  # seed prefix of this shard visit's in-shard permutations


class _Cursor:
    """One source's read position inside a slot (see the module docstring's "Position")."""

    def __init__(self, slot: _Slot, index: int, source: Source, shard: int, taken: int) -> None:
        self.slot, self.index, self.source = slot, index, source
        self.shard, self.taken = int(shard), int(taken)
        self.reader: _TarReader | None = None
        self.loc: _Loc | None = None
        self.block: list[dict[str, Any] | None] = []
        self.block_pos = 0
        self.block_no = 0
        self.final = False
        self._order: tuple[int, list[int]] | None = None

    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.source.urls)))
            random.Random(f"{self.slot.spec.seed}/epoch/{epoch}").shuffle(order)  # the same on every slot
            self._order = (epoch, order)
        return self._order[1]

    def locate(self, i: int) -> _Loc | None:
        """Which shard is the i-th of this slot's sequence (None: a finite stream has ended)."""
        spec, slot = self.slot.spec, self.slot
        if spec.resampled:
            n = len(self.source.urls)
            shard_no = min(int(_uniform(spec.seed, "draw", self.index, spec.rank, slot.worker, i) * n), n - 1)
            return _Loc(shard_no, None, f"{spec.seed}/shuffle/{self.index}/{spec.rank}/{slot.worker}/{i}")
        epoch, r = divmod(slot.slot_index + i * spec.slots, len(self.source.urls))
        if spec.epochs is not None and epoch >= spec.epochs:
            return None
        shard_no = self._epoch_order(epoch)[r]
        return _Loc(shard_no, epoch, f"{spec.seed}/shuffle/{epoch}/{shard_no}")

    def _expected(self) -> int | None:
        return self.source.samples[self.loc.shard_no] if self.source.samples and self.loc else None

    def _open(self, loc: _Loc) -> bool:
        url = self.source.urls[loc.shard_no]
        try:
            stream = storage.open_uri(url)
        except Exception as exc:  # noqa: BLE001 - an unreadable shard is skipped like a corrupt sample
            self.shard, self.taken = self.shard + 1, 0
            expected = self.source.samples[loc.shard_no] if self.source.samples else None
            self.slot.skip("unreadable_shard", expected or 1, url, exc)
            return False
        self.reader, self.loc = _TarReader(stream, url), loc
        block = self.slot.spec.block
        # Resume: the consumed blocks are read past without decoding; the current one is re-permuted identically.
        self.block_no = self.taken // block
        self.reader.skip(self.block_no * block)
        self._load_block()
        self.block_pos = min(self.taken % block, len(self.block))
        return True

    def _load_block(self) -> None:
        items: list[dict[str, Any] | None] = []
        while len(items) < self.slot.spec.block:
            sample = self.reader.next_sample()
            if sample is None:
                break
            items.append(sample)
        self.final = self.reader.done
        if self.slot.spec.shuffle_buffer > 1:
            random.Random(f"{self.loc.key}/{self.block_no}").shuffle(items)
        self.block, self.block_pos = items, 0
        self.block_no += 1

    def _finish(self) -> None:
        """Leave the shard (index + 1, taken 0) and count what a truncated or cut-short tar lost."""
        reader, url, expected = self.reader, self.reader.url, self._expected()
        reader.close()
        self.reader, self.block, self.block_pos, self.loc = None, [], 0, None
        self.shard, self.taken = self.shard + 1, 0
        lost, error = 0, reader.error
        if error is not None:
            lost = max(1, expected - reader.count) if expected is not None else 1
        elif expected is not None and reader.count < expected:
            lost = expected - reader.count
            error = EOFError(f"the tar ends after {reader.count} of the manifest's {expected} samples")
        self.slot.note_shard(reader.count)
        if lost:
            self.slot.skip("truncated_tar", lost, url, error)

    def next(self) -> tuple[dict[str, Any], int | None] | None:
        """The next raw sample of this source and its epoch; None when a finite stream has ended."""
        while True:
            if self.reader is None:
                loc = self.locate(self.shard)
                if loc is None:
                    return None
                if not self._open(loc):
                    continue
            if self.block_pos < len(self.block):
                sample, epoch = self.block[self.block_pos], self.loc.epoch
                self.block[self.block_pos] = None  # release the bytes as soon as they are handed out
                self.block_pos += 1
                self.taken += 1
                if self.block_pos == len(self.block) and self.final:
                    self._finish()  # eagerly: a saved position never points at a finished shard
                return sample, epoch
            if self.final:
                self._finish()
            else:
                self._load_block()


# ---------------------------------------------------------------------------------------------------- a slot

class _Slot:
    """The stream of one (rank, loader worker): sources -> samples -> batches, with its position and counts."""

    def __init__(self, spec: StreamSpec, worker: int, position: dict[str, Any] | None,
                 tokenizer: CaptionTokenizer) -> None:
        pos = copy.deepcopy(position) if position is not None else _initial_position(spec)
        self.spec, self.worker, self.tokenizer = spec, worker, tokenizer
        self.slot_index = spec.rank * spec.workers + worker
        self.cursors = [_Cursor(self, i, src, *pos["sources"][i]) for i, src in enumerate(spec.sources)]
        self.draws, self.delivered = int(pos["draws"]), int(pos["delivered"])
        self.skipped: Counter = Counter({k: int(v) for k, v in pos["skipped"].items()})
        self.accepted = 0  # samples decoded into the batch being assembled
        self.empty_run = 0
        self.last_error = ""
        self.warned = 0
        weights = [s.weight for s in spec.sources]
        self.weight_cum = list(itertools.accumulate(weights))

    def position(self) -> dict[str, Any]:
        return {"sources": [[c.shard, c.taken] for c in self.cursors], "draws": self.draws,
                "delivered": self.delivered, "skipped": dict(sorted(self.skipped.items()))}

    def skip(self, reason: str, count: int, where: str, exc: Exception) -> None:
        self.skipped[reason] += count
        self.last_error = f"{where}: {exc!r}"
        if self.warned < WARN_FIRST:
            self.warned += 1
            log.warning("rank %d loader worker %d: skipping %d sample(s) (%s) %s", self.spec.rank, self.worker,
                        count, reason, self.last_error)
        total = sum(self.skipped.values())
        read = total + self.delivered + self.accepted
        if total >= self.spec.min_skips and total > self.spec.max_skip_fraction * read:
            raise TooManyCorruptSamples(
                f"rank {self.spec.rank} loader worker {self.worker}: {total} of {read} samples skipped "
                f"({dict(sorted(self.skipped.items()))}), over the limit of {self.spec.max_skip_fraction:.1%} "
                f"(checked after {self.spec.min_skips} skips); last error: {self.last_error}") from exc

    def note_shard(self, samples_read: int) -> None:
        """Guard against spinning forever over shards that hold nothing (and raise no error to count)."""
        self.empty_run = 0 if samples_read else self.empty_run + 1
        limit = 100 + 2 * sum(len(s.urls) for s in self.spec.sources)
        if self.empty_run > limit:
            raise ValueError(f"rank {self.spec.rank} loader worker {self.worker}: {self.empty_run} shards in a row "
                             f"held no samples; are these WebDataset tars?")

    def _pick_source(self) -> int:
        if len(self.cursors) == 1:
            return 0
        u = _uniform(self.spec.seed, "mix", self.spec.rank, self.worker, self.draws)
        self.draws += 1
        return min(bisect.bisect_right(self.weight_cum, u * self.weight_cum[-1]), len(self.cursors) - 1)

    def _accept(self, raw: dict[str, Any]) -> tuple[Any, str] | None:
        """(image tensor or image bytes, caption), or None after counting why the sample is skipped."""
        where = f"{raw['__url__']}:{raw['__key__']}"
        if "__duplicate__" in raw:
            self.skip("duplicate_member", 1, where, ValueError(f"two .{raw['__duplicate__']} members"))
            return None
        image = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
        if image is None:
            self.skip("missing_image", 1, where, ValueError(f"no image member ({'/'.join(IMAGE_EXTS)})"))
            return None
        text = raw.get("txt")  # checked before the image: a captionless sample costs no decode
        if text is None:
            self.skip("missing_caption", 1, where, ValueError("no .txt member"))
            return None
        try:
            caption = text.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            self.skip("bad_caption", 1, where, exc)
            return None
        if not caption:
            self.skip("missing_caption", 1, where, ValueError("empty caption"))
            return None
        try:
            with Image.open(io.BytesIO(image)) as img:
                if self.spec.raw:
                    # No pixel decode here: the header parse catches garbage and the end-of-image check a cut
                    # download, so the rare failure left for decode_batch (which would shrink the batch) is
                    # corruption inside the compressed data.
                    if is_jpeg(image) and not jpeg_is_complete(image):
                        raise ValueError("JPEG without an end-of-image marker after its last scan (truncated)")
                    return image, caption
                return preprocess(img, self.spec.image_size), caption
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            self.skip("corrupt_image", 1, where, exc)
            return None

    def batches(self) -> Iterator[tuple[Any, torch.Tensor, dict[str, Any]]]:
        spec = self.spec
        while True:
            uids: list[str] = []
            sources: list[int] = []
            images: list[Any] = []
            captions: list[str] = []
            epoch, ended = None, False
            self.accepted = 0
            while len(uids) < spec.batch_size:
                s = self._pick_source()
                got = self.cursors[s].next()
                if got is None:
                    ended = True
                    break
                raw, epoch = got
                item = self._accept(raw)
                if item is None:
                    continue
                uids.append(raw["__key__"])
                sources.append(s)
                images.append(item[0])
                captions.append(item[1])
                self.accepted += 1
            if not uids or (ended and not spec.partial and len(uids) < spec.batch_size):
                return
            self.delivered += len(uids)
            self.accepted = 0
            batch_images = RawImages.pack(images) if spec.raw else torch.stack(images)
            tokens = torch.from_numpy(self.tokenizer.encode(captions))
            yield batch_images, tokens, {
                "uids": uids, "sources": sources, "worker": self.worker, "rank": spec.rank, "epoch": epoch,
                "state": self.position(), "skipped": dict(sorted(self.skipped.items()))}
            if ended:
                return


# ------------------------------------------------------------------------------------------ dataset, loader

class ShardStream(IterableDataset):
    """One rank's stream; in a DataLoader each worker runs its own slot (see the module docstring)."""

    def __init__(self, spec: StreamSpec, tokenizer: CaptionTokenizer, state: dict[str, Any] | None = None) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        if state is None:
            self.positions: list[dict[str, Any] | None] = [None] * spec.workers
            self.next_worker, self.batches = 0, 0
        else:
            check_state(state, spec)
            self.positions = copy.deepcopy(list(state["workers"]))
            self.next_worker, self.batches = int(state["next_worker"]), int(state.get("batches", 0))

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor, dict[str, Any]]]:
        info = get_worker_info()
        physical, count = (info.id, info.num_workers) if info is not None else (0, 1)
        if count != self.spec.workers:
            raise ValueError(f"this stream was built for num_workers={self.spec.num_workers} but is iterated by "
                             f"{count} loader process(es); pass the DataLoader's num_workers to make_dataset")
        # The round-robin rotation that makes a resumed DataLoader continue the uninterrupted batch order.
        logical = (physical + self.next_worker) % count
        return _Slot(self.spec, logical, self.positions[logical], self.tokenizer).batches()


def make_dataset(urls: SourcesArg, tokenizer: CaptionTokenizer, image_size: int, batch_size: int, *,
                 rank: int = 0, world: int = 1, seed: int = 0, resampled: bool = True, mode: str | None = None,
                 epochs: int | None = None, shuffle_buffer: int = 1000, partial: bool = False, num_workers: int = 0,
                 max_skip_fraction: float = 0.05, min_skips: int = 100, raw: bool = False,
                 state: dict[str, Any] | None = None) -> ShardStream:
    """One rank's stream of (images, tokens, info) batches (see the module docstring).

    urls: shard URIs (one source), or Sources / {shards, weight[, samples, uri]} mappings (several: weighted
      per-sample mixing, resampled only).
    mode: "resampled" or "epoch" (TrainConfig.data_mode); when given it overrides `resampled`.
    epochs: epoch mode only; None (default) streams forever, as training needs; n stops after n epochs.
    raw: batches carry undecoded image bytes (training.decode.RawImages) for decode_batch on the GPU.
    num_workers: the DataLoader's worker count that will iterate this dataset (0: iterated in-process).
    state: a StreamState.state() of this rank to resume from (same world, workers, mode, seed, shards)."""
    sources = _as_sources(urls)
    if mode is not None:
        if mode not in ("resampled", "epoch"):
            raise ValueError(f"data mode {mode!r} is not one of ['resampled', 'epoch']")
        resampled = mode == "resampled"
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    if batch_size < 1 or image_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size {batch_size} and image_size {image_size} must be >= 1, num_workers >= 0")
    if len(sources) > 1 and not resampled:
        raise ValueError("mixing several sources needs resampled mode (an epoch of a weighted mix is undefined)")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be None (forever) or >= 1, got {epochs}")
    if not 0 < max_skip_fraction <= 1 or min_skips < 1:
        raise ValueError(f"max_skip_fraction {max_skip_fraction} must be in (0, 1] and min_skips {min_skips} >= 1")
    spec = StreamSpec(sources=sources, image_size=image_size, batch_size=batch_size, rank=rank, world=world,
                      num_workers=num_workers, seed=seed, resampled=resampled, epochs=None if resampled else epochs,
                      shuffle_buffer=shuffle_buffer, partial=partial, raw=raw,
                      max_skip_fraction=max_skip_fraction, min_skips=min_skips)
    return ShardStream(spec, tokenizer, state)


def make_loader(urls: SourcesArg, tokenizer: CaptionTokenizer, image_size: int, batch_size: int, *,
                num_workers: int = 1, prefetch_factor: int = 4, pin_memory: bool = False, **kwargs: Any) -> DataLoader:
    """DataLoader over `make_dataset` (which batches, hence batch_size=None here); kwargs go to make_dataset."""
    dataset = make_dataset(urls, tokenizer, image_size, batch_size, num_workers=num_workers, **kwargs)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch_factor if num_workers > 0 else None, pin_memory=pin_memory)


class StreamState:
    """What the trainer keeps about one rank's loader: per loader worker, the position carried by the last
    batch it CONSUMED, and which worker the next batch comes from. Feed it every consumed batch's info, in order;
    `state()` is what goes into the checkpoint and what `make_loader(..., state=...)` resumes from."""

    def __init__(self, loader: DataLoader | ShardStream) -> None:
        dataset = loader.dataset if isinstance(loader, DataLoader) else loader
        if not isinstance(dataset, ShardStream):
            raise TypeError(f"StreamState needs a loader from make_loader/make_dataset, got {type(dataset).__name__}")
        self.spec = dataset.spec
        self.workers = copy.deepcopy(dataset.positions)  # a resumed loader starts from its saved positions
        self.next_worker, self.batches = dataset.next_worker, dataset.batches

    def update(self, info: dict[str, Any]) -> None:
        worker = info["worker"]
        if not 0 <= worker < self.spec.workers or info.get("rank", self.spec.rank) != self.spec.rank:
            raise ValueError(f"batch info from rank {info.get('rank')} worker {worker} does not belong to this "
                             f"stream (rank {self.spec.rank}, {self.spec.workers} workers)")
        self.workers[worker] = info["state"]
        self.next_worker = (worker + 1) % self.spec.workers
        self.batches += 1

    def skipped(self) -> dict[str, int]:
        """Skipped samples by reason, summed over this rank's workers (as of the consumed batches)."""
        total: Counter = Counter()
        for pos in self.workers:
            if pos is not None:
                total.update(pos["skipped"])
        return dict(sorted(total.items()))

    def delivered(self) -> int:
        return sum(pos["delivered"] for pos in self.workers if pos is not None)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable; pass it back as make_loader(..., state=...) on the same rank to resume."""
        return {"format": STATE_FORMAT, **self.spec.identity(), "batches": self.batches,
                "next_worker": self.next_worker, "workers": copy.deepcopy(self.workers)}

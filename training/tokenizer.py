"""Caption tokenizer: byte-level BPE trained with HF `tokenizers` on the dataset's own captions.

Captions come from the manifest's per-shard parquet files (no untarring). Text is lower-cased (as in CLIP).
Every sequence is [SOT] + BPE ids + [EOT], padded with PAD to `context_length`; a long caption is truncated so
EOT is always the last real token (the text tower pools there). Saved as `tokenizer.json` beside a checkpoint.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pipelines import storage
from pipelines.schema import Manifest

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
# Trainers assign special tokens the first ids, in this order: pad=0, sot=1, eot=2.
SPECIALS = (PAD, SOT, EOT)


class CaptionTokenizer:
    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        if context_length < 3:
            raise ValueError(f"context_length {context_length} leaves no room for SOT, a token and EOT")
        self.tok = tokenizer
        self.context_length = context_length
        ids = [tokenizer.token_to_id(t) for t in SPECIALS]
        if None in ids:
            raise ValueError(f"tokenizer lacks a special token among {SPECIALS}")
        self.pad_id, self.sot_id, self.eot_id = ids

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, context_length: int) -> "CaptionTokenizer":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        )
        tok.train_from_iterator(captions, trainer=trainer)
        if tok.get_vocab_size() > vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the byte alphabet plus specials "
                             f"({tok.get_vocab_size()}); use at least 259")
        return cls(tok, context_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), context_length) int64 ids: SOT, tokens, EOT, then PAD."""
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        for i, enc in enumerate(self.tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.sot_id] + enc.ids[: self.context_length - 2] + [self.eot_id]
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def to_str(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_str(cls, text: str, context_length: int) -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(text), context_length)

    def save(self, uri: str) -> None:
        storage.write_bytes(uri, self.to_str().encode())

    @classmethod
    def load(cls, uri: str, context_length: int) -> "CaptionTokenizer":
        return cls.from_str(storage.read_bytes(uri).decode(), context_length)

    def __getstate__(self) -> dict:  # picklable for loader workers and Ray tasks
        return {"json": self.to_str(), "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Tokenizer.from_str(state["json"]), state["context_length"])


def manifest_captions(manifest: Manifest, manifest_uri: str) -> Iterator[str]:
    """Every caption of the dataset version, read from the per-shard parquet files beside the tars."""
    base = manifest_uri.rsplit("/", 1)[0]
    for shard in manifest.shards:
        uri = storage.join(base, shard.parquet)
        try:
            with storage.open_uri(uri) as f:
                table = pq.read_table(f, columns=["caption"])
        except FileNotFoundError:
            raise FileNotFoundError(f"caption parquet {uri} listed in {manifest_uri} does not exist") from None
        for caption in table.column("caption").to_pylist():
            if caption:
                yield caption


def train_from_manifest(manifest: Manifest, manifest_uri: str, vocab_size: int,
                        context_length: int) -> CaptionTokenizer:
    return CaptionTokenizer.train(manifest_captions(manifest, manifest_uri), vocab_size, context_length)

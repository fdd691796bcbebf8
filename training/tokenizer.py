"""Caption tokenizer: byte-level BPE trained with HF `tokenizers` on the dataset's own captions.

Captions come from the manifest's per-shard parquet files (no untarring). Text is NFKC-normalised, runs of
whitespace are collapsed and it is lower-cased (as CLIP's own tokenizer does). Every sequence is
[SOT] + BPE ids + [EOT], padded with PAD to `context_length`; a long caption is truncated so EOT is always the
last real token (the text tower pools there). Saved as `tokenizer.json` beside a checkpoint.

Id layout, as in OpenAI's BPE: PAD = 0, then the merged byte-level vocabulary, then SOT = V-2 and EOT = V-1
(V = `vocab_size`, at most the model's vocab_size). EOT being the HIGHEST id means "pool at the argmax token"
(open_clip's default text pooling, Hugging Face CLIP's legacy pooling) and "pool at the first EOT" (ours) pick
the same position, so exported checkpoints behave identically in those libraries.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pipelines import storage
from pipelines.schema import Manifest

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
SPECIALS = (PAD, SOT, EOT)
# 256 byte-level symbols + PAD in the trained model, + SOT and EOT added after training.
MIN_VOCAB_SIZE = 256 + len(SPECIALS)


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
        """Number of ids (special tokens included): every id this tokenizer emits is below it."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_is_highest(self) -> bool:
        """True for tokenizers trained by this module; False for ones from before EOT moved to the top (pad=0,
        sot=1, eot=2), which our model still handles (it pools at the first EOT) but argmax pooling does not."""
        return self.eot_id == self.vocab_size - 1

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, context_length: int) -> "CaptionTokenizer":
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the byte alphabet plus specials; "
                             f"use at least {MIN_VOCAB_SIZE}")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        # BPE trainers put their special tokens first, so only PAD is given to the trainer (id 0, the value
        # padding has in OpenAI's tokenizer too); the trainer fills the rest up to vocab_size - 2.
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 2, special_tokens=[PAD], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        )
        tok.train_from_iterator(captions, trainer=trainer)
        # Added tokens take the next free ids: SOT = V-2, EOT = V-1, whatever size the corpus allowed.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
        out = cls(tok, context_length)
        assert out.vocab_size <= vocab_size and out.eot_is_highest and out.sot_id == out.vocab_size - 2
        return out

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

"""The WIT metadata (CLIP's 500k queries, as MetaCLIP reconstructed them) for any domain, and matching alt texts
against it with one Aho-Corasick automaton.

    entries = build_entries(cfg)                       # cfg: MetadataConfig -> [Entry(text, source)], in priority order
    matcher = Matcher([e.text for e in entries])       # built once per Spark partition
    matcher.match("Photo of a Red Cardinal, perched")  # -> sorted indices of every entry found in the text

    python -m pipelines.metadata --vocab configs/birds_vocab.txt --titles configs/birds_titles.txt
        # prints the entries it would use ("source<TAB>entry"), to check a vocabulary before a build

Sources, in priority order (MetaCLIP's: WordNet synsets, Wikipedia unigrams with count >= 100, Wikipedia bigrams
with high PMI, Wikipedia titles; here the user's domain stands in for Wikipedia):
- vocab: files the user gives, one entry per line (the domain's WordNet): taken as they are;
- titles: files of titles (article, product or species names), one per line;
- ngram_text: plain-text files of the domain; its unigrams seen at least min_unigram_count times and its bigrams
  seen at least min_bigram_count times with PMI >= min_bigram_pmi become entries. Common function words ("the",
  "of") are left out of these when drop_stopwords is on: a small domain text has few other frequent words, and
  an entry matching nearly every alt text would keep pairs the vocabulary never asked for.
Entries are deduplicated on their normalised form (first one wins); entries longer than max_entry_chars or made
only of punctuation are skipped.

Matching is MetaCLIP's sub-string matching: text and entries are lower-cased (unless match_case), punctuation
is set apart by spaces, whitespace collapsed, and " entry " is searched in " text ", so an entry matches whole
words only ("red" is in "a red star", not in "bored"; "circle" is not in "circles", list both forms).
"""

from __future__ import annotations

import argparse
import math
import os
import string
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipelines import storage

VOCAB, TITLE, UNIGRAM, BIGRAM = "vocab", "title", "unigram", "bigram"
_PUNCT = ",.;:?!`\"()[]{}|/\\"
_SPACE_PUNCT = {ord(c): f" {c} " for c in _PUNCT}
# English function words: never n-gram entries when drop_stopwords is on.
STOPWORDS = frozenset([
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having",
    "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
    "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or",
    "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that",
    "the", "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too",
    "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
    "why", "will", "with", "would", "you", "your",
])


@dataclass
class MetadataConfig:
    vocab: list[str] = field(default_factory=list)
    """Vocabulary files (local paths or s3:// URIs), one entry per line; blank lines and '#' comments skipped."""
    titles: list[str] = field(default_factory=list)
    """Title files (one title per line), added after the vocabulary."""
    ngram_text: list[str] = field(default_factory=list)
    """Plain-text files of the domain whose frequent unigrams and high-PMI bigrams become entries."""
    min_unigram_count: int = 100
    """A unigram of ngram_text becomes an entry when seen at least this often (MetaCLIP: 100 in Wikipedia)."""
    min_bigram_count: int = 30
    """A bigram of ngram_text must be seen at least this often (PMI is noise on rarer pairs)..."""
    min_bigram_pmi: float = 3.0
    """...and have pointwise mutual information log2(p(xy) / (p(x) p(y))) at least this high."""
    drop_stopwords: bool = True
    """Leave function words ("the", "of", ...) out of the n-gram entries (never out of vocab or titles)."""
    max_entry_chars: int = 256
    """Longer entries are skipped (MetaCLIP's max_len)."""

    def __post_init__(self) -> None:
        for name in ("min_unigram_count", "min_bigram_count", "max_entry_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"metadata.{name}: {getattr(self, name)} must be >= 1")

    def sources(self) -> list[str]:
        return [*self.vocab, *self.titles, *self.ngram_text]

    def check_files(self, where: str) -> None:
        """Fail naming the field if a local source file is missing (s3:// ones are checked when read)."""
        for name in ("vocab", "titles", "ngram_text"):
            for i, uri in enumerate(getattr(self, name)):
                if not storage.is_remote(uri) and not os.path.isfile(uri.removeprefix("file://")):
                    raise ValueError(f"{where}.{name}[{i}]: {uri} is not a file")


@dataclass(frozen=True)
class Entry:
    text: str
    source: str
    """vocab, title, unigram or bigram."""


def spaced(text: str, match_case: bool = False) -> str:
    """The form matching works on: " tok tok , tok " (punctuation apart, whitespace collapsed, space-wrapped)."""
    if not match_case:
        text = text.lower()
    return " " + " ".join(text.translate(_SPACE_PUNCT).split()) + " "


def _is_punctuation(token: str) -> bool:
    return all(c in string.punctuation or not c.isalnum() for c in token)


def read_lines(uri: str) -> list[str]:
    """Entries of a vocabulary/title file: stripped lines, blank lines and '#' comments skipped."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ngram_entries(texts: Iterable[str], cfg: MetadataConfig, match_case: bool = False) -> list[Entry]:
    """Frequent unigrams (count desc) then high-PMI bigrams (PMI desc) of `texts`, ties broken alphabetically."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        prev = None
        for token in spaced(text, match_case).split():
            if _is_punctuation(token):
                prev = None  # punctuation ends a phrase: no bigram across it (as MetaCLIP's build_ngram)
                continue
            unigrams[token] += 1
            if prev is not None:
                bigrams[(prev, token)] += 1
            prev = token
    total = sum(unigrams.values())
    stop = STOPWORDS if cfg.drop_stopwords else frozenset()
    out = [Entry(w, UNIGRAM) for w, c in sorted(unigrams.items(), key=lambda kv: (-kv[1], kv[0]))
           if c >= cfg.min_unigram_count and w.lower() not in stop]
    scored = []
    for (x, y), c in bigrams.items():
        if c < cfg.min_bigram_count or x.lower() in stop or y.lower() in stop:
            continue
        pmi = math.log2(c * total / (unigrams[x] * unigrams[y]))
        if pmi >= cfg.min_bigram_pmi:
            scored.append((-pmi, f"{x} {y}"))
    out += [Entry(text, BIGRAM) for _, text in sorted(scored)]
    return out


def build_entries(cfg: MetadataConfig, match_case: bool = False) -> list[Entry]:
    """The metadata: vocab, then titles, then n-gram entries; deduplicated on the matching form."""
    candidates = [Entry(" ".join(line.split()), VOCAB) for uri in cfg.vocab for line in read_lines(uri)]
    candidates += [Entry(" ".join(line.split()), TITLE) for uri in cfg.titles for line in read_lines(uri)]
    if cfg.ngram_text:
        texts = [storage.read_bytes(uri).decode("utf-8-sig", errors="replace") for uri in cfg.ngram_text]
        candidates += ngram_entries(texts, cfg, match_case)
    seen: set[str] = set()
    out = []
    for e in candidates:
        key = spaced(e.text, match_case)
        if key in seen or len(e.text) > cfg.max_entry_chars or _is_punctuation(e.text.replace(" ", "")):
            continue
        seen.add(key)
        out.append(e)
    return out


class Matcher:
    """Every entry occurring in a text, found with one Aho-Corasick automaton (pyahocorasick) over the spaced
    entries: one pass over the text whatever the number of entries, never a loop over entries."""

    def __init__(self, entries: list[str], match_case: bool = False) -> None:
        import ahocorasick

        self.match_case = match_case
        self._automaton = ahocorasick.Automaton()
        for i, text in enumerate(entries):
            key = spaced(text, match_case)
            if key.strip() and key not in self._automaton:  # duplicates: the first index answers for both
                self._automaton.add_word(key, i)
        self._empty = len(self._automaton) == 0
        if not self._empty:
            self._automaton.make_automaton()

    def match(self, text: str) -> tuple[int, ...]:
        """Sorted indices of the entries found in `text` (each once, however often it occurs)."""
        if self._empty or not text:
            return ()
        return tuple(sorted({i for _, i in self._automaton.iter(spaced(text, self.match_case))}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.metadata", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", nargs="*", default=[])
    p.add_argument("--titles", nargs="*", default=[])
    p.add_argument("--ngram-text", nargs="*", default=[])
    p.add_argument("--min-unigram-count", type=int, default=MetadataConfig.min_unigram_count)
    p.add_argument("--min-bigram-count", type=int, default=MetadataConfig.min_bigram_count)
    p.add_argument("--min-bigram-pmi", type=float, default=MetadataConfig.min_bigram_pmi)
    p.add_argument("--match-case", action="store_true")
    args = p.parse_args(argv)
    cfg = MetadataConfig(vocab=args.vocab, titles=args.titles, ngram_text=args.ngram_text,
                         min_unigram_count=args.min_unigram_count, min_bigram_count=args.min_bigram_count,
                         min_bigram_pmi=args.min_bigram_pmi)
    entries = build_entries(cfg, args.match_case)
    for e in entries:
        print(f"{e.source}\t{e.text}")
    print(f"{len(entries)} entries: " + ", ".join(f"{s} {sum(e.source == s for e in entries)}"
                                                 for s in (VOCAB, TITLE, UNIGRAM, BIGRAM)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

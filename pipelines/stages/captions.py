"""Caption rules of the filter stage: normalisation (ftfy), length, uninformative alt texts and language.

Language identification uses langid's bundled model (nothing is downloaded), restricted to a candidate set of
languages. Short alt texts ("three red stars") are hard for any character-n-gram model, so a caption is dropped
for its language only when langid is confident AND the caption is long enough for that confidence to mean
something; see `CaptionRules.language_min_words`/`language_min_confidence` in FilterConfig and the measured
rates in tests/test_pipelines_filter.py.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

import ftfy

_WS = re.compile(r"\s+")
# Control and format characters (zero-width spaces, BOMs, soft hyphens...) that alt texts carry invisibly.
_INVISIBLE_CATEGORIES = {"Cc", "Cf"}

DEFAULT_UNINFORMATIVE = [
    r"(?i)^(img|dsc|dscn|dcim|pict?|p|photo|image|screenshot|scan)[ _-]?\d+(\.(jpe?g|png|gif|webp|bmp|tiff?))?$",
    r"(?i)^[\w-]+\.(jpe?g|png|gif|webp|bmp|tiff?)$",
    r"(?i)^(click|tap) (here|to enlarge|for more)\b.*$",
    r"(?i)^(an? |the )?(image|photo|picture|pic|thumbnail|thumb|untitled|placeholder|logo|icon|banner|spacer|"
    r"no image|image not found|loading)( \d+)?$",
    r"^[\W\d_]+$",  # only digits/punctuation
]


def normalize_caption(text: str) -> str:
    """Repair with ftfy, drop invisible control/format characters, collapse whitespace.

    ftfy (default settings) undoes mojibake ("cafÃ©" -> "café"), leftover HTML entities, curly quotes,
    ligatures and full-width forms, and NFC-normalises: alt texts pass through many CMSs and encodings, and
    the same caption should reach the tokenizer as the same string.
    """
    text = ftfy.fix_text(text)
    text = "".join(" " if ch in "\t\n\r\v\f" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)
    return _WS.sub(" ", text).strip()


@lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    ident.set_languages(list(languages))
    return ident


@lru_cache(maxsize=8)
def _compiled(patterns: tuple[str, ...]) -> list[re.Pattern]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ValueError(f"pipeline.filter.uninformative_patterns[{i}]: {p!r} is not a valid regex ({exc})") from exc
    return out


def identify(text: str, candidates: Sequence[str]) -> tuple[str, float]:
    """(language code, normalised probability) among `candidates`."""
    lang, prob = _identifier(tuple(sorted(candidates))).classify(text)
    return lang, float(prob)


def judge_caption(caption: str, *, min_words: int, max_chars: int, uninformative: Sequence[str],
                  candidates: Sequence[str], keep_languages: Sequence[str], language_min_words: int,
                  language_min_confidence: float) -> tuple[str | None, str, float, str]:
    """(drop reason or None, detected language, its probability, detail) for an already normalised caption.

    `detail` says why in words and numbers ("1 words < min_words 2"); empty when the caption is kept.

    A caption is only dropped as `language` when langid's best candidate is outside `keep_languages` with
    probability >= language_min_confidence and the caption has >= language_min_words words: on two- or
    three-word alt texts langid's best guess is close to a coin toss, and wrongly dropping clean English costs
    more than keeping the odd short foreign caption.
    """
    lang, prob = identify(caption, candidates) if caption else ("", 0.0)
    for i, pattern in enumerate(_compiled(tuple(uninformative))):
        if pattern.search(caption):
            return "uninformative", lang, prob, f"matches uninformative_patterns[{i}] {pattern.pattern!r}"
    words = caption.split()
    if len(words) < min_words:
        return "too_short", lang, prob, f"{len(words)} words < min_words {min_words}"
    if len(caption) > max_chars:
        return "too_long", lang, prob, f"{len(caption)} chars > max_chars {max_chars}"
    if lang not in keep_languages and prob >= language_min_confidence and len(words) >= language_min_words:
        return "language", lang, prob, (f"{lang} with p={prob:.3f} >= {language_min_confidence:g}, "
                                        f"keeping {list(keep_languages)}")
    return None, lang, prob, ""

"""CaptionTokenizer: OpenAI's id layout (pad 0, SOT = V-2, EOT = V-1 <= the configured vocab_size), so pooling at
the argmax id finds EOT; normalisation, truncation and serialisation round trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.tokenizer import MIN_VOCAB_SIZE, CaptionTokenizer

CAPTIONS = ["a red circle on the left", "three blue stars", "two green squares on a gray background",
            "a big yellow triangle next to a small purple hexagon"] * 10


@pytest.mark.parametrize("vocab_size", [MIN_VOCAB_SIZE, 300, 1000, 49408])
def test_eot_is_the_highest_id_and_the_vocabulary_fits(vocab_size):
    tok = CaptionTokenizer.train(CAPTIONS, vocab_size, context_length=12)
    assert tok.vocab_size <= vocab_size  # a small corpus may stop merging early: still at most the config's size
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, tok.vocab_size - 2, tok.vocab_size - 1)
    assert tok.eot_is_highest
    ids = tok.encode(CAPTIONS[:4] + ["a red circle " * 20])
    assert ids.max() == tok.eot_id and ids.max() < vocab_size
    # Pooling at the argmax id (open_clip, HF legacy) == pooling at the first EOT (our model).
    assert (ids.argmax(axis=1) == (ids == tok.eot_id).argmax(axis=1)).all()
    assert (ids[:, 1:] != tok.sot_id).all() and (ids[:, 0] == tok.sot_id).all()


def test_too_small_vocabulary_is_rejected():
    with pytest.raises(ValueError, match=f"at least {MIN_VOCAB_SIZE}"):
        CaptionTokenizer.train(CAPTIONS, MIN_VOCAB_SIZE - 1, context_length=12)


def test_normalisation_truncation_and_round_trips():
    tok = CaptionTokenizer.train(CAPTIONS, 400, context_length=12)
    same = tok.encode(["Three BLUE stars", "  three\tblue   stars\n", "three blue stars"])
    assert (same == same[0]).all()  # NFKC, lower case, whitespace runs collapsed (as CLIP's own tokenizer)
    assert tok.decode(same[0]) == "three blue stars"
    row = same[0]
    n = int((row != tok.pad_id).sum())
    assert row[n - 1] == tok.eot_id and (row[n:] == tok.pad_id).all()
    long = tok.encode(["a red circle " * 20])[0]
    assert long[0] == tok.sot_id and long[-1] == tok.eot_id and (long != tok.pad_id).all()
    for again in (CaptionTokenizer.from_str(tok.to_str(), 12), pickle.loads(pickle.dumps(tok))):
        assert np.array_equal(again.encode(CAPTIONS), tok.encode(CAPTIONS))
        assert (again.pad_id, again.sot_id, again.eot_id) == (tok.pad_id, tok.sot_id, tok.eot_id)

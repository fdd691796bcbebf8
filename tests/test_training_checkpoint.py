"""Checkpoints: safetensors round trip, latest.json written last, digest check, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import storage
from synthweb.scenes import SceneSpec, render
from training.checkpoint import CheckpointError, latest_checkpoint, load_clip, save_checkpoint
from training.model import CLIP, CLIPConfig
from training.tokenizer import CaptionTokenizer

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                  vocab_size=300, context_length=12, text_width=32, text_layers=1, text_heads=2)


def _tok() -> CaptionTokenizer:
    return CaptionTokenizer.train(["a red circle", "the number 7", "two blue stars"] * 5, 300, TINY.context_length)


@pytest.mark.parametrize("remote", [False, True])
def test_save_and_load_round_trip(tmp_path, remote, request):
    root = request.getfixturevalue("s3_bucket") + "/ck" if remote else str(tmp_path)
    torch.manual_seed(0)
    tok = _tok()
    model = CLIP(TINY, eot_id=tok.eot_id).eval()
    first = save_checkpoint(model, TINY, tok, root, "r1", 3, {"manifest": "m.json"})
    with torch.no_grad():
        model.logit_scale.add_(0.5)
    uri = save_checkpoint(model, TINY, tok, root, "r1", 7, {"manifest": "m.json"})
    assert uri.endswith("/checkpoints/r1/step_00000007") and first.endswith("step_00000003")
    assert latest_checkpoint(root, "r1") == uri
    loaded = load_clip(storage.join(root, "checkpoints", "r1"))  # run dir -> latest
    assert loaded.uri == uri and loaded.meta["step"] == 7 and loaded.meta["manifest"] == "m.json"
    assert loaded.digest == loaded.meta["digest"] and len(loaded.digest) == 64
    images = [render(SceneSpec(), (40, 40), seed=i) for i in range(3)]
    emb = loaded.encode_images(images, batch_size=2)
    assert emb.shape == (3, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    txt = loaded.encode_texts(["a red circle", "the number 7"])
    assert txt.shape == (2, 16)
    from training.transform import preprocess
    with torch.no_grad():
        ref = model.encode_image(torch.stack([preprocess(i, 32) for i in images])).numpy()
        ref_t = model.encode_text(torch.from_numpy(tok.encode(["a red circle", "the number 7"]))).numpy()
    assert np.allclose(emb, ref, atol=1e-5) and np.allclose(txt, ref_t, atol=1e-5)
    assert load_clip(first).meta["step"] == 3  # older step dirs stay loadable


def test_missing_and_corrupt_checkpoints_name_the_uri(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "checkpoints" / "nope")):
        latest_checkpoint(str(tmp_path), "nope")
    with pytest.raises(CheckpointError, match="nowhere"):
        load_clip(str(tmp_path / "nowhere"))
    tok = _tok()
    uri = save_checkpoint(CLIP(TINY, eot_id=tok.eot_id), TINY, tok, str(tmp_path), "r", 1, {})
    blob = bytearray(storage.read_bytes(uri + "/model.safetensors"))
    blob[-1] ^= 0xFF
    storage.write_bytes(uri + "/model.safetensors", bytes(blob))
    with pytest.raises(CheckpointError, match="digest"):
        load_clip(uri)

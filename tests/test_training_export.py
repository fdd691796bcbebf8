"""training.export: checkpoints loaded by open_clip and transformers THEMSELVES give our embeddings.

Tiny random models (every weight and BatchNorm statistic perturbed, so a swapped, transposed or dropped tensor
cannot hide behind an initialisation of ones or zeros) are saved with save_checkpoint, exported, loaded with
the library's own loader, and fed the same token ids and preprocessed images: normalised fp32 embeddings agree
to 1e-4. The libraries' own tokenizers and preprocessing, loaded from the export, reproduce ours. Unexportable
models fail before anything is written, and a failing export leaves no directory behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import REPO
from training import export
from training.checkpoint import save_checkpoint
from training.export import ExportError, export_checkpoint, main
from training.model import CLIP, CLIPConfig
from training.tokenizer import EOT, PAD, SOT, CaptionTokenizer
from training.transform import preprocess

CAPTIONS = ["a red circle on the left", "Three BLUE stars", "two green squares on a gray background",
            "a big yellow triangle next to a small purple hexagon in the top right corner of the picture"]
TOL = 1e-4


@pytest.fixture(scope="module")
def tok() -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS * 5, vocab_size=512, context_length=16)


def _checkpoint(root, cfg: CLIPConfig, tok: CaptionTokenizer) -> tuple[str, CLIP]:
    torch.manual_seed(0)
    model = CLIP(cfg, eot_id=tok.eot_id)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.add_(0.2 * torch.randn_like(t))
    save_checkpoint(model, cfg, tok, str(root), "run", 7)
    return os.path.join(str(root), "checkpoints", "run"), model.eval()  # the run dir: export follows latest.json


def _images(size: int) -> tuple[list[Image.Image], torch.Tensor]:
    rng = np.random.RandomState(0)
    pil = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (64, 64), (90, 30))]
    return pil, torch.stack([preprocess(im, size) for im in pil])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("preset, act", [("ViT-tiny", "gelu"), ("ViT-tiny", "quick_gelu"), ("RN-tiny", "gelu")])
def test_open_clip_loads_the_export_and_gives_our_embeddings(tmp_path, tok, preset, act):
    import open_clip

    cfg = CLIPConfig(preset=preset, act=act)
    uri, ours = _checkpoint(tmp_path / "root", cfg, tok)
    out = export_checkpoint(uri, "open_clip", tmp_path / "oc")
    assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "witforge_export.json"} <= set(os.listdir(out))

    model, _, preprocess_val = open_clip.create_model_and_transforms(f"local-dir:{out}")  # loads strict=True
    model.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    model.eval()
    tokens = torch.from_numpy(tok.encode(CAPTIONS))
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(CAPTIONS), tokens)
    pil, images = _images(cfg.image_size)
    assert _max_diff(torch.stack([preprocess_val(im) for im in pil]), images) < 1e-5
    with torch.no_grad():
        assert _max_diff(model.encode_image(images, normalize=True), ours.encode_image(images)) <= TOL
        assert _max_diff(model.encode_text(tokens, normalize=True), ours.encode_text(tokens)) <= TOL
        assert _max_diff(model.logit_scale, ours.logit_scale[0]) == 0
    meta = json.loads((out / "witforge_export.json").read_text())
    assert meta["step"] == 7 and meta["source"].endswith("step_00000007") and meta["format"] == "open_clip"


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_transformers_loads_the_export_and_gives_our_embeddings(tmp_path, tok, act):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    cfg = CLIPConfig(preset="ViT-tiny", act=act)
    uri, ours = _checkpoint(tmp_path / "root", cfg, tok)
    out = export_checkpoint(uri + "/step_00000007", "hf", tmp_path / "hf")  # a step dir works too
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= set(os.listdir(out))

    model, info = CLIPModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.eval()
    tokens = torch.from_numpy(tok.encode(CAPTIONS))
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    got = hf_tok(CAPTIONS, padding="max_length", max_length=cfg.context_length, truncation=True,
                 return_tensors="pt").input_ids
    assert torch.equal(got, tokens)
    pil, images = _images(cfg.image_size)
    pixels = AutoImageProcessor.from_pretrained(str(out), backend="pil")(images=pil, return_tensors="pt").pixel_values
    assert _max_diff(pixels, images) < 1e-5
    with torch.no_grad():
        outputs = model(input_ids=tokens, pixel_values=images)
        assert _max_diff(outputs.image_embeds, ours.encode_image(images)) <= TOL
        assert _max_diff(outputs.text_embeds, ours.encode_text(tokens)) <= TOL
        assert _max_diff(model.logit_scale, ours.logit_scale[0]) == 0


def _old_layout_tokenizer() -> CaptionTokenizer:
    """A tokenizer as trained before EOT moved to the top: pad=0, sot=1, eot=2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    t.train_from_iterator(CAPTIONS, trainers.BpeTrainer(vocab_size=300, special_tokens=[PAD, SOT, EOT],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return CaptionTokenizer(t, 16)


@pytest.mark.parametrize("case, fmt, message", [
    ("resnet", "hf", "model.vision_arch 'resnet'"),
    ("conv_stem", "hf", "model.vision_stem 'conv'"),
    ("conv_stem", "open_clip", "model.vision_stem 'conv'"),
    ("old_tokenizer", "open_clip", "end-of-text id 2 is not its highest id"),
])
def test_unexportable_checkpoints_fail_before_writing(tmp_path, tok, case, fmt, message):
    cfg = {"resnet": CLIPConfig(preset="RN-tiny"), "conv_stem": CLIPConfig(preset="ViT-tiny", vision_stem="conv"),
           "old_tokenizer": CLIPConfig(preset="ViT-tiny")}[case]
    uri, _ = _checkpoint(tmp_path / "root", cfg, _old_layout_tokenizer() if case == "old_tokenizer" else tok)
    (tmp_path / "exports").mkdir()
    with pytest.raises(ExportError, match=message):
        export_checkpoint(uri, fmt, tmp_path / "exports" / "x")
    assert os.listdir(tmp_path / "exports") == []


def test_a_failing_export_leaves_no_directory_and_keeps_an_old_one(tmp_path, tok, monkeypatch):
    uri, _ = _checkpoint(tmp_path / "root", CLIPConfig(preset="ViT-tiny"), tok)
    parent = tmp_path / "exports"
    parent.mkdir()

    def disk_full(*args, **kwargs):  # fails after the config and weights are already written
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_hf_tokenizer", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_checkpoint(uri, "open_clip", parent / "oc")
    assert os.listdir(parent) == []  # neither DIR nor its temporary sibling

    monkeypatch.undo()
    out = export_checkpoint(uri, "open_clip", parent / "oc")
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(uri, "open_clip", out)
    monkeypatch.setattr(export, "write_hf_tokenizer", disk_full)
    with pytest.raises(OSError):
        export_checkpoint(uri, "open_clip", out, force=True)
    assert os.listdir(parent) == ["oc"] and (out / "tokenizer.json").exists()  # the old export, intact

    monkeypatch.undo()
    (out / "stale.txt").write_text("from the previous export")
    assert export_checkpoint(uri, "open_clip", out, force=True) == out
    assert os.listdir(parent) == ["oc"] and not (out / "stale.txt").exists()


def test_cli_prints_the_directory_last_and_names_the_field_on_error(tmp_path, tok, capsys):
    uri, _ = _checkpoint(tmp_path / "root", CLIPConfig(preset="ViT-tiny"), tok)
    assert main([uri, "--format", "open_clip", "--out", str(tmp_path / "oc")]) == str(tmp_path / "oc")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "oc")

    conv, _ = _checkpoint(tmp_path / "conv", CLIPConfig(preset="ViT-tiny", vision_stem="conv"), tok)
    proc = subprocess.run([sys.executable, "-m", "training.export", conv, "--format", "hf", "--out",
                           str(tmp_path / "hf")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("python -m training.export: model.vision_stem 'conv' cannot be exported")
    assert not (tmp_path / "hf").exists()

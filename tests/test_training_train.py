"""End to end: `training.train.main` runs DeepSpeed ZeRO inside Ray Train (2 gloo workers) on a tiny dataset
version and publishes a checkpoint that load_clip reads back; config and manifest errors come first."""

from __future__ import annotations

import pytest
import yaml

from pipelines.schema import ManifestError
from training.checkpoint import load_clip
from training.toydata import write_toy_dataset
from training.train import main

TINY_MODEL = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
              "vision_heads": 2, "vocab_size": 300, "context_length": 16, "text_width": 32, "text_layers": 1,
              "text_heads": 2}


def _config(tmp_path, **training) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"root": str(tmp_path / "out")},
        "training": {"model": TINY_MODEL, "steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 2,
                     "shuffle_buffer": 20, **training},
    }))
    return str(path)


@pytest.mark.parametrize("stage", [2, 3])
def test_train_end_to_end_zero(tmp_path, ray_local, capsys, stage):
    manifest = write_toy_dataset(str(tmp_path / "data"), n=40, samples_per_shard=10, px=(40, 60))
    uri = main(["--config", _config(tmp_path, manifest=manifest, run=f"z{stage}", zero_stage=stage,
                                    checkpoint_every=2)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == uri  # the checkpoint URI is the last line
    assert uri == str(tmp_path / "out" / "checkpoints" / f"z{stage}" / "step_00000004")
    clip = load_clip(str(tmp_path / "out" / "checkpoints" / f"z{stage}"))
    assert clip.meta["step"] == 4 and clip.meta["manifest"] == manifest and clip.meta["zero_stage"] == stage
    assert clip.meta["world_size"] == 2 and clip.meta["loss"] > 0
    assert load_clip(uri.replace("00000004", "00000002")).meta["step"] == 2  # the intermediate checkpoint
    emb = clip.encode_texts(["a red circle", "the number 7"])
    assert emb.shape == (2, 16)


def test_missing_manifest_names_uri(tmp_path):
    missing = str(tmp_path / "nowhere" / "manifest.json")
    with pytest.raises(ManifestError, match=str(tmp_path / "nowhere")):
        main(["--config", _config(tmp_path, manifest=missing)])
    # The default manifest location comes from storage.root/pipeline.dataset/pipeline.version.
    with pytest.raises(ManifestError, match="out/synthweb/v9/manifest.json"):
        main(["--config", _config(tmp_path), "pipeline.version=v9"])


@pytest.mark.parametrize("override,field", [("training.zero_stage=5", "training.zero_stage"),
                                            ("training.stepz=5", "training.stepz"),
                                            ("training.model.patch_size=7", "patch_size"),
                                            ("training.batch_size=7", "training.batch_size")])
def test_malformed_config_fails_before_work(tmp_path, capsys, override, field):
    with pytest.raises(SystemExit) as exc:
        main(["--config", _config(tmp_path, manifest=str(tmp_path / "absent.json")), override])
    assert exc.value.code == 2 and field in capsys.readouterr().err

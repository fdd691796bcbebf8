#!/usr/bin/env bash
# Build benchmarks/.wheels/: what benchmarks/train_gpu.py needs on the lent GPU machine and its image lacks.
#
#     bash benchmarks/make_wheels.sh        # from the repository root; ~7 MB, gitignored
#
# That image (Python 3.12, torch 2.11, torchvision 0.26, numpy, pillow, tokenizers, pyarrow, fsspec, pyyaml,
# timm, huggingface_hub, safetensors, regex, tqdm, einops, msgpack, ninja, psutil, py-cpuinfo, packaging,
# nvidia-ml-py; see /work/.library/device/KINDS.md) has no deepspeed, open_clip or webdataset, and nothing can be
# fetched there. So: those three at the project's versions, plus the dependencies of theirs the image lacks
# (pydantic and its three helpers for deepspeed; ftfy and wcwidth for open_clip; braceexpand for webdataset;
# hjson for deepspeed). typing-extensions is carried too because pydantic 2.14 needs >= 4.16.
# Installed there with `pip install --no-index --no-deps --target /tmp/site benchmarks/.wheels/*.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=benchmarks/.wheels
mkdir -p "$DEST"
# Binary wheels for the device's interpreter (CPython 3.12, manylinux x86-64), whatever this machine runs.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" \
    open_clip_torch==3.3.0 webdataset==0.2.111 braceexpand==0.1.7 ftfy==6.3.1 wcwidth==0.9.4 hjson==3.1.0 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
# DeepSpeed is published as a source distribution only. Built with no ops (DS_BUILD_OPS=0, the default) it is a
# pure-Python py3-none-any wheel: ops would be JIT-built at first use, and the benchmark uses none (torch's AdamW).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$DEST" deepspeed==0.19.8
du -sh "$DEST"
ls -1 "$DEST"

"""The filter stage's pHash (pipelines.stages.images.phash_hex) against imagehash.phash on the same images:
same hashes (every one compared), samples/s on one core both sides.

    export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
    .venv/bin/python benchmarks/phash_vs_imagehash.py --images 5000 --reps 5

The images are the synthetic web's served images (JPEG/PNG, 12 px to 600 px, every planted kind that decodes:
near duplicates, tiny, extreme aspect ratios...), generated for --images candidates with the demo's web config
and cached in --workdir, plus adversarial ones for exactness: random noise, flat images (all 64 coefficients
tie), ramps, several PIL modes. Two measurements, each as A B A B ... over --reps rounds on the same list (a load
drift hits both sides), best round reported:
- hash: the decoded image in, the 16-hex-digit hash out (`str(imagehash.phash(img))` vs `phash_hex(img)`);
- decode+hash: the downloaded bytes in (PIL open + full decode + hash), what the stage does per image.
One process, one thread (BLAS pinned to 1 thread before numpy loads). Results:
benchmarks/results/phash_vs_imagehash-<UTC time>.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per side: BLAS threads would blur a per-core figure

import argparse  # noqa: E402 (after pinning the BLAS threads)
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.stages.images import phash_hex  # noqa: E402

MAX_PIXELS = 4096 * 4096  # the filter's default: the planted decompression bomb is not an image to hash


def corpus_images(workdir: str, candidates: int) -> list[bytes]:
    """Bytes of every served image of a synthetic web with about `candidates` <img> that PIL can decode."""
    from pipelines.config import load_config
    from synthweb.config import WebConfig
    from synthweb.corpus import ensure_corpus

    raw = load_config(os.path.join(REPO, "configs", "demo.yaml"), [f"web.dir={workdir}/web",
                      f"web.pages={-(-candidates // 16)}", "web.images_per_page=16"], {"web": WebConfig})
    corpus = ensure_corpus(raw["web"])
    routes = json.load(open(corpus.routes_path))
    out = []
    for route in routes.values():
        if not route.get("file") or not route["content_type"].startswith("image/"):
            continue
        data = open(os.path.join(corpus.files_dir, route["file"]), "rb").read()
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                continue
            img.load()
        except Exception:  # truncated files: the filter drops them before hashing
            continue
        out.append(data)
    return out


def adversarial_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
            for w, h in rng.integers(8, 600, (200, 2))]
    flat = (("L", 0), ("L", 255), ("RGB", (7, 7, 7)), ("RGBA", (1, 2, 3, 0)))  # every coefficient ties
    imgs += [Image.new(mode, (w, h), c) for mode, c in flat for w, h in ((32, 32), (33, 70), (500, 20))]
    ramp = np.tile((np.arange(256)).astype(np.uint8), (256, 1))
    imgs += [Image.fromarray(ramp), Image.fromarray(np.ascontiguousarray(ramp.T)), Image.fromarray(ramp).convert("P"),
             Image.fromarray(ramp).convert("1"), Image.fromarray(ramp).convert("I;16")]
    return imgs


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _rate(fn, items) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    out = [fn(x) for x in items]
    return len(items) / (time.perf_counter() - t0), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="candidates of the synthetic web to draw from")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/witforge-bench-phash")
    args = parser.parse_args(argv)

    datas = corpus_images(args.workdir, args.images)
    decoded = [_decode(d) for d in datas]
    extra = adversarial_images()
    ours_hash = [phash_hex(i) for i in decoded + extra]
    theirs_hash = [str(imagehash.phash(i)) for i in decoded + extra]
    mismatches = [k for k, (a, b) in enumerate(zip(ours_hash, theirs_hash)) if a != b]

    sides = {
        "hash": {"imagehash": lambda img: str(imagehash.phash(img)), "witforge": phash_hex},
        "decode+hash": {"imagehash": lambda d: str(imagehash.phash(_decode(d))),
                        "witforge": lambda d: phash_hex(_decode(d))},
    }
    rounds: dict = {m: {s: [] for s in fns} for m, fns in sides.items()}
    for _ in range(args.reps):
        for measure, fns in sides.items():
            items = decoded if measure == "hash" else datas
            for side, fn in fns.items():  # A B A B: the same list, one after the other
                rate, _ = _rate(fn, items)
                rounds[measure][side].append(rate)
    best = {m: {s: max(r) for s, r in sides_.items()} for m, sides_ in rounds.items()}
    sizes = [i.width * i.height for i in decoded]
    result = {
        "benchmark": "phash_vs_imagehash", "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable] + sys.argv),
        "machine": {"cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                 if ln.startswith("model name")), platform.processor()),
                    "threads": 1, "python": platform.python_version(), "load_1min": os.getloadavg()[0]},
        "versions": {p: metadata.version(p) for p in ("imagehash", "pillow", "numpy", "scipy")},
        "images": {"corpus": len(decoded), "adversarial": len(extra),
                   "median_pixels": int(np.median(sizes)) if sizes else 0},
        "identical_hashes": len(ours_hash) - len(mismatches), "compared": len(ours_hash), "mismatches": mismatches,
        "samples_per_s_rounds": rounds, "samples_per_s_best": best,
        "speedup_best": {m: best[m]["witforge"] / best[m]["imagehash"] for m in best},
    }
    os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(REPO, "benchmarks", "results",
                        f"phash_vs_imagehash-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"identical hashes: {result['identical_hashes']}/{result['compared']}")
    for m in best:
        print(f"{m:<12} imagehash {best[m]['imagehash']:8.0f}/s   witforge {best[m]['witforge']:8.0f}/s   "
              f"x{result['speedup_best'][m]:.2f}")
    print(path)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

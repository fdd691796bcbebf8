"""The capacity plan (pipelines/plan.py) as a plain-text report for people; --json prints the dict instead."""

from __future__ import annotations

from typing import Any


def count(n: float) -> str:
    """12.8B, 678.3M, 45.2k, 512."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def size(b: float) -> str:
    """Decimal units, as S3 bills them."""
    for div, unit in ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def rate(r: float) -> str:
    return f"{r:,.1f}" if r < 100 else f"{r:,.0f}"


def render(p: dict[str, Any]) -> str:
    i, sh, b, c, t, s3, cost = (p["inputs"], p["shards"], p["bytes"], p["curation"], p["training"], p["s3"],
                                p["cost"])
    out = [(f"Capacity plan: {i['pairs']:,} pairs, {i['model']}, {i['epochs']:g} epochs = "
            f"{count(t['samples_seen'])} samples seen"), ""]

    derived = "given" if i["samples_per_shard"] else f"{i['shard_mb']:g} MB target / {p['tar_bytes_per_sample']:,} B"
    out += ["Shards",
            f"  samples per shard  {sh['samples_per_shard']:>14,}   ({derived} per sample)",
            f"  shards             {sh['count']:>14,}",
            f"  MB per shard       {sh['mb_per_shard']:>14,.1f}", ""]

    out += ["Bytes stored",
            f"  shards (tar)       {size(b['tars']):>14}   images + captions + JSON metadata + tar headers",
            f"  parquet            {size(b['parquet']):>14}   per-shard metadata for analytics",
            f"  manifest           {size(b['manifest']):>14}",
            f"  dataset version    {size(b['dataset']):>14}",
            f"  _work/download     {size(b['work_download']):>14}   every downloaded image, before filter and dedupe",
            (f"  checkpoints        {size(b['checkpoints']):>14}   {i['checkpoints_kept']} kept, fp32 weights + AdamW "
             "moments"),
            f"  total              {size(b['total']):>14}   ${cost['storage_per_month']:,.0f} per month", ""]

    out += [(f"Curation: {c['nodes']} CPU node(s) x {c['cores_per_node']} cores, {c['wall_hours']:,.1f} h wall "
             f"(target {i['curation_hours']:g} h)"),
            f"  {'stage':<15} {'records':>9} {'kept':>6} {'samples/s/core':>15} {'core-hours':>11} {'hours':>7}"]
    for st in c["stages"]:
        if st["per_core"] is None:
            out.append(f"  {st['stage']:<15} {count(st['records']):>9} {st['kept']:>6.3f}   pass-through when "
                       "measured: costed as GPU embedding below")
            continue
        out.append(f"  {st['stage']:<15} {count(st['records']):>9} {st['kept']:>6.3f} {st['per_core']:>15,.1f} "
                   f"{st['core_hours']:>11,.0f} {st['hours']:>7,.1f}")
    out += [f"  {'total':<15} {'':>9} {'':>6} {'':>15} {c['core_hours']:>11,.0f} {c['wall_hours']:>7,.1f}",
            f"  node-hours {c['node_hours']:,.0f}, ${c['cost']:,.0f}", ""]

    e = p["embedding"]
    if e:
        out += [(f"GPU embedding for {', '.join(e['stages'])}: {count(e['records'])} images at {e['per_gpu']:,.0f}/s "
                 f"per GPU = {e['gpu_hours']:,.0f} GPU-hours, {e['node_hours']:,.1f} node-hours, ${e['cost']:,.0f}"),
                ""]

    flops = f"; {t['tflops_per_gpu']:,.0f} TFLOP/s per GPU at the measured rate" if t["tflops_per_gpu"] else ""
    out += [(f"Training: {t['nodes']} GPU node(s) x {i['gpus_per_node']} = {t['gpus']} GPUs ({t['gpu']}), "
             f"{t['wall_hours']:,.1f} h wall (target {i['train_hours']:g} h)"),
            (f"  per GPU            {rate(t['per_gpu_measured'])} samples/s one GPU, {rate(t['per_gpu'])} after "
             f"scaling {i['scaling']:g}{flops}"),
            (f"  all GPUs           {rate(t['samples_per_s'])} samples/s; each node reads "
             f"{t['node_read_mb_per_s']:,.0f} MB/s of shards"),
            f"  GPU-hours {t['gpu_hours']:,.0f}, node-hours {t['node_hours']:,.0f}, ${t['cost']:,.0f}", ""]

    lim = s3["limits"]
    out += [(f"S3 requests per second (limits per prefix: {lim['put_per_s']:,} PUT, {lim['get_per_s']:,} GET; "
             f"planned at {lim['headroom']:.0%})"),
            f"  {'phase':<22} {'PUT/s':>10} {'GET/s':>10}"]
    for ph in s3["phases"]:
        note = "   (GETs: one ranged read per image of the download tars)" if ph["get_per_s"] and "shard" in ph["phase"] else ""
        out.append(f"  {ph['phase']:<22} {rate(ph['put_per_s']):>10} {rate(ph['get_per_s']):>10}{note}")
    out += [(f"  {'training start burst':<22} {'':>10} {s3['training_start_burst_gets']:>10,}   (every loader "
             "worker opens a shard at once)"),
            (f"  one object per image instead of shards: {rate(s3['one_object_per_image_put_per_s'])} PUT/s while "
             "downloading"),
            f"  prefixes needed: {s3['prefixes']} -> {s3['layout']}"]
    if s3["download_read_prefixes"] > 1:
        out.append(f"  the shard stage's reads of _work/download/ ({rate(s3['download_read_get_per_s'])} GET/s) need "
                   f"{s3['download_read_prefixes']} prefixes' worth of GET capacity there: give the stage fewer "
                   "cores or let S3 partition img2dataset's numbered keys first (ramp up)")
    out.append("")

    out += ["Cost",
            f"  curation (CPU)     ${cost['curation']:>14,.0f}",
            f"  embedding (GPU)    ${cost['embedding']:>14,.0f}",
            f"  training (GPU)     ${cost['training']:>14,.0f}",
            f"  total              ${cost['total']:>14,.0f}   + storage ${cost['storage_per_month']:,.0f} per month",
            ""]
    out += ["Assumptions"] + [f"  - {a}" for a in p["assumptions"]]
    out += ["Sources", f"  curation rates and funnel: {p['sources']['curation']}",
            f"  training rate: {p['sources']['gpu']}"]
    return "\n".join(out)

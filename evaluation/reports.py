"""Result rows in the formats other tools read, published beside the rows after every run.

    <root>/eval/clip_benchmark/<digest>/<dataset>.json   CLIP_benchmark's per-run output format
    <root>/eval/results.csv                             every row of every checkpoint, one line per metric

CLIP_benchmark writes one JSON object per (model, dataset, task): {dataset, model, pretrained, task, metrics,
language}, with metric names of its own (acc1, acc5, mean_per_class_recall; image_retrieval_recall@k,
text_retrieval_recall@k; lp_acc1 ...). Emitting the same shape lets its users' aggregation scripts and
leaderboard notebooks read our results unchanged. Failed evaluations get no CLIP_benchmark file (it has no
way to say "failed"); the CSV keeps them, with status and error, so nothing disappears from a spreadsheet.
"""

from __future__ import annotations

import csv
import io

from pipelines import storage

# Our metric name -> CLIP_benchmark's, per task kind. Ours says which way retrieval goes ("image_to_text" = an
# image queries the texts); CLIP_benchmark names retrieval by what is retrieved: text_retrieval = image->text.
_ZEROSHOT = {"top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall"}
_PROBE = {"top1": "lp_acc1", "top5": "lp_acc5", "mean_per_class_recall": "lp_mean_per_class_recall"}
CLIP_BENCHMARK_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                       "linear_probe": "linear_probe"}
CSV_COLUMNS = ["model", "step", "digest", "dataset", "dataset_version", "task", "metric", "value", "chance", "n",
               "status", "error", "code_version", "config_hash", "ray_job_id", "time", "checkpoint"]


def clip_benchmark_metric(task: str, metric: str) -> str | None:
    """Our (task, metric) -> CLIP_benchmark's metric name, or None where it has no counterpart."""
    if task == "retrieval":
        for ours, theirs in (("image_to_text_R@", "text_retrieval_recall@"),
                             ("text_to_image_R@", "image_retrieval_recall@")):
            if metric.startswith(ours):
                return theirs + metric[len(ours):]
        return None
    table = _PROBE if task == "linear_probe" else _ZEROSHOT if task == "zeroshot" else {}
    return table.get(metric)


def clip_benchmark_records(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(digest, dataset, task) -> CLIP_benchmark JSON object, from the ok rows (failed pairs are left out)."""
    out: dict[tuple[str, str, str], dict] = {}
    failed = {(r["digest"], r["dataset"]) for r in rows if r.get("status") != "ok"}
    for r in rows:
        if r.get("status") != "ok" or (r["digest"], r["dataset"]) in failed:
            continue
        theirs = clip_benchmark_metric(r["task"], r["metric"])
        if theirs is None or r["task"] not in CLIP_BENCHMARK_TASK:
            continue
        key = (r["digest"], r["dataset"], r["task"])
        rec = out.setdefault(key, {"dataset": r["dataset"], "model": r.get("model", ""),
                                   "pretrained": r.get("checkpoint", ""), "task": CLIP_BENCHMARK_TASK[r["task"]],
                                   "metrics": {}, "language": "en"})
        rec["metrics"][theirs] = r["value"]
    return out


def clip_benchmark_uri(root: str, digest: str, dataset: str, task: str) -> str:
    # One dataset can be scored by several task kinds (zero-shot and a linear probe): suffix all but zero-shot.
    suffix = "" if task == "zeroshot" else f".{task}"
    return storage.join(root, "eval", "clip_benchmark", digest, f"{dataset}{suffix}.json")


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r.get("model", ""), r.get("step", 0), r["dataset"], r["task"], r["metric"])):
        writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS})
    return buf.getvalue()


def publish_reports(root: str, all_rows: list[dict], changed: list[dict]) -> str:
    """Write the CLIP_benchmark files of the rows this run `changed`, then the whole CSV; returns the CSV URI."""
    for (digest, dataset, task), rec in clip_benchmark_records(changed).items():
        storage.write_json(clip_benchmark_uri(root, digest, dataset, task), rec)
    uri = storage.join(root, "eval", "results.csv")
    storage.write_bytes(uri, csv_text(all_rows).encode())
    return uri

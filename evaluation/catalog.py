"""One lookup over both kinds of evaluation dataset, so orchestration, result rows and the dashboard need not care:

- procedural datasets (evaluation.tasks): rendered offline from a seed; versioned by their pixels;
- external datasets (evaluation.registry): real benchmark data a user put in storage, read from
  `<evaluation.external_root>/<name>/` in one of evaluation.adapters' layouts (CLIP_benchmark's WebDataset
  mirrors, an image folder, captions JSONL...). Their version is EXTERNAL_VERSION (how we score them) together with
  the root they were read from (in the row's config_hash): the data itself is the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluation.registry import ASSOCIATION, CLASSIFICATION, REGISTRY, RETRIEVAL, suite

EXTERNAL_VERSION = "ext1"
"""Bump when the scoring of external datasets changes: their results are then recomputed."""
# The registry's task names -> the task kinds result rows carry (the same as the procedural suite's).
KIND = {CLASSIFICATION: "zeroshot", RETRIEVAL: "retrieval", ASSOCIATION: "association"}
SUITE_PREFIX = "suite:"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    version: str
    kind: str
    group: str
    external: bool


def info(name: str) -> DatasetInfo:
    from evaluation.tasks import DATASETS

    if name in DATASETS:
        ds = DATASETS[name]
        return DatasetInfo(name, ds.version, ds.kind, getattr(ds, "group", ""), external=False)
    if name in REGISTRY:
        spec = REGISTRY[name]
        return DatasetInfo(name, EXTERNAL_VERSION, KIND[spec.task], spec.group, external=True)
    raise KeyError(f"unknown evaluation dataset {name!r}: neither procedural (evaluation.tasks) nor external "
                   f"(evaluation.registry)")


def expand_external(names: list[str]) -> list[str]:
    """Registry names, with "suite:datacomp" / "suite:clip" / "suite:all" expanded, in order, without repeats."""
    out: list[str] = []
    for name in names:
        if name.startswith(SUITE_PREFIX):
            try:
                members = [d.name for d in suite(name[len(SUITE_PREFIX):])]
            except KeyError as exc:
                raise ValueError(f"evaluation.external: {exc.args[0]}") from None
        elif name in REGISTRY:
            members = [name]
        else:
            raise ValueError(f"evaluation.external: unknown dataset {name!r} (registry names such as cifar10, "
                             f"imagenet1k, mscoco_captions, or suite:datacomp / suite:clip / suite:all)")
        out += [m for m in members if m not in out]
    return out

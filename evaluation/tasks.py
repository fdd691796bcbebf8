"""The registry of evaluation datasets: the procedural suite (evaluation/procedural/suite.py) and a linear probe
beside every classification dataset that can have one.

`DATASETS` maps a name to its dataset; every dataset has `name`, `version`, `group`, `kind` ("zeroshot",
"retrieval" or "linear_probe"), `parent` ("" or the in-distribution dataset it shifts) and `samples(n, seed,
split="test")`. The probe of dataset X is `probe_X` (kind linear_probe, X's group): logistic regression on frozen
image features fitted on X's train/validation splits, or on its parent's when X is a shifted variant (how a
classifier adapted in distribution holds up under the shift, as in the CLIP paper's robustness section); it
is scored on X's test split, the very images zero-shot classification of X scores. Its version joins a probe
version with those of the datasets it reads, so a bump of either re-evaluates it.
"""

from __future__ import annotations

from evaluation.procedural.dataset import (ClassificationDataset, HandwrittenDataset, LinearProbeDataset,
                                           RetrievalDataset)
from evaluation.procedural.suite import RETRIEVAL, SUITE

PROBE_VERSION = "1"
Dataset = ClassificationDataset | RetrievalDataset | LinearProbeDataset
__all__ = ["DATASETS", "RETRIEVAL", "ClassificationDataset", "Dataset", "HandwrittenDataset", "LinearProbeDataset",
           "RetrievalDataset", "get_dataset", "groups"]


def _probes(suite: dict[str, Dataset]) -> dict[str, LinearProbeDataset]:
    out = {}
    for ds in suite.values():
        if not isinstance(ds, ClassificationDataset) or not ds.probe:
            continue
        fit_on = suite[ds.parent] if ds.probe == "parent" else ds
        assert isinstance(fit_on, ClassificationDataset) and fit_on.classes == ds.classes, ds.name
        out[f"probe_{ds.name}"] = LinearProbeDataset(
            name=f"probe_{ds.name}", version=f"{PROBE_VERSION}.{ds.version}.{fit_on.version}", group=ds.group,
            description=f"linear probe fitted on {fit_on.name}, scored on {ds.name}", target=ds, fit_on=fit_on,
            parent=f"probe_{ds.parent}" if ds.probe == "parent" else "")
    return out


_SUITE: dict[str, Dataset] = {ds.name: ds for ds in SUITE}
assert len(_SUITE) == len(SUITE), "duplicate dataset name in the suite"
DATASETS: dict[str, Dataset] = _SUITE | _probes(_SUITE)


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation dataset {name!r} (known: {', '.join(DATASETS)})") from None


def groups() -> dict[str, list[str]]:
    """group -> the names of its datasets (probes included, beside their targets' zero-shot datasets)."""
    out: dict[str, list[str]] = {}
    for ds in DATASETS.values():
        out.setdefault(ds.group, []).append(ds.name)
    return out

"""The `evaluation` and `dashboard` sections of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.dashboard_config import DashboardConfig

__all__ = ["DashboardConfig", "EvalConfig"]  # the dashboard section lives beside the dashboard


@dataclass
class EvalConfig:
    checkpoint: str = ""
    """Checkpoint to evaluate: "" = the latest step of `training.run` under `storage.root`; "all" = every saved
    step of that run (for top-1-by-step curves); otherwise a step-dir or run-dir URI."""
    tasks: list[str] = field(default_factory=list)
    """Datasets to evaluate (names from evaluation.tasks.DATASETS); empty = all of them."""
    procedural: bool = True
    """Evaluate the offline procedural suite (evaluation.tasks); false = only the external datasets."""
    external: list[str] = field(default_factory=list)
    """External benchmark datasets (evaluation.registry names, or suite:datacomp / suite:clip / suite:all), each
    read from <external_root>/<name>/; nothing is downloaded."""
    external_root: str = ""
    """Folder (local or s3://) holding one sub-folder per external dataset; "" = <storage.root>/evalsets."""
    external_limit: int = 0
    """Score only the first N images of each external dataset (0 = all): a smoke test of a new layout."""
    batch_size: int = 64
    """Images per encode call on external datasets (bounds memory: one batch of decoded images at a time)."""
    samples_per_class: int = 20
    """Images rendered per class for each classification dataset."""
    retrieval_pairs: int = 200
    """Held-out (image, caption) pairs in the retrieval dataset; R@k chance is k / this."""
    probe_samples_per_class: int = 10
    """Images per class in each of a linear probe's train and validation splits (its test split is the
    zero-shot test split: samples_per_class per class)."""
    probe_c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    """Inverse regularisation strengths a linear probe chooses from on its validation split."""
    image_size: int = 96
    """Side in pixels of the rendered evaluation images (the model resizes as it does for training)."""
    seed: int = 1234
    """Seed of every evaluation dataset: same seed, same pixels."""
    num_cpus: float = 1.0
    """CPUs Ray reserves for each (checkpoint, dataset) task."""
    num_gpus: float = -1
    """GPUs Ray reserves for each task; -1 = one when the cluster has GPUs, none otherwise (CPU-only clusters)."""
    max_retries: int = 2
    """Times Ray reruns a task whose worker died (not one that raised: that is recorded as failed)."""
    ray_address: str = ""
    """Ray cluster to join; empty: RAY_ADDRESS if set (ray job submit), else an embedded local Ray."""
    ray_num_cpus: int = 0
    """CPUs for an embedded local Ray (0: all of this machine's)."""

    def __post_init__(self) -> None:
        from evaluation.tasks import DATASETS

        unknown = [t for t in self.tasks if t not in DATASETS]
        if unknown:
            raise ValueError(f"evaluation.tasks: unknown dataset {unknown[0]!r} (known: {', '.join(DATASETS)})")
        from evaluation.catalog import expand_external

        expand_external(self.external)  # raises with the field's name on an unknown dataset or suite
        if self.external_limit < 0:
            raise ValueError(f"evaluation.external_limit: must be >= 0, got {self.external_limit}")
        if not self.procedural and not self.external:
            raise ValueError("evaluation.procedural is false and evaluation.external is empty: nothing to evaluate")
        for name in ("batch_size", "samples_per_class", "probe_samples_per_class", "retrieval_pairs", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation.{name}: must be at least 1, got {getattr(self, name)}")
        if not self.probe_c_grid or min(self.probe_c_grid) <= 0:
            raise ValueError(f"evaluation.probe_c_grid: needs at least one positive value, got {self.probe_c_grid}")
        if self.image_size < 16:
            raise ValueError(f"evaluation.image_size: {self.image_size} is too small to draw a scene (min 16)")
        if self.retrieval_pairs < 10:
            raise ValueError(f"evaluation.retrieval_pairs: {self.retrieval_pairs} < 10 makes R@10 meaningless")
        if self.num_cpus <= 0:
            raise ValueError(f"evaluation.num_cpus: must be positive, got {self.num_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"evaluation.max_retries: must be >= 0, got {self.max_retries}")

    def dataset_names(self) -> list[str]:
        from evaluation.tasks import DATASETS

        from evaluation.catalog import expand_external

        procedural = (list(self.tasks) or list(DATASETS)) if self.procedural else []
        return procedural + expand_external(self.external)

    def data_settings(self) -> dict:
        """The settings that change what a dataset contains (hashed into each result row's config_hash)."""
        return {"samples_per_class": self.samples_per_class, "retrieval_pairs": self.retrieval_pairs,
                "image_size": self.image_size, "seed": self.seed,
                "probe_samples_per_class": self.probe_samples_per_class, "probe_c_grid": list(self.probe_c_grid)}

    def external_settings(self) -> dict:
        """What decides an external dataset's result: where it was read from and how much of it."""
        return {"external_root": self.external_root, "external_limit": self.external_limit}

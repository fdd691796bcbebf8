"""The `pipeline` section of a run config: which dataset version to build, from what, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.engines import EngineConfig
from pipelines.stages.balance import BalanceConfig
from pipelines.stages.caption_dedupe import CaptionDedupeConfig
from pipelines.stages.clip_filter import ClipFilterConfig
from pipelines.stages.decontam import DecontamConfig
from pipelines.stages.dedupe import DedupeConfig
from pipelines.stages.download import DownloadConfig
from pipelines.stages.extract import ExtractConfig
from pipelines.stages.filter import FilterConfig
from pipelines.stages.semdedup import SemDedupConfig
from pipelines.stages.shard import ShardConfig


@dataclass
class SourceConfig:
    kind: Literal["synthetic", "warc", "wat"] = "synthetic"
    """synthetic: generate and serve the offline synthetic web (section `web`); warc / wat: read the files below."""
    warc: list[str] = field(default_factory=list)
    """WARC files (local paths or s3:// URIs, .warc or .warc.gz) when kind is warc."""
    wat: list[str] = field(default_factory=list)
    """WAT files (Common Crawl's metadata extracts, .warc.wat.gz) when kind is wat."""
    synthetic_format: Literal["warc", "wat"] = "warc"
    """Which of the synthetic web's two renderings extract reads (kind synthetic): its WARC files or WATs of them."""


@dataclass
class PipelineConfig:
    dataset: str = "synthweb"
    """Dataset name: the first path component under the storage root."""
    version: str = "v1"
    """Version name; a version is immutable once its manifest exists."""
    source: SourceConfig = field(default_factory=SourceConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    caption_dedupe: CaptionDedupeConfig = field(default_factory=CaptionDedupeConfig)
    semdedup: SemDedupConfig = field(default_factory=SemDedupConfig)
    clip_filter: ClipFilterConfig = field(default_factory=ClipFilterConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)

    def __post_init__(self) -> None:
        for name in ("dataset", "version"):
            value = getattr(self, name)
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"pipeline.{name}: {value!r} must be a non-empty name without '/'")
        if self.source.kind == "warc" and not self.source.warc:
            raise ValueError("pipeline.source.warc: kind is warc but no WARC files are listed")
        if self.source.kind == "wat" and not self.source.wat:
            raise ValueError("pipeline.source.wat: kind is wat but no WAT files are listed")

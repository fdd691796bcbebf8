"""witforge data pipelines: crawl -> curate -> shard into WebDataset shards with a manifest.

The producer owns the data contract (`pipelines.schema`); `training` and `evaluation` import it.
Nothing in this package imports `training` or `evaluation`.
"""

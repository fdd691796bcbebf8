"""The offline synthetic web: a deterministic stand-in for the internet, kept apart from the product code.

- `synthweb.scenes`: procedural scenes with learnable content (also used by the procedural evaluation suite).
- corpus generation (WARC files of HTML pages with <img src alt>), an HTTP server on 127.0.0.1 that serves
  the images with planted faults, and the ground truth written beside the corpus.
Nothing in `pipelines`, `training` or `evaluation` needs this package on a real crawl.
"""

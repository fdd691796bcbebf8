"""Generate the offline synthetic web for a config, and optionally serve it until Ctrl-C.

    python -m synthweb --config configs/demo.yaml [--serve] [web.key=value ...]

Prints the corpus directory and its counts per planted kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from pipelines.config import ConfigError, add_config_args, load_config
from synthweb.config import WebConfig
from synthweb.corpus import ensure_corpus
from synthweb.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthweb", description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--serve", action="store_true", help="serve the corpus on web.host:web.port until Ctrl-C")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg: WebConfig = load_config(args.config, args.overrides, {"web": WebConfig})["web"]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    corpus = ensure_corpus(cfg)
    print(json.dumps({"corpus_id": corpus.corpus_id, "root": corpus.root, "counts": corpus.summary["counts"]},
                     indent=2))
    if not args.serve:
        return 0
    try:
        with serve(cfg, corpus) as url:
            print(f"serving {url} (Ctrl-C to stop)", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

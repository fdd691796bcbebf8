"""Run open_clip's own trainer (`open_clip_train.main`) on CPU ranks, for benchmarks/train_cpu_vs_open_clip.py.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 -- \
        benchmarks/open_clip_cpu_main.py --device cpu --dist-backend gloo --precision fp32 ... (open_clip's flags)

It is `python -m open_clip_train.main` with three changes, none of which touches the training step:

1. CPU DistributedDataParallel. open_clip_train 3.3.0 always wraps the model as
   `DistributedDataParallel(model, device_ids=[device])`; torch refuses `device_ids` for a CPU module
   ("device_ids and output_device arguments only work with single-device/multiple-device GPU modules or CPU
   modules, but got device_ids [device(type='cpu')]"), so a multi-rank CPU run of the stock entry point dies
   before its first step. DDP on a CPU module must get `device_ids=None`; that is all the shim changes.
2. Log timestamps with microseconds. open_clip's formatter stamps lines to the second; the benchmark takes
   steady-state samples/s from the time between two "Train Epoch" lines, so it needs sub-second stamps. The
   message text is unchanged.
3. webdataset 0.2.111 (the project's pin, from img2dataset) against open_clip_train, which declares
   webdataset<=0.2.86: since 0.2.88 `tar_file_expander` yields an empty end-of-shard marker `{}` that
   open_clip's `group_by_keys_nothrow` indexes as `filesample["fname"]` (KeyError at the first shard boundary).
   The shim passes `eof_value=None`, which is exactly the pre-0.2.88 stream open_clip was written against.

It also pins torch to one intra-op thread per rank (`torch.set_num_threads(OMP_NUM_THREADS)`), the same as the
project's `training.threads_per_worker=1`, and prints the thread count so the harness can record it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch
import torch.nn.parallel as tnp


class _CPUDistributedDataParallel(tnp.DistributedDataParallel):
    """DDP that drops device_ids/output_device for CPU modules (torch only accepts None there)."""

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids, output_device = None, None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


def _setup_logging_precise(log_file, level, include_host=False):
    from open_clip_train.logger import setup_logging

    setup_logging(log_file, level, include_host)
    fmt = logging.Formatter("%(created).6f | %(levelname)s | %(message)s")
    for handler in logging.root.handlers:
        handler.setFormatter(fmt)


def main(argv: list[str]) -> None:
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    import open_clip_train.data as ocd
    import open_clip_train.main as ocm
    from webdataset.tariterators import tar_file_expander

    ocd.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)  # looked up at call time
    ocm.torch.nn.parallel.DistributedDataParallel = _CPUDistributedDataParallel  # main looks it up at call time
    ocm.setup_logging = _setup_logging_precise
    rank = os.environ.get("RANK", "0")
    print(f"open_clip_cpu_main: rank {rank} torch {torch.__version__} threads {torch.get_num_threads()}",
          flush=True)
    ocm.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])

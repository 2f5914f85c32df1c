"""Faults for the fork server to preload (tests/test_forkserver.py): the run named `crash` ends its process at the
start of training with os._exit, as a process the kernel or a C library ends leaves no record; `hang` and `killed`
sleep there until the runner's timeout or the test's SIGKILL ends them. Every other run is untouched."""

from __future__ import annotations

import os
import time

from bench.run import worker

_train_stage = worker.train_stage


def train_stage(cfg, *args, **kwargs):
    if cfg.run == "crash":
        os._exit(3)
    if cfg.run in ("hang", "killed"):
        time.sleep(3600)
    return _train_stage(cfg, *args, **kwargs)


worker.train_stage = train_stage

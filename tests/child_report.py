"""A child of the fork server that reports what it inherited (tests/test_forkserver.py): `main([REPORT])` writes
which libraries were imported before it started, whether CUDA was initialised, and how its process looks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    libraries = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "bench.run.worker")
    preloaded = {m: m in sys.modules for m in libraries}
    title = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    Path(argv[0]).write_text(json.dumps({
        "preloaded": preloaded, "cuda_initialized": torch.cuda.is_initialized(),
        "bad_fork": torch.cuda._is_in_bad_fork(), "session_leader": os.getsid(0) == os.getpid(), "title": title}))
    return 0

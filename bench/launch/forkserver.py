"""The fork server: one process that imports torch, transformers, peft (and bitsandbytes, which PEFT imports) and the
worker once per `bench run` and forks each run's process from itself, so a run pays no imports and still lives and
dies alone.

Python's multiprocessing forkserver does the forking (`set_forkserver_preload` imports the worker in the server;
the server ignores Ctrl-C and reports each child's exit status, signals as negative codes, as a spawned process's
would be). A forked run starts its own session, writes to its log, takes the run's environment (CUDA_VISIBLE_DEVICES,
BENCH_DEVICE and OMP_NUM_THREADS are applied in the child; CUDA is never initialised in the server) and shows
`python -m bench.run.worker CONFIG RUN_DIR` as its process title, as a spawned worker does.

Runs start as fresh processes (spawn) instead where forking is unsafe or unable to give the same run: a platform
without fork, a server that holds a CUDA context, an environment that differs from the server's in anything a library
may have read at import, or BENCH_FORK_SERVER=0 in the runner's or the run's environment; the first such fallback is
said once on stderr.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from contextlib import contextmanager

# What the server imports once: PEFT (with transformers, torch and bitsandbytes, which it imports; the method registry
# reads PEFT's answers from a file, so the worker's own imports no longer pull it in), and the worker with everything
# it imports at module level. Not datasets: only a Hub dataset needs it, and every forked run's resident memory
# figures would carry its pages.
PRELOAD = ["peft", "bench.run.worker"]
# Set in the child from the run's environment, so they may differ from the server's.
APPLIED = ("CUDA_VISIBLE_DEVICES", "BENCH_DEVICE", "OMP_NUM_THREADS")
# The server's own environment on top of the runner's: idle OpenMP threads must not spin (as for every worker), and
# torch's CUDA availability check goes through NVML, which creates no CUDA context a child could inherit.
SERVER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
CUDA_IN_SERVER = 3  # the probe's exit code when the server holds a CUDA context


class Forked:
    """A run's process forked by the server, with the part of subprocess.Popen's interface the runner uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode


class Server:
    """This process's fork server, started on first use (or by `start`, to import while the runner prepares)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.env: dict[str, str] | None = None
        self.broken: str | None = None  # why runs are spawned instead, once known
        self.said = False
        self.probed = False

    def start(self) -> None:
        """Start the server's imports in the background; the first fork waits for them."""
        with self.lock:
            if self.env is None and self.broken is None:
                self.broken = self._launch()

    def _launch(self) -> str | None:
        if os.environ.get("BENCH_FORK_SERVER", "1") == "0":
            return "BENCH_FORK_SERVER=0"
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return "this platform has no fork server (no fork)"
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        env = {**SERVER_ENV, **os.environ}
        with _environ(env):
            from multiprocessing import forkserver

            forkserver.ensure_running()
        self.env = env
        return None

    def refusal(self, env: dict[str, str]) -> str | None:
        """Why a run with this environment cannot be forked from the server; None when it can."""
        if env.get("BENCH_FORK_SERVER") == "0":
            return "BENCH_FORK_SERVER=0"
        self.start()
        if self.broken:
            return self.broken
        assert self.env is not None
        differ = sorted(k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)
                        and not (k in APPLIED and k in env) and not (k in SERVER_ENV and k not in env))
        if differ:
            return f"the run's environment differs from the fork server's in {', '.join(differ)}"
        return None

    def ready(self) -> str | None:
        """Start the server and wait for its probe; why runs will be spawned instead, or None."""
        self.start()
        with self.lock:
            if not self.probed and self.broken is None:
                self.probed = True
                self._probe()
        return self.broken

    def fork(self, argv: list[str], env: dict[str, str], log: str) -> Forked:
        """Start `python -m argv[0] argv[1:]` as a child of the server, its output appended to the file `log`."""
        if self.ready():
            raise ForkRefused(self.broken)
        with self.lock:
            process = multiprocessing.get_context("forkserver").Process(target=child, args=(argv, env, log),
                                                                         name=argv[0])
            try:
                process.start()
            except (OSError, EOFError) as e:  # the server died (killed, or its imports failed)
                self.broken = f"the fork server stopped ({type(e).__name__}: {e})"
                raise ForkRefused(self.broken) from e
        return Forked(process)

    def _probe(self) -> None:
        """One empty child first: it proves the server imported and started, and says whether it holds CUDA."""
        try:
            process = multiprocessing.get_context("forkserver").Process(target=probe)
            process.start()
            process.join()
        except (OSError, EOFError) as e:
            self.broken = f"the fork server did not start ({type(e).__name__}: {e})"
            return
        if process.exitcode == CUDA_IN_SERVER:
            self.broken = "the fork server's process initialised CUDA, and a forked child cannot use it"
        elif process.exitcode != 0:
            self.broken = f"the fork server's probe exited with code {process.exitcode}"

    def note(self, why: str) -> None:
        """Say once per runner that runs are spawned, and why."""
        if not self.said:
            self.said = True
            print(f"note: runs start as fresh processes instead of from the fork server: {why}", file=sys.stderr)


class ForkRefused(RuntimeError):
    """The server cannot fork this run."""


SERVER = Server()


@contextmanager
def _environ(env: dict[str, str]):
    """os.environ set to `env` for the block (the server process inherits it), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def probe() -> None:
    """In a child of the server: exit CUDA_IN_SERVER when the server had initialised CUDA before forking."""
    import torch

    if torch.cuda.is_initialized() or torch.cuda._is_in_bad_fork():
        raise SystemExit(CUDA_IN_SERVER)


def child(argv: list[str], env: dict[str, str], log: str) -> None:
    """In the forked child: become the run's process (own session, title, environment, threads, fresh random
    state, output to the log), then run the module's main, whose return value is the exit code."""
    import importlib
    import random

    os.setsid()  # the runner ends the run's process group; Ctrl-C at a terminal reaches the runner alone
    _title([sys.executable, "-m", *argv])
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import numpy as np
    import torch

    if env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    random.seed()  # as a fresh process would be; the worker seeds what a run depends on
    np.random.seed()
    sys.argv = [argv[0], *argv[1:]]
    raise SystemExit(importlib.import_module(argv[0]).main(argv[1:]))


def _title(argv: list[str]) -> None:
    """The process title `ps` shows: the command a spawned run would have (setproctitle, where installed)."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(" ".join(argv))

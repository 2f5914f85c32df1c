"""One `bench run` per results folder at a time: a lock file in the folder, held with flock, naming its holder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

LOCK = ".bench.lock"


class FolderInUse(Exception):
    """Another live `bench run` holds the folder."""


def _holder(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def holding(folder: Path, announce=lambda message: None):
    """Hold the folder's lock for the block. The kernel drops a flock when its process dies, so a lock left by a
    killed run is free: it is taken over, and `announce` says whose it was. A live holder raises FolderInUse."""
    path = Path(folder) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _holder(path.read_text())
            raise FolderInUse(
                f"{folder} is in use by another bench run (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
                f"started {owner.get('started', '?')}: {owner.get('command', '?')}); wait for it to finish, stop it, "
                "or give this run another --output") from None
        previous = _holder(path.read_text())
        if previous.get("pid"):
            here = previous.get("host") == socket.gethostname()
            state = "no longer running" if here and not _alive(previous["pid"]) else "its lock was free"
            announce(f"{folder}: taking over the lock left by pid {previous['pid']} on {previous.get('host', '?')} "
                     f"({state})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
        try:
            yield
        finally:
            # Emptied, not removed: a process that opened the file just now must lock this same file, not a new one.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the flock

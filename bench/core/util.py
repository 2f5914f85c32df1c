"""Small helpers every layer uses: did-you-mean hints, atomic file writes, flattening nested mappings."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def atomic_write(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """Write beside the target, then rename: a reader never sees half a file, and a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes owner-only files; records and reports are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested settings as the dotted names a person searches for."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def local_path(value: str | Path, base_dir: Path) -> Path:
    """A path as a suite file gives it: `~` expanded, relative to the suite's folder (the one resolver of such paths).
    os.path.expanduser leaves an unknown "~user" as it is where Path.expanduser raises."""
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else Path(base_dir) / p

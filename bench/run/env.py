"""Environment capture for records: library versions, device, CPU, git state."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "evaluate", "gguf")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(cwd: Path | None = None) -> dict[str, object]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()})"


def environment(device: torch.device) -> dict[str, object]:
    env: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "device": device_name(device),
        "device_type": device.type,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "git": git_state(Path(__file__).resolve().parents[2]),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_count"] = torch.cuda.device_count()
    return env

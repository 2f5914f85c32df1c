"""Memory per phase of a run: the peak is reset when a phase starts and read when it ends.

On CUDA the allocator's own peak statistics (allocated and reserved) are reset. On a CPU the figure is the process's
resident high-water mark (VmHWM in /proc/self/status), which Linux resets to the current resident size when "5" is
written to /proc/self/clear_refs. Where that reset is impossible (not Linux, or /proc is read-only), phases get no
figure and the record says why, rather than holding a whole-process peak under a phase's name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def rss_peak() -> int | None:
    """The process's resident high-water mark since the last reset, in bytes; None where Linux does not say."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def reset_rss_peak() -> str | None:
    """Reset the resident high-water mark to the current resident size; the reason when that cannot be done."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError as e:
        return f"the resident peak cannot be reset here ({CLEAR_REFS}: {e.strerror})"
    return None if rss_peak() is not None else f"{STATUS} reports no VmHWM"


@dataclass
class Peak:
    """One phase's peak: bytes in use at the peak (CUDA: allocated; CPU: resident), and CUDA's reserved bytes."""

    used: int
    reserved: int | None = None


class Meter:
    """Resets and reads the peak of the device a run computes on."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.unavailable: str | None = None if self.cuda else reset_rss_peak()

    @property
    def method(self) -> str:
        """What the phase figures are, for the record."""
        if self.cuda:
            return ("torch.cuda max_memory_allocated / max_memory_reserved, reset at each phase start after "
                    "empty_cache()")
        if self.unavailable:
            return f"not measured per phase: {self.unavailable}"
        return "resident set high-water mark (VmHWM), reset at each phase start via /proc/self/clear_refs"

    def now(self) -> int:
        """Bytes in use right now."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return psutil.Process().memory_info().rss

    def reset(self) -> None:
        """Start a phase: on CUDA the allocator's cached blocks are released first, so a phase's reserved peak is
        its own, not the pool an earlier phase grew."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not self.unavailable:
            reset_rss_peak()

    def peak(self) -> Peak | None:
        """The peak since the last reset; None where phases cannot be measured."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return Peak(torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device))
        if self.unavailable:
            return None
        return Peak(rss_peak())

    @contextlib.contextmanager
    def phase(self, into: dict[str, Peak | None], name: str):
        """Measure the block's peak into `into[name]`."""
        self.reset()
        try:
            yield
        finally:
            into[name] = self.peak()

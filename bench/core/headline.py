"""Which time and throughput a summary leads with: the steady (warm-up-free) figures, the whole run's where none."""

from __future__ import annotations

from typing import Any

from bench.core.metrics import format_value

# The headline training time and throughput leave out the first steps (bench.run.train.steady_after): kernel
# selection, allocator growth and optimiser state are a large, method-dependent share of a short GPU run.
TIME = "steady_train_seconds"
THROUGHPUT = "steady_tokens_per_second"
# What a record without the steady figures (written before they were kept) shows instead, marked.
WHOLE_RUN = {TIME: "train_seconds", THROUGHPUT: "train_tokens_per_second"}
MARK = "†"
STEADY_NOTE = ("train s and tok/s leave out the first steps (warm-up: their count and seconds, at most 5 steps "
               "and a quarter of the run).")
WHOLE_RUN_NOTE = (f"{MARK} whole run, warm-up included: the record has no steady figures (written before they "
                  "were kept).")


def value(metrics: dict[str, Any], name: str) -> tuple[Any, bool]:
    """The value a summary shows for `name`, and whether it is the whole run's stand-in (warm-up included) for a
    steady figure the record lacks."""
    if name in WHOLE_RUN and name not in metrics and WHOLE_RUN[name] in metrics:
        return metrics[WHOLE_RUN[name]], True
    return metrics.get(name), False


def stand_ins(metrics: dict[str, Any]) -> list[str]:
    """The headline figures a record shows as the whole run's (warm-up included) for want of the steady one. Older
    records may hold the steady throughput but not the steady time: each figure is judged on its own."""
    return [name for name in WHOLE_RUN if value(metrics, name)[1]]


def warmup_text(steps: float | None, seconds: float | None) -> str:
    """The warm-up column: "5 steps, 0.8 s"; "-" where the record has none (an older record)."""
    if steps is None or seconds is None:
        return "-"
    return f"{steps:.0f} step{'s' * (round(steps) != 1)}, {format_value('warmup_seconds', seconds)} s"

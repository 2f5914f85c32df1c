"""Run records made by hand, three seeds per method, with round numbers whose means and intervals are worked out
in the tests that use them (tests/test_recommend.py, tests/test_seeds.py)."""

from __future__ import annotations

from bench.core.config import ResolvedTraining
from bench.core.records import RunRecord
from tests.conftest import make_config

GB, MB, KB = 1024 ** 3, 1024 ** 2, 1024

# method: (exact match per seed, eval loss per seed, peak memory, train seconds, adapter bytes or None)
SEEDED = {
    "full": ([1.0, 1.0, 0.95], [0.10, 0.10, 0.10], 3.2 * GB, 90.0, None),
    "lora": ([0.95, 1.0, 0.9], [0.20, 0.20, 0.20], 2.7 * GB, 60.0, 9 * MB),
    "prompt_tuning": ([0.0, 0.0, 0.0], [0.90, 0.90, 0.90], 2.6 * GB, 50.0, 36 * KB),
    "ia3": ([0.9, 0.85, 0.8], [0.30, 0.30, 0.30], 2.4 * GB, 45.0, 256 * KB),
}
FULL_CHECKPOINT = 500 * MB


def record(run: str, method: str, metrics: dict, status: str = "success", group: str | None = None,
           seed: int | None = None, started: int = 0, suite: str = "hand") -> RunRecord:
    config = make_config(run, method, suite=suite, training=ResolvedTraining(seed=0 if seed is None else seed),
                         **({"group": group, "seed": seed} if group is not None else {}))
    return RunRecord(suite=suite, run=run, method=method, status=status, config=config, config_hash=run,
                     metrics=metrics if status == "success" else {}, error=None if status == "success" else
                     "RuntimeError: boom", started_at=f"2026-01-01T00:{started:02d}:00+00:00")


def seeded_records() -> list[RunRecord]:
    """A pretrained baseline (one run, no seeds) and four methods over seeds 0, 1, 2."""
    out = [record("baseline", "baseline", {"exact_match": 0.0, "eval_loss": 2.0, "peak_memory_bytes": 1.9 * GB,
                                           "trainable_params": 0})]
    for i, (method, (exact, losses, memory, seconds, adapter)) in enumerate(SEEDED.items()):
        for seed in range(3):
            metrics = {"exact_match": exact[seed], "eval_loss": losses[seed], "peak_memory_bytes": memory,
                       "train_seconds": seconds, "trainable_params": 1000 * (i + 1)}
            metrics |= {"adapter_bytes": adapter} if adapter else {"checkpoint_bytes": FULL_CHECKPOINT}
            out.append(record(f"{method}@seed{seed}", method, metrics, group=method, seed=seed,
                              started=1 + 3 * i + seed))
    return out

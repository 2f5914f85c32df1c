"""A suite's `regression:` section: which metrics `bench compare` checks, how far each may move, and which changes
fail the gate. Schema only; the comparison itself is bench.choose.compare.

Why the defaults are what they are. Measured on the smoke suite (tiny random Llama, 6 steps per method):
- Same code, same environment, two runs: bit-identical loss curves, eval losses, scores and greedy predictions
  for every run, on the CPU (float32) and on an H100 (bf16 autocast) alike. The loop is seeded and the batches
  depend only on the data and the seed.
- Same code on another machine (Intel Xeon, 16 threads, torch 2.11 CUDA build vs AMD EPYC, 2 threads, torch 2.13
  CPU build): loss curves equal to within 5e-7, eval losses and predictions identical; peak RSS 71-76% higher.
- Code changes made in this repository: a fix to packed attention moved final train losses by 0.004-0.005;
  ending training examples at the end-of-turn token moved eval losses by 0.011-0.014. A tolerance of 0.02 would
  have let both through unseen.
So losses are gated at absolute 0.001: thousands of times the numerical noise, below the smallest real change seen.
A change meant to move results then comes with new reference records, as it should. Scores (exact match and the like)
move in steps of 1/N examples and are gated at absolute 0.02.
- Peak memory repeats within 1% (CUDA max allocated exactly) in one environment: +10% catches a leak or a layer
  left unfrozen. Another environment loads other libraries (the CUDA build of torch alone adds hundreds of MB), so
  memory and time are gated only where the environment (device, dtype, Python, library versions) is the reference
  records'.
- Time is reported but not gated: on this shared CPU machine the same run's training took 2.6 s and 14.9 s
  minutes apart (other processes hold the cores), and even on the H100 it varied by up to 37% between two runs
  (six steps of a tiny model: launch overheads and warm-up, not arithmetic). A suite that runs long on a card of
  its own can gate it: `warn_only: []`, or `warn_only_on_cpu: [steady_train_seconds]` to gate it on GPUs only.
  The time compared is the headline one (bench.core.headline): steady state, the warm-up steps left out.
- Trainable parameters and optimiser steps are exact: a different count means the method or the budget changed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator

from bench.core.headline import TIME
from bench.core.metrics import METRICS
from bench.core.util import did_you_mean


class Tolerance(BaseModel):
    """How far a metric may move in its worse direction: an absolute amount, or a share of the reference value."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    absolute: NonNegativeFloat | None = Field(None, description="the metric may move this much in its worse direction")
    relative: NonNegativeFloat | None = Field(None, description="the metric may move this share of the reference "
                                              "value (0.25: 25%) in its worse direction")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.absolute is None) == (self.relative is None):
            raise ValueError("give exactly one of absolute or relative")
        return self

    def allowed(self, reference: float) -> float:
        return self.absolute if self.absolute is not None else self.relative * abs(reference)

    def label(self) -> str:
        return f"±{self.absolute:g}" if self.absolute is not None else f"±{self.relative * 100:g}%"


def _known_metrics(names: list[str]) -> list[str]:
    """Metrics a record can hold, as records name them (Hub scores without 'hub:'): a misspelt name would
    otherwise never match anything and its tolerance would silently not apply."""
    from bench.core.scoring import SCORERS

    known = [*METRICS, *SCORERS]
    problems = []
    for name in names:
        if not name.startswith("hub:") and name not in known:
            hint = did_you_mean(name, known) or " (a Hub score is written hub:NAME)"
            problems.append(f"unknown metric '{name}'{hint}")
    if problems:
        raise ValueError("; ".join(problems))
    return [n.removeprefix("hub:") for n in names]


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "eval_loss": Tolerance(absolute=0.001),
    "final_train_loss": Tolerance(absolute=0.001),
    "peak_memory_bytes": Tolerance(relative=0.10),
    "cuda_max_allocated_bytes": Tolerance(relative=0.10),
    TIME: Tolerance(relative=0.25),
    "trainable_params": Tolerance(absolute=0),
    "train_steps": Tolerance(absolute=0),
}


class Regression(BaseModel):
    """What `bench compare` checks and which changes fail the gate.

    Every metric in `tolerances`, and every score the suite's eval computes, is compared. All of them are gated
    except those in `warn_only` (always), in `warn_only_on_cpu` (when the current run ran on a CPU) and in
    `same_environment_only` (when the run's environment differs from the reference records'): those are shown with their
    verdict but never fail the gate.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tolerances: dict[str, Tolerance] = Field(DEFAULT_TOLERANCES, description="per metric, how far it may move; a "
                                             "suite names only those it changes, the other defaults stay")
    score_tolerance: Tolerance = Field(Tolerance(absolute=0.02), description="the tolerance of any score the suite "
                                       "computes that `tolerances` does not name")
    warn_only: list[str] = Field([TIME], description="metrics shown with their verdict but never failing "
                                 "the gate")
    warn_only_on_cpu: list[str] = Field([], description="metrics that fail the gate only when the current run ran on "
                                        "a GPU")
    same_environment_only: list[str] = Field(["peak_memory_bytes", "cuda_max_allocated_bytes", TIME],
                                             description="metrics gated only when the run's environment matches the "
                                             "reference records'")

    @field_validator("tolerances", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """A suite names only the tolerances it changes; the other defaults stay."""
        if not isinstance(value, dict):
            return value
        return {**DEFAULT_TOLERANCES, **dict(zip(_known_metrics(list(value)), value.values()))}

    @field_validator("warn_only", "warn_only_on_cpu", "same_environment_only")
    @classmethod
    def _known_names(cls, value: list[str]) -> list[str]:
        return _known_metrics(value)

    def tolerance(self, name: str) -> Tolerance:
        return self.tolerances.get(name) or self.score_tolerance

    def gated(self, name: str, device_type: str | None, same_environment: bool = True) -> bool:
        return (name not in self.warn_only and not (device_type == "cpu" and name in self.warn_only_on_cpu)
                and (same_environment or name not in self.same_environment_only))

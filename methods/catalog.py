"""What the method registry knows of PEFT without importing it: PEFT's own answers, stored for one PEFT release.

Importing PEFT costs about 6 s (it imports torch, transformers and every tuner), so `bench list`, the report's serve
column and `bench recommend --servable` read PEFT's tuner types, each config class's name and fields, whether it is
prompt learning and whether its layers merge, from methods/peft_facts.json. The file holds what PEFT answered, asked
by `ask_peft` below; it is used only while the installed PEFT is the release it was written from, and every question
goes to PEFT itself otherwise. Write it again after moving PEFT's pin: `python scripts/regen_peft_facts.py`
(tests/test_catalog.py fails until then).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("peft_facts.json")


@dataclass(frozen=True)
class Tuner:
    """One PEFT tuner (a PeftType value) as PEFT describes it."""

    config: str  # its config dataclass's name (LoraConfig)
    fields: tuple[str, ...]  # the config's fields a suite may set (PEFT's bookkeeping fields left out)
    prompt_learning: bool  # a PromptLearningConfig: virtual tokens
    merges: bool  # its tuner layers implement merge (merge_and_unload folds it into the base)


def ask_peft() -> dict[str, Any]:
    """PEFT's answers, from PEFT as installed (imports it)."""
    import peft
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.config import PromptLearningConfig
    from peft.utils.constants import DUMMY_TARGET_MODULES

    from methods.base import config_class, field_types, tuner_layers_merge

    types = sorted(str(t.value) if hasattr(t, "value") else str(t) for t in PEFT_TYPE_TO_CONFIG_MAPPING)
    tuners = {t: Tuner(config=config_class(t).__name__, fields=tuple(field_types(t)),
                       prompt_learning=issubclass(config_class(t), PromptLearningConfig),
                       merges=tuner_layers_merge(t)) for t in types}
    return {"peft": peft.__version__, "DUMMY_TARGET_MODULES": DUMMY_TARGET_MODULES,
            "tuners": {t: asdict(tuner) for t, tuner in tuners.items()}}


@functools.cache
def _facts() -> dict[str, Any]:
    stored = json.loads(FILE.read_text()) if FILE.exists() else None  # absent only before its first `write`
    return stored if stored is not None and stored["peft"] == version("peft") else ask_peft()


def peft_types() -> tuple[str, ...]:
    """Every PeftType value PEFT maps to a config class, sorted."""
    return tuple(_facts()["tuners"])


def tuner(peft_type: str) -> Tuner:
    row = _facts()["tuners"][peft_type]
    return Tuner(**{**row, "fields": tuple(row["fields"])})


def dummy_target_modules() -> str:
    """PEFT's sentinel target_modules value for "no adapter layers" (peft.utils.constants.DUMMY_TARGET_MODULES)."""
    return _facts()["DUMMY_TARGET_MODULES"]


def write() -> Path:
    """methods/peft_facts.json from PEFT as installed."""
    FILE.write_text(json.dumps(ask_peft(), indent=1) + "\n")
    return FILE

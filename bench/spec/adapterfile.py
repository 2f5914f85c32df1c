"""PEFT adapter_config.json files as a suite's runs name them: read, their method, the fields a run takes from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # methods loads PEFT and torch; the schema does not
    from methods import Method


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """A PEFT adapter_config.json as a dict; raises ValueError saying what is wrong with it."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"no such file {str(path)!r} (paths are relative to the suite file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("peft_type"), str):
        raise ValueError(f"{str(path)!r} is not a PEFT adapter config (no peft_type)")
    return doc


def adapter_method(doc: dict[str, Any]) -> str:
    return doc["peft_type"].lower()


def adapter_params(doc: dict[str, Any], method: Method) -> dict[str, Any]:
    """The fields of an adapter config a run sets: every field of the method's PEFT config but PEFT's bookkeeping,
    the fields the method fixes, and the dimensions of the model the file was saved from (an unknown field is a
    problem `_run_method` reports)."""
    accepted = method.parameters()
    return {k: sorted(v) if k in SET_FIELDS and isinstance(v, list) else v for k, v in doc.items()
            if k in accepted and not (method.prompt_learning and k in MODEL_DIMENSIONS)}


# Prompt-learning fields PEFT fills from the model it applies the config to (where they are None) and then saves in
# adapter_config.json: a file saved from Llama-3.2-3B says token_dim 3072, which on any other model gives embeddings
# of the wrong width. A run takes them from its own model.
MODEL_DIMENSIONS = ("token_dim", "num_layers", "num_attention_heads", "num_transformer_submodules")


# Fields PEFT holds as sets and saves as lists in no fixed order: sorted, so the same adapter config always resolves
# to the same run config (and config hash).
SET_FIELDS = ("target_modules", "exclude_modules", "modules_to_save")

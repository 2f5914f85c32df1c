"""The method registry: every PEFT tuner by its PEFT type in lower case, plus the harness's own methods.

A file here exists only where a method adds something to PEFT: `SHIPPED` are the benchmark's curated methods (their
names, defaults and learning-rate grids), `HOOKED` are PEFT tuners that need the training loop. Every other tuner
PEFT ships is generated from its PeftType with PEFT's own defaults, so a tuner added in a later PEFT release needs
no code here. Importing this registry imports no PEFT: what it needs of PEFT is read from methods/catalog.py.
"""

from __future__ import annotations

from methods import adalora, adamss, cartridge, dora, full, head_only, ia3, loha, lora, oft, p_tuning, prefix_tuning
from methods import prompt_tuning, qlora, trainable_tokens, vera
from methods import catalog
from methods.base import Method, RunFacts

SHIPPED: dict[str, Method] = {
    m.METHOD.id: m.METHOD
    for m in (full, lora, qlora, prefix_tuning, prompt_tuning, p_tuning, ia3, head_only, dora, loha, vera, oft)
}
HOOKED: dict[str, Method] = {m.METHOD.id: m.METHOD for m in (adalora, adamss, cartridge, trainable_tokens)}

# Tuners that cannot run as a benchmark run on a causal LM, and why: PEFT has no flag that says so.
REFUSALS = {
    "POLY": "routes every example through its task's adapter mix (Polytropon) and needs a task id per example, "
            "which instruction data does not have",
    "MULTITASK_PROMPT_TUNING": "needs a task id per example (task_ids in every forward), which instruction data "
                               "does not have",
    "XLORA": "mixes LoRA adapters trained beforehand (its `adapters` are paths to them); a run trains from none",
    "CPT": "needs its own input format (token-type masks marking the context, template and label tokens of every "
           "example), which the harness's batches do not carry",
}
# Tuners PEFT builds from the base weights themselves (a decomposition of them): not countable on the meta device.
NEEDS_WEIGHTS = ("FROD", "SHIRA")


def _generated(peft_type: str) -> Method:
    return Method(id=peft_type.lower(), summary=f"PEFT's {catalog.tuner(peft_type).config} with PEFT's defaults.",
                  peft_type=peft_type, refusal=REFUSALS.get(peft_type), needs_weights=peft_type in NEEDS_WEIGHTS)


METHODS: dict[str, Method] = SHIPPED | HOOKED | {
    t.lower(): _generated(t) for t in catalog.peft_types() if t.lower() not in SHIPPED and t.lower() not in HOOKED}

__all__ = ["HOOKED", "METHODS", "Method", "RunFacts", "SHIPPED"]

"""Can it be served: per serving stack, whether a run's adapter loads as it is, must be merged into the base first,
or needs PEFT at inference. The stacks' rules as data, each with the version and source file it was read from.

None of these stacks installs on a CPU machine without network (vLLM and TGI need CUDA builds, llama.cpp's converter
is a script in its repository, not a package), so their checks are restated here, not called; a new release may
lift a limit: read the cited source again when a stack moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

How = Literal["as-is", "merge first", "needs PEFT"]


@dataclass(frozen=True)
class Adapter:
    """What a stack looks at: the PEFT type (None for full fine-tuning, a whole model) and the config's fields."""

    peft_type: str | None
    params: dict[str, Any]
    mergeable: bool  # PEFT's merge_and_unload folds it into the base weights
    prompt_learning: bool = False


def _lora_only(a: Adapter) -> str | None:
    if a.prompt_learning:
        return "prompt learning (virtual tokens) has no weights to load into the model"
    return None if a.peft_type == "LORA" else f"loads LoRA adapters only, not {a.peft_type}"


def _vllm(a: Adapter) -> str | None:
    """vllm/lora/peft_helper.py, PEFTHelper._validate_features and validate_legal (the errors its tests expect)."""
    if (why := _lora_only(a)) is not None:
        return why
    if a.params.get("use_dora"):
        return "vLLM does not yet support DoRA"
    if a.params.get("modules_to_save"):
        return "vLLM only supports modules_to_save being None"
    if a.params.get("bias", "none") != "none":
        return "adapter bias needs the server's LoRA bias option (bias_enabled)"
    return None


def _llama_cpp(a: Adapter) -> str | None:
    """convert_lora_to_gguf.py: every tensor must be a lora_A or lora_B weight (a DoRA magnitude, a bias or a saved
    module exits with "Not a lora_A or lora_B tensor"), and the scale is lora_alpha / r (rsLoRA's sqrt(r) is not
    read)."""
    if (why := _lora_only(a)) is not None:
        return why
    if a.params.get("use_dora"):
        return "a DoRA magnitude vector is not a lora_A or lora_B tensor"
    if a.params.get("modules_to_save"):
        return "a saved module (embed_tokens, lm_head) is not a lora_A or lora_B tensor"
    if a.params.get("bias", "none") != "none":
        return "a LoRA bias is not a lora_A or lora_B tensor"
    if a.params.get("use_rslora"):
        return "the converter scales by lora_alpha / r, so rsLoRA's lora_alpha / sqrt(r) would be lost"
    return None


def _tgi(a: Adapter) -> str | None:
    """TGI's LoRA loading (server/text_generation_server/adapters/lora.py): LoRA's A and B matrices per layer."""
    if (why := _lora_only(a)) is not None:
        return why
    for field, what in (("use_dora", "DoRA"), ("modules_to_save", "saved modules"), ("use_rslora", "rsLoRA")):
        if a.params.get(field):
            return f"{what}: not among the LoRA features its adapter loader reads"
    if a.params.get("bias", "none") != "none":
        return "LoRA bias: not among the LoRA features its adapter loader reads"
    return None


@dataclass(frozen=True)
class Stack:
    id: str  # the name `--servable` takes
    name: str
    version: str  # the release the rule was read from
    source: str  # where in that release
    refuses: Callable[[Adapter], str | None]  # why it cannot load the adapter as it is; None when it can


STACKS: dict[str, Stack] = {s.id: s for s in (
    Stack("vllm", "vLLM", "0.11", "vllm/lora/peft_helper.py (PEFTHelper.validate_legal) and "
          "tests/lora/test_peft_helper.py (ERROR_CASES); prompt adapters were removed in 2025", _vllm),
    Stack("llama.cpp", "llama.cpp", "master of 2025 (commit 0b03adaa)", "convert_lora_to_gguf.py (LoraModel."
          "get_tensors: lora_A/lora_B tensors only; alpha from lparams['lora_alpha'])", _llama_cpp),
    Stack("tgi", "TGI", "3.x", "docs/source/conceptual/lora.md (LORA_ADAPTERS) and "
          "server/text_generation_server/adapters/lora.py", _tgi),
)}


@dataclass(frozen=True)
class Verdict:
    stack: str
    how: How
    why: str  # what decides it, in a few words


def verdict(stack: Stack, a: Adapter) -> Verdict:
    """As it is; or merged into the base first (then any stack serves it as a whole model); or only with PEFT."""
    if a.peft_type is None:
        return Verdict(stack.id, "as-is", "a whole model, saved as one")
    why = stack.refuses(a)
    if why is None:
        return Verdict(stack.id, "as-is", "a LoRA adapter it loads")
    if a.mergeable:
        return Verdict(stack.id, "merge first", why)
    return Verdict(stack.id, "needs PEFT", why)


def adapter_of(method: str, params: dict[str, Any]) -> Adapter | None:
    """The adapter a run of `method` saves, as the method registry knows it (PEFT's own config classes say what is
    prompt learning); None for the untrained baseline or a method this harness does not know."""
    from methods import METHODS  # imports PEFT: only where a servability verdict is wanted

    m = METHODS.get(method)
    if m is None:
        return None
    return Adapter(m.peft_type, {**params, **m.fixed}, m.merge != "none", m.peft_type is not None and m.prompt_learning)


def verdicts(method: str, params: dict[str, Any]) -> list[Verdict] | None:
    a = adapter_of(method, params)
    return None if a is None else [verdict(s, a) for s in STACKS.values()]


def cell(found: list[Verdict] | None) -> str:
    """The summary's column: the stacks that take it as it is, then what the others need."""
    if not found:
        return "-"
    names = {v.stack: STACKS[v.stack].name for v in found}
    ready = [names[v.stack] for v in found if v.how == "as-is"]
    rest = sorted({v.how for v in found if v.how != "as-is"})
    if not rest:
        return ", ".join(ready)
    text = " / ".join("PEFT only" if h == "needs PEFT" else h for h in rest)
    return f"{', '.join(ready)}; others {text}" if ready else text

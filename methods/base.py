"""The method record: a PEFT tuner, with what this harness adds to it (defaults, a learning-rate grid, a 4-bit base,
loop hooks). PEFT's config dataclass is the schema; what a method can do is asked of PEFT."""

from __future__ import annotations

import contextlib
import copy

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from methods import catalog

Merge = Literal["exact", "lossy", "none"]

# Fields of every PEFT config that are PEFT's bookkeeping, not a choice a run makes.
BOOKKEEPING = ("peft_type", "task_type", "inference_mode", "base_model_name_or_path", "revision", "auto_mapping",
               "peft_version")


# A config PEFT applies without complaint but that trains nothing on this model (OSF's rank_pattern for Llama-3.2-3B on
# 256-wide layers): refused, at validate time where the architecture is known, else when the run builds it.
NOTHING_TRAINS = ("its params leave nothing to train on this model (0 trainable parameters; ranks or sizes written "
                  "for a larger model?)")


@functools.cache
def config_class(peft_type: str) -> type:
    """PEFT's config dataclass for a PeftType value ("LORA")."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


@functools.cache
def field_types(peft_type: str) -> dict[str, Any]:
    """A suite may set every field of the config dataclass but PEFT's bookkeeping; each with its annotation."""
    cls = config_class(peft_type)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init and f.name not in BOOKKEEPING}


@functools.cache
def field_defaults(peft_type: str) -> dict[str, Any]:
    """PEFT's default for each field that has one (a default_factory's value too)."""
    out = {}
    for f in dataclasses.fields(config_class(peft_type)):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@dataclass(frozen=True)
class RunFacts:
    """What a method's hooks may need to know of the run before the model is built."""

    total_steps: int
    special_token_ids: tuple[int, ...] = ()  # the tokenizer's special tokens (trainable_tokens' default rows)


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: a PEFT tuner (`peft_type`, a PeftType value) or, with `peft_type=None`, every weight.

    `preset` are defaults that serve a benchmark better than PEFT's; they are part of each run's resolved params (and
    its hash). `fixed` are fields the method itself sets (DoRA is LoRA with use_dora=True); a suite cannot change
    them. Every other field of PEFT's config dataclass is a param a suite may set, with PEFT's default.
    """

    id: str
    summary: str
    peft_type: str | None
    preset: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    load_in_4bit: bool = False
    # Learning rates `sweep: {learning_rate: default}` tries: methods that train few parameters need far larger steps.
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    # Bumped whenever results would change, so stored records stop matching and get rerun.
    version: int = 1
    # Why this tuner cannot run on a causal LM in a benchmark run (None: it can). PEFT has no flag for this.
    refusal: str | None = None
    # Set when PEFT builds this tuner from the base weights (a decomposition of them): a meta-device model cannot
    # count it, so `bench plan` builds it with random weights where that is small enough.
    needs_weights: bool = False
    # Params the harness takes beside PEFT's fields, each with its type: read by the method's hooks, never passed to
    # PEFT's config (a prefix initialised from text).
    extras: dict[str, Any] = field(default_factory=dict)

    # ---- the schema ---------------------------------------------------------------------------------------------

    def defaults(self) -> dict[str, Any]:
        """What the resolved params of a run start from: the method's own presets."""
        return dict(self.preset)

    def parameters(self) -> dict[str, Any]:
        """Every param a suite may set, with its type: PEFT's config fields less the ones the method fixes, and the
        method's extras."""
        if self.peft_type is None:
            return {}
        return {k: v for k, v in field_types(self.peft_type).items() if k not in self.fixed} | self.extras

    def field_names(self) -> tuple[str, ...]:
        """The PEFT config fields a suite may set (`parameters()` less the extras), read without importing PEFT."""
        return tuple(f for f in catalog.tuner(self.peft_type).fields if f not in self.fixed) if self.peft_type else ()

    @property
    def config_name(self) -> str:
        return catalog.tuner(self.peft_type).config if self.peft_type else "no PEFT config"

    def config(self, plan: RunFacts | None = None, **params):
        """The PEFT config this run trains with (PEFT's __post_init__ checks run here); None trains every weight."""
        if self.peft_type is None:
            return None
        # A copy: PEFT changes some fields of the config it is given in place (ensure_weight_tying adds the tied
        # embeddings to modules_to_save), which would otherwise leak into the method's own lists and the next run.
        merged = self.prepare(copy.deepcopy(self.preset | params | self.fixed), plan)
        return config_class(self.peft_type)(task_type="CAUSAL_LM",
                                            **{k: v for k, v in merged.items() if k not in self.extras})

    # ---- what PEFT knows ------------------------------------------------------------------------------------------

    @property
    def prompt_learning(self) -> bool:
        """Virtual tokens: rows cannot hold several packed examples, and decoding is the harness's own."""
        return self.peft_type is not None and catalog.tuner(self.peft_type).prompt_learning

    @property
    def merge(self) -> Merge:
        """Whether merge_and_unload folds the adapter into the base (its tuner layers implement merge), and how."""
        if self.peft_type is None or self.prompt_learning or not catalog.tuner(self.peft_type).merges:
            return "none"
        return "lossy" if self.load_in_4bit else "exact"

    @property
    def packable(self) -> bool:
        return not self.prompt_learning

    @property
    def left_pad_safe(self) -> bool:
        # PEFT drops position ids for prompt learning except where the virtual tokens are a KV-cache prefix
        # (peft_model._adjust_prompt_learning_kwargs), so with left padding the distance between virtual and real
        # tokens depends on the padding: generate without padding.
        return not self.prompt_learning or self.peft_type in ("PREFIX_TUNING", "CARTRIDGE")

    @property
    def kv_cache_generate(self) -> bool:
        # transformers' KV-cache generate() gives the trained model's own greedy answers. Not so for prompt learning
        # with transformers 5.24 / peft 0.21.2: from the second new token on, generate() disagrees with a full forward
        # pass; those methods decode with the harness's own cached loop (bench.run.evaluation.greedy_virtual).
        return not self.prompt_learning

    # ---- hooks: what a tuner needs of the loop ---------------------------------------------------------------------

    def prepare(self, params: dict[str, Any], plan: RunFacts | None) -> dict[str, Any]:
        """The config fields once the run's plan is known (AdaLoRA's total_step is the run's step count); a
        ValueError here is a problem with the run's params, reported at validate time."""
        return params

    def check(self, model, params: dict[str, Any]) -> None:
        """Raise ValueError where the params ask what this model cannot do and PEFT finds out only when the model
        runs; called on the built model at validate time (its weights on the meta device) and before training."""

    def after_build(self, model, tokenizer, params: dict[str, Any]) -> None:
        """Called once the PEFT model exists, before training, with the run's resolved params (extras included)."""

    def on_step(self, model, step: int) -> None:
        """Called after each optimiser step, before gradients are cleared (AdaLoRA reallocates ranks from them)."""

    def measuring(self, model) -> contextlib.AbstractContextManager:
        """Around the harness's own loss measurements (eval loss, forgetting): inside it the model's loss is the
        task's loss alone, whatever the method adds to its training objective."""
        return contextlib.nullcontext()


@functools.cache
def tuner_layers_merge(peft_type: str) -> bool:
    """Whether PEFT's layers for this tuner implement `merge` (BaseTunerLayer's own raises NotImplementedError)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    layer = getattr(tuner, "tuner_layer_cls", None)
    if layer is None:
        return False
    classes, todo = [], [layer]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    return any(c.merge is not BaseTunerLayer.merge for c in classes)

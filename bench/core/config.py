"""The typed settings of a run: the pieces a suite is written in, and `RunConfig`, one run fully resolved.

A `RunConfig` goes from the suite to the run's `config.json`, into the worker, and back into the run's record
unchanged. Its JSON form (and so its hash) leaves out every field at its default but those marked KEPT (the fields
records have held since the first schema): a field added later with a default changes no stored record's hash.
NOT_HASHED marks what is stored but is no part of what a run computes. Schema only: no torch, no PEFT.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SerializationInfo,
    create_model,
    model_serializer,
    model_validator,
)

from bench.core.regression import Regression
from bench.core.util import did_you_mean

BASELINE = "baseline"  # the run name and method of the untrained base model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


# In a field's Annotated metadata: stored (and hashed) even at its default, as every record since schema 1 holds it.
KEPT = _Marker("KEPT")
# Stored in the record, but changing it changes no result (a tolerance, the hash itself): the hash leaves it out.
NOT_HASHED = _Marker("NOT_HASHED")


# In a dump's context: every field, defaults included: the fully resolved config a record stores. The hash and the
# run's config.json take the form without defaults.
RESOLVED = "resolved"


def _marked(field: Any, marker: _Marker) -> bool:
    return any(m is marker for m in field.metadata)


class Versioned(Strict):
    """A part of a run's config: its JSON form leaves out each field at its default unless the field is KEPT (or
    the dump's context asks for RESOLVED)."""

    # Fields at None that only some settings take (a backend's options): left out even when RESOLVED, since
    # giving them refuses the config.
    none_not_taken: ClassVar[bool] = False

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler, info: SerializationInfo):
        if info.context and info.context.get(RESOLVED):
            return {k: v for k, v in handler(self).items() if v is not None or not self.none_not_taken}
        fields = type(self).model_fields
        return {k: v for k, v in handler(self).items() if k not in fields or _marked(fields[k], KEPT)
                or getattr(self, k) != fields[k].get_default(call_default_factory=True)}



class ModelSpec(Versioned):
    """Where the base model comes from: exactly one of hub, path, gguf, preset or config."""

    hub: str | None = Field(None, description="a Hugging Face Hub model id (needs the Hub at run time), e.g. "
                            "TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    revision: str | None = Field(None, description="with hub: the branch, tag or commit to load (recorded in the "
                                 "model's provenance)")
    path: str | None = Field(None, description="a local model folder (save_pretrained's layout), relative to the "
                             "suite file")
    gguf: str | None = Field(None, description="a GGUF file, relative to the suite file or, with package, inside that "
                             "installed package; de-quantised to float32 once and cached")
    package: str | None = Field(None, description="installed Python distribution that holds the gguf file")
    preset: str | None = Field(None, description="a named architecture with random (seeded) weights, for plumbing and "
                               "sizing without downloads: tiny-llama, tinyllama-1.1b, smollm2-135m, "
                               "llama-3.2-3b-mini, llama-3.2-3b, llama-3-8b")
    config: dict[str, Any] | None = Field(None, description="a transformers config as a mapping (model_type defaults "
                                          "to llama), built with random (seeded) weights")
    tokenizer: str | None = Field(None, description="tokenizer folder or Hub id; presets default to a byte tokenizer")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("hub", "path", "gguf", "preset", "config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of hub, path, gguf, preset, config (got {given or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision only applies to a hub model")
        if self.package is not None and self.gguf is None:
            raise ValueError("package only applies to a gguf model")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("hub", "path", "gguf", "preset", "config") if getattr(self, k) is not None)


Role = Literal["user", "assistant", "system"]


class Messages(Versioned):
    """A conversations column whose messages use other key names or roles than {role, content} and
    user/assistant/system, as ShareGPT's {from, value} with human/gpt."""

    column: str = Field(description="the column that holds each row's list of messages")
    role: Annotated[str, KEPT] = Field("role", description="the key of a message's role")
    content: Annotated[str, KEPT] = Field("content", description="the key of a message's text")
    roles: Annotated[dict[str, Role], KEPT] = Field({}, description="each role name in the data to user, "
                                                    "assistant or system; empty: the data already says user, "
                                                    "assistant and system")


class Source(Versioned):
    """Another file or Hub dataset for the eval or validation rows, with its own column mapping where its columns
    differ (GSM8K's question/answer beside MetaMathQA's query/response); unset mappings are the dataset's."""

    path: str | None = Field(None, description="a local JSON, JSONL or CSV file, relative to the suite file")
    hub: str | None = Field(None, description="a Hub dataset id")
    subset: str | None = Field(None, description="Hub dataset configuration name")
    split: Annotated[str, KEPT] = Field("train", description="the split to read")
    prompt: str | None = Field(None, description="a column, or a template over columns; unset: the dataset's own "
                               "mapping")
    response: str | None = Field(None, description="a column, or a template over columns; unset: the dataset's own "
                                 "mapping")
    messages: str | Messages | None = Field(None, description="a column of conversations, or a mapping naming other "
                                            "keys and roles; unset: the dataset's own")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path or hub")
        return self


class DatasetSpec(Versioned):
    """Instruction data: local JSON/JSONL/CSV or a Hub dataset, mapped to prompt/response (a column, or a template
    over columns) or chat messages."""

    path: str | None = Field(None, description="a local JSON, JSONL or CSV file of training rows, relative to the "
                             "suite file")
    hub: str | None = Field(None, description="a Hub dataset id (needs the Hub at run time)")
    subset: str | None = Field(None, description="Hub dataset configuration name")
    split: Annotated[str, KEPT] = Field("train", description="the split training rows come from (a local file has "
                                        "one: train)")
    eval_path: str | None = Field(None, description="eval rows from another local file with the same columns, instead "
                                  "of a held-out share")
    eval_split: str | None = Field(None, description="eval rows from another split of the same Hub dataset, instead "
                                   "of a held-out share")
    eval_data: Source | None = Field(None, description="eval rows from another file or Hub dataset")
    validation_data: Source | None = Field(None, description="validation rows from another file or Hub dataset: "
                                           "validation_size of them, picked as PEFT's benchmark picks its 50")
    eval_size: Annotated[PositiveFloat, KEPT] = Field(0.1, description="held-out share (< 1) or count (>= 1) when no eval split is named")
    prompt: Annotated[str, KEPT] = Field("prompt", description="a column, or a template over columns: '{instruction}\\n\\n{input}'")
    response: Annotated[str, KEPT] = Field("response", description="a column, or a template over columns")
    messages: str | Messages | None = Field(None, description="a column of conversations: {role, content} "
                                            "messages, or a mapping naming other keys and roles")
    system: str | None = Field(None, description="a system message put before every prompt")
    max_examples: PositiveInt | None = Field(None, description="use at most this many training rows (after the "
                                             "held-out split)")
    max_chars: PositiveInt | None = Field(None, description="keep rows whose prompt and response, joined by a "
                                          "space, have at most this many characters (PEFT's MetaMathQA: 1300)")
    train_on: Literal["last", "assistant", "all"] = Field(
        "last", description="the tokens that carry labels: the last assistant turn, every assistant turn, or the "
        "whole text")
    chat_template: bool | None = Field(None, description="format with the tokenizer's chat template; false: plain "
                                       "text with prompt_format; unset: the template where the tokenizer has one")
    prompt_format: str | None = Field(None, description="text around each prompt, '{prompt}' standing for it: "
                                      "'Question: {prompt} Think step by step.\\nAnswer:'; needed without a "
                                      "chat template")
    validation_size: PositiveFloat | None = Field(
        None, description="share (< 1) or count (>= 1) of the train rows held out to pick sweep values; 0.1 when a "
        "run has a sweep")
    seed: Annotated[int, KEPT] = Field(0, description="seed of the shuffle that splits train from held-out rows; "
                                       "training.seed does not move it")
    on_bad_row: Annotated[Literal["error", "skip"], KEPT] = Field(
        "error", description="a row that cannot be used (bad JSON, missing column, empty text): error stops the run "
        "naming it; skip leaves it out and counts it in the record")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path or hub")
        evals = [k for k in ("eval_path", "eval_split", "eval_data") if getattr(self, k) is not None]
        if len(evals) > 1:
            raise ValueError(f"give at most one of eval_path, eval_split or eval_data (got {', '.join(evals)})")
        if self.chat_template is True and self.prompt_format is not None:
            raise ValueError("prompt_format is the plain format used without a chat template; with chat_template: "
                             "true, wrap the prompt with a template over columns instead (prompt: 'Question: "
                             "{question}')")
        if self.chat_template is False and self.prompt_format is None:
            raise ValueError("chat_template: false formats plain text with prompt_format; give one, e.g. "
                             "prompt_format: \"Question: {prompt}\\nAnswer:\"")
        if self.prompt_format is not None and "{prompt}" not in self.prompt_format:
            raise ValueError(f"prompt_format must contain '{{prompt}}' (where the prompt goes), got "
                             f"{self.prompt_format!r}")
        return self

    @property
    def message_map(self) -> Messages | None:
        return Messages(column=self.messages) if isinstance(self.messages, str) else self.messages


class Budget(Versioned):
    """The one budget that binds every method alike."""

    max_steps: PositiveInt | None = Field(None, description="optimiser steps per run")
    max_tokens: PositiveInt | None = Field(None, description="real (non-padding) training tokens per run; the step "
                                           "that reaches it is the last")
    max_seconds: PositiveFloat | None = Field(None, description="training seconds per run (train_seconds: checkpoints "
                                              "and progress writes not counted)")

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("max_steps", "max_tokens", "max_seconds") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of max_steps, max_tokens, max_seconds (got {given or 'none'})")
        return self


Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Attention = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]


class Distributed(Versioned):
    """One run across several processes, started by `accelerate launch`: DDP without a config file; with one,
    whatever it sets up (FSDP, several machines)."""

    num_processes: PositiveInt = Field(description="processes in all, across machines (accelerate's num_processes)")
    config: Annotated[str | None, KEPT] = Field(None, description="accelerate config file (`accelerate config` writes one), relative "
                               "to the suite file")


class Optimizer(Versioned):
    """The optimiser: a torch.optim class by name, or one of PEFT's (lora+, lora-fa, riemannian); lr and weight_decay
    are the training fields."""

    name: str = Field(description="a torch.optim class (AdamW, SGD, Adafactor, ...) or lora+, lora-fa, riemannian")
    kwargs: Annotated[dict[str, Any], KEPT] = Field({}, description="its other arguments (betas, momentum; loraplus_lr_ratio; "
                                   "optimizer_cls: the torch.optim class PEFT's optimisers wrap)")


Backend = Literal["bitsandbytes", "torchao", "hqq"]
# Which bit widths each backend quantises to (HQQ: 1 to 8; torchao: int8 and int4 weight-only).
BACKEND_BITS = {"bitsandbytes": (4, 8), "torchao": (4, 8), "hqq": (1, 2, 3, 4, 8)}
# The settings each backend takes, with its default where the suite leaves one unset (bench.run.quantization loads them).
BACKEND_SETTINGS: dict[tuple[str, int | None], dict[str, Any]] = {
    ("bitsandbytes", 4): {"quant_type": "nf4", "double_quant": False, "compute_dtype": "auto", "quant_storage": "uint8",
                          "skip_modules": []},
    ("bitsandbytes", 8): {"skip_modules": []},
    ("torchao", 8): {"skip_modules": []},
    ("torchao", 4): {"group_size": 128, "skip_modules": []},
    ("hqq", None): {"group_size": 64, "compute_dtype": "auto", "skip_modules": []},
}


class Quantization(Versioned):
    """The base model's quantisation (loaded by bench.run.quantization): bitsandbytes 8- or 4-bit, torchao weight-only or
    HQQ. Every setting the backend takes is written out in the resolved config, its default where unset."""

    none_not_taken: ClassVar[bool] = True

    backend: Annotated[Backend, KEPT] = Field("bitsandbytes", description="the library that quantises the base: "
                                              "bitsandbytes, torchao (weight-only) or hqq")
    bits: int = Field(description="bitsandbytes: 4 or 8; torchao: 8 (int8 weight-only) or 4; hqq: 1, 2, 3, 4 or 8")
    quant_type: Literal["nf4", "fp4"] | None = Field(None, description="bitsandbytes 4-bit data type")
    double_quant: bool | None = Field(None, description="bitsandbytes 4-bit: quantise the quantisation constants too")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] | None = Field(
        None, description="dtype the de-quantised weights compute in (bitsandbytes 4-bit, hqq); auto: the run's")
    quant_storage: Literal["uint8", "fp32", "bf16", "fp16"] | None = Field(
        None, description="bitsandbytes 4-bit: the dtype packed weights are stored as (FSDP shards a float one)")
    group_size: PositiveInt | None = Field(None, description="torchao int4 and hqq: weights sharing one scale")
    skip_modules: list[str] | None = Field(None, description="modules left unquantised beside the output head")

    @model_validator(mode="before")
    @classmethod
    def _backend_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not isinstance(value.get("bits"), int):
            return value
        backend = value.get("backend", "bitsandbytes")
        key = (backend, value["bits"]) if (backend, value["bits"]) in BACKEND_SETTINGS else (backend, None)
        if value["bits"] not in BACKEND_BITS.get(backend, (value["bits"],)):
            raise ValueError(f"{backend} quantises to {' or '.join(map(str, BACKEND_BITS[backend]))} bits, not "
                             f"{value['bits']}")
        takes = BACKEND_SETTINGS.get(key, {})
        extra = [k for k in value if k not in ("backend", "bits", *takes)]
        if extra:
            raise ValueError(f"{backend} {value['bits']}-bit takes {', '.join(takes)} - not {', '.join(extra)}")
        return {"backend": backend} | takes | value


class Training(Versioned):
    learning_rate: Annotated[PositiveFloat, KEPT] = Field(2e-4, description="peak learning rate of the schedule; "
                                                          "prompt learning and IA3 need far larger ones than full "
                                                          "fine-tuning (see sweeps)")
    batch_size: Annotated[PositiveInt, KEPT] = Field(4, description="examples per micro-batch")
    grad_accum: Annotated[PositiveInt, KEPT] = Field(1, description="micro-batches per optimiser step; the loss is "
                                                     "averaged over every response token of the step")
    max_seq_len: Annotated[PositiveInt, KEPT] = Field(512, description="tokens per example at most; longer examples "
                                                      "are truncated and counted in the record")
    epochs: Annotated[PositiveFloat, KEPT] = Field(1000.0, description="upper bound on passes over the data; the budget usually binds first")
    seed: Annotated[int, KEPT] = Field(0, description="seed of the adapter's initialisation, random weights and batch "
                                       "order")
    scheduler: Annotated[Scheduler, KEPT] = Field("linear", description="learning-rate schedule over the run's "
                                                  "planned steps")
    warmup_ratio: Annotated[NonNegativeFloat, KEPT] = Field(0.0, description="share of the planned steps spent "
                                                            "warming the learning rate up from 0")
    weight_decay: Annotated[NonNegativeFloat, KEPT] = Field(0.0, description="AdamW's weight decay")
    max_grad_norm: Annotated[PositiveFloat | None, KEPT] = Field(1.0, description="clip the gradient's global norm to "
                                                                 "this; null: no clipping")
    precision: Annotated[Precision, KEPT] = Field("auto", description="what the forward pass computes in: auto is "
                                                  "bf16 on a GPU that computes it natively, else fp32; trainable "
                                                  "weights stay fp32 either way; fp16 needs CUDA")
    packing: Annotated[bool, KEPT] = Field(True, description="pack examples padding-free where the method allows it")
    gradient_checkpointing: Annotated[bool, KEPT] = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, about a third more compute")
    save_every: Annotated[Literal["epoch"] | PositiveInt | None, KEPT] = Field(None, description="checkpoint each epoch or every N steps")
    timeout_s: Annotated[PositiveFloat, KEPT] = Field(3600.0, description="wall-clock limit of one run's process")
    save_weights: bool = Field(True, description="false: keep no trained weights (no adapter or model folder, no "
                               "size on disk, no merge check): a cost-only run where writing a whole model is time "
                               "nobody reads (bench perf's full fine-tuning)")
    distributed: Distributed | None = Field(None, description="train across several processes through accelerate")
    attn_implementation: Attention | None = Field(
        None, description="attention kernel; unset, for packed runs on CUDA: flash_attention_2 where flash-attn is "
        "installed, else flex_attention with a document mask where the model has it (both keep packed examples "
        "apart without a dense mask); sdpa otherwise")
    optimizer: Optimizer | None = Field(None, description="unset: torch.optim.AdamW")
    loss_chunk_bytes: PositiveInt | Literal["off"] | None = Field(
        None, description="fp32 logits the output head makes at a time in the training and eval losses, over "
        "response positions only (unset: 1 GiB; bench/run/loss.py); off: the model's own loss over every position")
    quantization: Quantization | None = Field(None, description="quantise the frozen base: bitsandbytes, torchao "
                                              "or hqq (unset: as loaded; qlora is LoRA over bitsandbytes NF4 with "
                                              "double quantisation)")
    master_weights: bool | None = Field(None, description="false: pure bf16, the weights that train, their "
                                        "gradients and optimiser states in bf16 (needs precision bf16 on a device "
                                        "with native bf16); unset: fp32 master weights under bf16 autocast")


def overrides_of(model: type[Strict], name: str) -> type[Strict]:
    """The same fields, each optional with no default: a run's overrides of the suite's settings, where whatever a
    run leaves unset falls back to the suite's."""
    fields: dict[str, Any] = {}
    for key, f in model.model_fields.items():
        annotation = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[key] = (Optional[annotation], Field(None, description=f.description))
    return create_model(name, __base__=Strict, __doc__=f"Per-run overrides of {model.__name__}.", **fields)


TrainingOverrides = overrides_of(Training, "TrainingOverrides")


class ResolvedDistributed(Distributed):
    # The accelerate config file's content is part of the run: editing it reruns the run.
    config_sha256: str | None = None


class ResolvedTraining(Training):
    """A run's training settings once resolved: the accelerate config file's path is absolute and its hash known."""

    distributed: ResolvedDistributed | None = None


class LmEval(Versioned):
    """General benchmarks through lm-evaluation-harness (the `lm-eval` extra) on the model as trained, adapter on."""

    tasks: list[str] = Field(min_length=1, description="task names, lm-eval's own or from include_path")
    include_path: str | None = Field(None, description="a folder of task YAMLs (offline: dataset_path: json, data "
                                     "files relative to this folder), relative to the suite file")
    num_fewshot: int | None = Field(None, description="few-shot examples per prompt; unset: each task's own default")
    limit: PositiveInt | None = Field(None, description="at most this many documents per task")
    batch_size: Annotated[PositiveInt, KEPT] = Field(8, description="lm-eval's batch size")


class Eval(Versioned):
    enabled: Annotated[bool, KEPT] = Field(True, description="false: train and measure cost only (no scores, no merge check)")
    forgetting: Annotated[bool | str, KEPT] = Field(True, description="loss on general text before and after training: true uses "
                                   "the bundled corpus, a path a text file of paragraphs, false skips it")
    max_examples: Annotated[PositiveInt, KEPT] = Field(50, description="eval examples at most (scores and intervals "
                                                       "are over these)")
    batch_size: Annotated[PositiveInt, KEPT] = Field(16, description="batch size of eval loss, generation and the "
                                                     "forgetting measurement")
    max_new_tokens: Annotated[PositiveInt, KEPT] = Field(32, description="tokens generated per eval prompt at most "
                                                         "(greedy)")
    metrics: Annotated[list[str], KEPT] = Field(["exact_match", "token_f1", "rouge_l"],
                                                description="scores to compute on each answer: exact_match, "
                                                "token_f1, rouge_l, numeric_match, numeric_match_peft (PEFT's own "
                                                "rule), or hub:NAME (evaluate.load, online)")
    extract: Annotated[str | None, KEPT] = Field(None, description="regex whose first group is the answer to score, or a preset: "
                                "last_number, answer_delimiters")
    keep_predictions: Annotated[PositiveInt, KEPT] = Field(50, description="how many (prompt, reference, prediction) to store")
    lm_eval: LmEval | None = Field(None, description="lm-evaluation-harness tasks run on the trained model")


TRACKERS = ("tensorboard", "mlflow", "wandb")


class TensorBoardOptions(Strict):
    logdir: str | None = Field(None, description="folder of the event files, one subfolder per run; default "
                               "RESULTS/tensorboard")


class MlflowOptions(Strict):
    tracking_uri: str | None = Field(
        None, description="the MLflow server or store; default MLFLOW_TRACKING_URI, else a SQLite store "
        "RESULTS/mlflow.db with artifacts in RESULTS/mlartifacts")
    experiment: str | None = Field(None, description="default: the suite's name")


class WandbOptions(Strict):
    project: str = Field("peft-bench", description="the W&B project")
    entity: str | None = Field(None, description="the W&B team or user; unset: your default entity")
    mode: Literal["online", "offline"] | None = Field(
        None, description="default: WANDB_MODE, else online when logged in (wandb login), offline otherwise")


class Tracking(Strict):
    """Trackers that mirror every run (bench.launch.tracking): a list of names, or each name with its options."""

    tensorboard: TensorBoardOptions | None = Field(None, description="TensorBoard on, with these options")
    mlflow: MlflowOptions | None = Field(None, description="MLflow on, with these options")
    wandb: WandbOptions | None = Field(None, description="Weights & Biases on, with these options")
    artifacts: bool = Field(True, description="log each run's adapter (full fine-tuning: its whole checkpoint) and "
                            "the suite's report where the tracker keeps files")

    @model_validator(mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list):
            unknown = [n for n in value if n not in TRACKERS]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}{did_you_mean(str(unknown[0]), TRACKERS)}; known: "
                                 f"{', '.join(TRACKERS)}")
            return {name: {} for name in value}
        if isinstance(value, dict):  # `mlflow:` or `mlflow: true` turns it on with its defaults, false off
            return {k: ({} if v is None or v is True else None if v is False else v) for k, v in value.items()}
        return value

    @property
    def names(self) -> list[str]:
        return [name for name in TRACKERS if getattr(self, name) is not None]

    def adding(self, names: list[str] | tuple[str, ...]) -> Tracking:
        """These trackers on too (`bench run --track`), with their defaults where the suite does not set them."""
        return self.model_copy(update={n: getattr(self, n) or _OPTIONS[n]() for n in names})


_OPTIONS = {"tensorboard": TensorBoardOptions, "mlflow": MlflowOptions, "wandb": WandbOptions}


class RunConfig(Versioned):
    """One run, fully resolved: what the worker runs and what its record stores. Paths are absolute; the method's
    defaults are merged into `params`; `config_hash` identifies what the run computes (tolerances excluded)."""

    suite: str
    suite_version: int | str
    run: str
    group: str | None = None  # the suite entry of a seed or sweep point
    seed: int | None = None  # with the suite's `seeds`
    sweep: dict[str, Any] | None = None  # the values this sweep point sets
    method: str
    method_version: Annotated[int, KEPT] = 0
    params: Annotated[dict[str, Any], KEPT] = {}
    model: ModelSpec
    dataset: DatasetSpec
    budget: Budget
    training: ResolvedTraining
    eval: Eval
    regression: Annotated[Regression, KEPT, NOT_HASHED] = Regression()
    config_hash: Annotated[str, KEPT, NOT_HASHED] = ""

    @property
    def trains(self) -> bool:
        return self.method != BASELINE

    @property
    def distributed(self) -> bool:
        """Whether the run goes through `accelerate launch`; the baseline trains nothing and runs in one process."""
        return self.training.distributed is not None and self.trains

    def hashed(self) -> RunConfig:
        """This config with its config_hash set."""
        return self.model_copy(update={"config_hash": config_hash(self)})


def config_hash(config: RunConfig) -> str:
    """What the run computes, as its JSON form says it: changing a regression tolerance must not rerun anything."""
    fields = type(config).model_fields
    body = {k: v for k, v in config.model_dump(mode="json").items() if not _marked(fields[k], NOT_HASHED)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

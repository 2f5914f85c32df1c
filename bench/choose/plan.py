"""`python -m bench plan SUITE [--json]`: what every run of a suite trains and stores, before any weight is downloaded
or any step is run: trainable and total parameters of the model as the run builds it (from its config, on the meta
device), the adapter's size on disk, the base weights' size at the run's precision and at 4-bit NF4, and the predicted
training-phase peak on a GPU with its parts (bench.choose.memplan), whether it fits a card (--gpu-memory) and an estimate of
the time the budget takes there."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.core.config import BASELINE, RunConfig
from bench.core.console import EXIT_OK, EXIT_USAGE, console, err

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
SHIPPED = Path(__file__).parent / "archs"  # config.json of the models the shipped suites name, by Hub id


@dataclass
class Sizing:
    """What `bench plan` says of one run before it runs: its parameters, weights' bytes, predicted memory and time."""

    run: str
    method: str
    trainable_params: int | None
    total_params: int | None
    adapter_bytes: int | None
    base_bytes: int | None  # the frozen base at the run's precision
    base_bytes_4bit: int | None  # linear layers of the decoder in NF4 (0.5 byte + bitsandbytes' scales), rest 16-bit
    precision: str
    weights: str  # meta: counted without weights; random: a tuner that needs weights got random ones (at depth 1 and 2,
    # full width, extended to the model's depth, where the model is too big to build whole here)
    note: str = ""
    memory: dict[str, Any] | None = None  # bench.choose.memplan.Prediction: the GPU training peak and its parts, in bytes
    fits: bool | None = None  # on --gpu-memory's card
    largest_batch: int | None = None  # the largest batch size that fits it
    time: dict[str, Any] | None = None  # an estimate: tokens/s and seconds for the budget on a named card


def architecture(cfg: RunConfig) -> dict[str, Any]:
    """The model's config as a dict with its model_type: a preset, the suite's config, a folder's config.json, or
    the Hub's (a config file only, never weights)."""
    from bench.run.presets import PRESETS

    m = cfg.model
    if m.preset is not None:
        return dict(PRESETS[m.preset])
    if m.config is not None:
        return dict(m.config)
    if m.path is not None:
        return json.loads((Path(m.path) / "config.json").read_text())
    if m.hub is not None:
        shipped = SHIPPED / f"{m.hub.replace('/', '--')}.json"
        if shipped.is_file():  # the shipped suites' models: planned offline with their real shapes
            return json.loads(shipped.read_text())
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(m.hub, revision=m.revision).to_dict()
    try:  # a GGUF converted by an earlier run
        return json.loads((Path(_tokenizer_folder(m)) / "config.json").read_text())
    except LookupError:
        raise ValueError("a GGUF model's architecture is known only once it is converted (bench run converts it "
                         "once); plan it from its preset or config") from None


def size_run(cfg: RunConfig, card: tuple[float, str] | None = None) -> Sizing:
    """The row of one run; `card`: the memory of the card to fit (bytes, and its name)."""
    from bench.run.tuners import NeedsWeights, apply
    from methods import METHODS, RunFacts

    precision = cfg.training.precision if cfg.training.precision != "auto" else "bf16"
    row = Sizing(cfg.run, cfg.method, None, None, None, None, None, precision, "meta")
    try:
        arch = architecture(cfg)
    except Exception as e:  # the Hub offline, a missing file: said in the row, the other runs still plan
        row.note = f"architecture unknown: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
        return row
    row.base_bytes, row.base_bytes_4bit, total = base_sizes(arch, BYTES[precision])
    if cfg.method == BASELINE:
        row.trainable_params, row.total_params, row.adapter_bytes = 0, total, 0
        return row
    spec = cfg.training.optimizer
    special = special_token_ids(cfg.model)
    if special is None:
        row.note = "the tokenizer cannot be read here: its special tokens (trainable_tokens' default rows) count as one"
    predict_memory(row, cfg, arch, card, special or (0,))
    try:
        applied = apply(arch, METHODS[cfg.method], cfg.params, RunFacts(total_steps=cfg.budget.max_steps or 1000,
                                                                        special_token_ids=special or (0,)),
                        spec and spec.name, spec.kwargs if spec else None, scaled=True)
    except NeedsWeights as e:
        row.weights, row.note = "needs weights", str(e)
        return row
    row.trainable_params, row.total_params = applied.trainable, applied.total
    row.adapter_bytes, row.weights = applied.adapter_bytes, applied.weights
    return row


def predict_memory(row: Sizing, cfg: RunConfig, arch: dict[str, Any], card: tuple[float, str] | None,
                   special: tuple[int, ...]) -> None:
    """The run's GPU training peak into the row; whether it fits `card` and the largest batch that does; the time its
    budget takes on `card` where it names a card with a known peak (an estimate)."""
    from bench.choose.memplan import predict, setting_of, time_estimate
    from methods import METHODS, RunFacts

    plan = RunFacts(total_steps=cfg.budget.max_steps or 1000, special_token_ids=special)
    setting, length_from = planned_setting(cfg)
    try:
        pred = predict(arch, METHODS[cfg.method], cfg.params, setting, plan)
    except Exception as e:  # noqa: BLE001 - what PEFT or torch raise on this build: said in the row
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        row.note = "; ".join(filter(None, [row.note, f"memory not predicted: {first[:160]}"]))
        return
    row.memory = pred.as_dict() | {"length_from": length_from}
    if card is not None:
        row.fits, row.largest_batch = pred.fits(card[0]), pred.largest_batch(card[0])
        if cfg.budget.max_steps:
            row.time = time_estimate(pred, arch, card[1], cfg.budget.max_steps * cfg.training.grad_accum)


def planned_setting(cfg: RunConfig, device: str = "cuda"):
    """How the run trains as far as memory goes (bench.choose.memplan.setting_of), its batch the longest the run's training
    data makes where the data and the tokenizer can be read here, else batch_size rows of max_seq_len; and which of
    the two it is ("data: ..." or "max_seq_len")."""
    from dataclasses import replace

    from bench.choose.memplan import setting_of
    from methods import METHODS

    setting = setting_of(cfg, device)
    tr = cfg.training
    packed = tr.packing and METHODS[cfg.method].packable
    key = json.dumps([cfg.model.model_dump_json(), cfg.dataset.model_dump_json(), cfg.eval.max_examples,
                      tr.max_seq_len, tr.batch_size, tr.seed, packed])
    longest = _longest_batch(key)
    if isinstance(longest, str):
        return setting, f"max_seq_len ({longest})"
    length, tokens = longest
    what = "packed: its tokens spread over batch_size rows" if packed else "padded to its longest row"
    return replace(setting, seq_len=length), f"data: the longest batch, {tokens} tokens ({what})"


@functools.lru_cache(maxsize=16)
def _longest_batch(key: str) -> tuple[int, int] | str:
    """The row length of the run's longest micro-batch (by tokens, in the run's batch order) and its tokens; or why
    the data cannot be read here. Padded rows are as long as the batch's longest example; a packed batch is one row
    of its examples end to end, which holds what batch_size rows of its tokens / batch_size would."""
    import math

    from bench.datasets import batches as B
    from bench.datasets import examples as D
    from bench.core.config import DatasetSpec, ModelSpec
    from bench.run.models import load_tokenizer

    model_json, dataset_json, max_eval, max_seq_len, batch_size, seed, packed = json.loads(key)
    model, spec = ModelSpec.model_validate_json(model_json), DatasetSpec.model_validate_json(dataset_json)
    hubs = [spec.hub, *(s.hub for s in (spec.eval_data, spec.validation_data) if s is not None)]
    if any(hubs) and not any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return "a Hub dataset is not downloaded to plan; with HF_DATASETS_OFFLINE=1 its cached copy is read"
    try:  # as bench.run.load.read_inputs and load read them, less the evaluation set
        tokenizer = load_tokenizer(model, _tokenizer_folder(model))
        train, _, notes = D.load_examples(spec, max_eval=max_eval)
        notes.formatting = B.use_formatting(tokenizer, spec, notes.source)
        train, _ = D.split_validation(train, spec, notes)
        features = B.tokenize(train, tokenizer, max_seq_len, spec, notes, notes.source)
    except Exception as e:  # noqa: BLE001 - the Hub offline, a GGUF, a bad row: max_seq_len stands, with why
        return f"the data cannot be read here: {(str(e).strip().splitlines() or [type(e).__name__])[0][:120]}"
    if not features:
        return "no training example"
    lengths = [len(f.input_ids) for f in features]
    batches = B.batch_order(features, batch_size, seed)
    if packed:
        tokens = max(sum(lengths[i] for i in b) for b in batches)
        return math.ceil(tokens / batch_size), tokens
    longest = max(max(lengths[i] for i in b) for b in batches)
    return longest, longest * batch_size


def _tokenizer_folder(model) -> str | None:
    """Where the run's tokenizer is read from; a GGUF's comes with its conversion, read only where that is cached."""
    if model.gguf is None:
        return model.path or model.hub
    from bench.run.models import cache_dir, gguf_file, sha256_file

    folder = cache_dir() / "gguf" / sha256_file(gguf_file(model.gguf, model.package))[:16]
    if not (folder / "config.json").is_file():
        raise LookupError("the GGUF is not converted yet (its tokenizer comes with the conversion bench run makes)")
    return str(folder)


@functools.lru_cache(maxsize=16)
def _special_token_ids(model_json: str) -> tuple[int, ...] | None:
    from bench.core.config import ModelSpec
    from bench.run.models import load_tokenizer

    model = ModelSpec.model_validate_json(model_json)
    try:  # a tokenizer is a few small files: read where the weights would not be
        tokenizer = load_tokenizer(model, model.path or model.hub)
    except Exception:  # the Hub offline, a GGUF (its tokenizer comes with the conversion)
        return None
    return tuple(sorted(tokenizer.all_special_ids))


def special_token_ids(model) -> tuple[int, ...] | None:
    """The special tokens of the run's tokenizer, as the run's facts have them (bench.run.train.facts_of); None where the
    tokenizer cannot be read here."""
    return None if model.gguf else _special_token_ids(model.model_dump_json())


def base_sizes(arch: dict[str, Any], width: int) -> tuple[int, int, int]:
    """Bytes of the base at `width` bytes per weight and in 4-bit NF4 (bitsandbytes quantises the decoder's linear
    layers: half a byte per weight plus one 8-bit scale per 64-weight block and double quantisation's few), and the
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.run.tuners import model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(arch))
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    return total * width, int(linear * (0.5 + 1 / 64)) + (total - linear) * 2, total


def cmd_plan(args) -> int:
    from bench.choose.memplan import card_bytes
    from bench.spec.suite import load_suite
    from bench.core.yamlio import SuiteError

    try:
        suite = load_suite(args.suite, trust_remote_code=args.trust_remote_code)
        card = card_bytes(args.gpu_memory) if args.gpu_memory else None
    except (SuiteError, ValueError) as e:
        err.print(e.render() if isinstance(e, SuiteError) else str(e), markup=False)
        return EXIT_USAGE
    rows = [size_run(cfg, card) for cfg in suite.resolved_runs()]
    say_unknown_architecture(args.suite, suite.model, rows)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return EXIT_OK
    console.print(plan_table(suite.name, rows, card))
    if any(r.time for r in rows):
        console.print("time: model FLOPs at an MFU of 25-45% on the card's dense bf16 peak - an estimate, not a "
                      "measurement", style="dim")
    return EXIT_OK


def fit_warnings(path: str, runs: list[RunConfig], gpu_memory: str) -> int:
    """Warn, one line a run, of each run predicted not to fit the card; EXIT_USAGE for a card not understood."""
    from bench.choose.memplan import card_bytes

    try:
        card = card_bytes(gpu_memory)
    except ValueError as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    rows = [size_run(cfg, card) for cfg in runs]
    for r in rows:
        if r.fits is False:
            err.print(f"warning: {path}: run {r.run}: predicted GPU training peak {r.memory['need'] / 2**30:.1f} "
                      f"GiB does not fit {card[1]}; the largest batch that fits: {r.largest_batch} (bench plan "
                      "shows the parts)", markup=False)
        elif r.memory is None:
            err.print(f"warning: {path}: run {r.run}: GPU training peak not predicted ({r.note})", markup=False)
    return EXIT_OK


def say_unknown_architecture(path: str, model, rows: list[Sizing]) -> None:
    """Once per suite, in one line: the model's config.json cannot be read here, and how to fix that."""
    unknown = [r for r in rows if r.note.startswith("architecture unknown")]
    if not unknown or model.hub is None:
        return
    err.print(f"{path}: model.hub '{model.hub}' has no config.json here (not in the Hugging Face cache, the Hub not "
              f"reachable), so no run is sized; fix: cache it (huggingface-cli download {model.hub} config.json) or "
              "give the architecture in the suite (model: {config: {model_type: ..., hidden_size: ...}})",
              markup=False)
    for r in unknown:
        r.note = "architecture unknown (see above)"


def plan_table(name: str, rows: list[Sizing], card: tuple[float, str] | None):
    from rich.table import Table

    from bench.core.metrics import human_bytes

    table = Table(title=f"{name}: what each run trains and stores (no weights loaded), and its GPU training peak")
    columns = ["run", "method", "trainable", "total", "trainable %", "adapter", "base", "base 4-bit", "GPU peak"]
    columns += [f"fits {card[1]}", "time (est.)"] if card else []
    for col in columns + ["note"]:
        table.add_column(col, overflow="fold")
    size = (lambda n: human_bytes(n) if n is not None else "-")
    for r in rows:
        pct = f"{100 * r.trainable_params / r.total_params:.3f}" if r.total_params else "-"
        cells = [r.run, r.method, _count(r.trainable_params), _count(r.total_params), pct, size(r.adapter_bytes),
                 f"{size(r.base_bytes)} {r.precision}", size(r.base_bytes_4bit), _peak(r.memory)]
        if card:
            fits = "-" if r.fits is None else f"{'yes' if r.fits else 'NO'} (batch <= {r.largest_batch})"
            cells += [fits, _time(r.time)]
        weights = {"meta": "", "random": "random weights"}.get(r.weights, f"weights: {r.weights}")
        table.add_row(*cells, r.note or weights)
    return table


def _peak(memory: dict[str, Any] | None) -> str:
    """The peak a card needs, and its largest parts."""
    if memory is None:
        return "-"
    gib = (lambda k: f"{memory[k] / 2**30:.1f}")
    length = "data" if memory.get("length_from", "").startswith("data") else "max_seq_len"
    return (f"{memory['need'] / 2**30:.1f} GiB at {memory['batch_size']}x{memory['seq_len']} tokens ({length}) (weights {gib('base')}+{gib('trainable')}, grads {gib('gradients')}, "
            f"optim {gib('optimizer')}, activ. {gib('activations')}, loss {gib('logits')}, alloc.+ctx "
            f"{gib('allowance')})")


def _time(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    lo, hi = t["seconds"]
    return f"{lo / 60:.0f}-{hi / 60:.0f} min ({t['tokens_per_s'][0]:,}-{t['tokens_per_s'][1]:,} tok/s)"


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "-"

"""Evaluation: held-out loss, batched greedy generation with left padding, and scores against references."""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.core.config import RunConfig
from bench.datasets.batches import IGNORE, Features, collate, prompt_text
from bench.datasets.examples import Example
from bench.run.device import Place
from bench.run.loss import DEFAULT_CHUNK_BYTES, chunked
from bench.core.metrics import VIA_GENERATE
from bench.core.records import Prediction, ScoreInterval

if TYPE_CHECKING:
    from bench.run.load import Loaded
    from methods import Method


@dataclass
class Generations:
    predictions: list[str]
    new_tokens: int  # generated tokens up to and including the end of turn, padding excluded
    seconds: float
    token_ids: list[list[int]]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# What the logits of one eval batch may take: [rows, length, vocabulary] in the compute dtype, their fp32 copy for
# the loss and its log-softmax, up to 10 bytes per entry. At Llama-3's 128k vocabulary one 2000-token row is 2.6 GB.
LOGIT_BUDGET_BYTES = 4 * 1024 ** 3
BYTES_PER_LOGIT = 10


def budget_batches(features: list[Features], batch_size: int, vocab: int,
                   budget: int = LOGIT_BUDGET_BYTES) -> list[list[Features]]:
    """Rows in order of length, in batches of at most `batch_size` rows whose logits fit `budget` (at least one row
    each): a batch pads little, and no batch's logits outgrow the budget whatever the vocabulary."""
    rows = sorted(features, key=lambda f: len(f.input_ids))
    out: list[list[Features]] = []
    for f in rows:
        if out:
            longest = len(f.input_ids)  # rows come in order of length: this one is the batch's longest
            if len(out[-1]) < batch_size and (len(out[-1]) + 1) * longest * vocab * BYTES_PER_LOGIT <= budget:
                out[-1].append(f)
                continue
        out.append([f])
    return out


@torch.no_grad()
def eval_loss(model, features: list[Features], batch_size: int, pad_id: int, device,
              budget: int = LOGIT_BUDGET_BYTES, chunk_bytes: int | None = DEFAULT_CHUNK_BYTES) -> float:
    """Mean loss per response token over the eval split (padded batches: valid for every method), in batches whose
    logits fit the budget; the mean over tokens depends neither on the order nor on the batching. The output head
    runs on response positions only, `chunk_bytes` of fp32 logits at a time (bench.run.loss); None: the model's own
    loss over every position's logits at once."""
    model.eval()
    vocab = model.config.vocab_size
    total, count = 0.0, 0
    for rows in budget_batches(features, batch_size, vocab, budget):
        batch = {k: v.to(device) for k, v in collate(rows, pad_id, packed=False).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        with chunked(model, chunk_bytes) if chunk_bytes else contextlib.nullcontext():
            out = model(**batch, num_items_in_batch=torch.tensor(n, device=device), use_cache=False)
        total += out.loss.item() * n
        count += n
        del out
    return total / max(count, 1)


def end_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], batch_size: int, max_new_tokens: int, device,
             pad_free: bool = False, cached: bool = True) -> Generations:
    """Greedy answers for each example's prompt, batched with left padding (so every row ends where it generates).

    PEFT's generate prepends virtual tokens (prompt/P-tuning) or prefix keys (prefix tuning) itself and extends
    the attention mask to cover them. `pad_free` batches only prompts of equal token length together, for methods
    whose answers would otherwise depend on the padding (see Method.left_pad_safe). `cached=False` does not use
    `generate()` (see Method.kv_cache_generate): it decodes greedily with `greedy_virtual`, a KV-cached loop around
    PEFT's own virtual-token pieces, over batches of prompts of one length (so nothing is padded).
    """
    model.eval()
    tokenizer.padding_side = "left"
    stops = end_token_ids(tokenizer)
    texts = [prompt_text(tokenizer, e.messages[:-1]) for e in examples]
    order = list(range(len(texts)))
    groups: list[list[int]] = []
    if pad_free or not cached:
        lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        for length in sorted(set(lengths)):
            same = [i for i in order if lengths[i] == length]
            groups += [same[j:j + batch_size] for j in range(0, len(same), batch_size)]
    else:
        groups = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    predictions: list[str] = [""] * len(texts)
    ids_out: list[list[int]] = [[] for _ in texts]
    new_tokens = 0
    start = time.perf_counter()
    for group in groups:
        if cached:
            enc = tokenizer([texts[i] for i in group], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops, temperature=None, top_p=None, top_k=None,
            )
            rows = out[:, enc["input_ids"].shape[1]:].tolist()
        else:
            prompts = [tokenizer(texts[i], add_special_tokens=False).input_ids for i in group]
            rows = greedy_virtual(model, prompts, max_new_tokens, stops, device)
        for i, row in zip(group, rows):
            kept = []
            for t in row:
                kept.append(t)
                if t in stops:
                    break
            new_tokens += len(kept)
            ids_out[i] = kept
            predictions[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generations(predictions, new_tokens, time.perf_counter() - start, ids_out)


GENERAL_TEXT = Path(__file__).parent / "corpus" / "general.txt"


def paragraphs(path: str | Path) -> list[str]:
    return [p.strip() for p in Path(path).read_text(encoding="utf-8").split("\n\n") if p.strip()]


@torch.no_grad()
def text_loss(model, tokenizer, texts: list[str], max_seq_len: int, batch_size: int, device) -> float:
    """Mean next-token loss per token over plain texts (no chat template): a language-modelling measure of what the
    model knows outside the task."""
    feats = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False).input_ids[:max_seq_len]
        feats.append(Features(ids, list(ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return eval_loss(model, feats, batch_size, pad, device)


@torch.no_grad()
def greedy_virtual(model, prompts: list[list[int]], max_new_tokens: int, stops: list[int], device) -> list[list[int]]:
    """Greedy decoding with a KV cache for a prompt-learning PeftModel, without `generate()` (whose cached path
    gives other answers than the model's own forward pass; see Method.kv_cache_generate). The first step is exactly
    PEFT's forward: prompt and P-tuning put the virtual-token embeddings from `get_prompt` before the prompt's,
    prefix tuning and cartridges start the base model's cache with the prefix keys and values from `get_prompt`.
    Each new token is then one cached forward of the base model, whose positions continue from there as in a full
    forward pass.
    The prompts of one call have the same length: no padding, so no row's answer depends on another's."""
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("greedy_virtual takes prompts of one length")
    base = model.get_base_model()
    # transformers 5.24 renamed the cache argument and output from past_key_values to cache.
    cache = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    ids = torch.tensor(prompts, device=device)
    virtual = model.get_prompt(batch_size=len(prompts))
    # Only the last position's logits are needed: a long prompt's [rows, length, vocabulary] never exists.
    if isinstance(virtual, torch.Tensor):  # embeddings (prompt tuning, P-tuning)
        embeds = model.word_embeddings(ids)
        out = base(inputs_embeds=torch.cat([virtual.to(embeds.dtype), embeds], dim=1), use_cache=True,
                   logits_to_keep=1)
    else:  # a KV cache (prefix tuning, cartridges)
        out = base(input_ids=ids, **{cache: virtual}, use_cache=True, logits_to_keep=1)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1].argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                new[row].append(token)
                done[row] = token in stops
        if all(done) or step == max_new_tokens - 1:
            break
        out = base(input_ids=tokens[:, None], **{cache: out[cache]}, use_cache=True)
    return new


@torch.no_grad()
def prompt_logits(model, tokenizer, examples: list[Example], device, limit: int = 8,
                  positions: int = 16) -> list[torch.Tensor]:
    """Next-token logits at the last `positions` positions of each prompt (unpadded, one at a time), in fp32 on the
    CPU, for comparing a merged model to its adapter: bounded at limit x positions x vocabulary whatever the
    prompts' length."""
    model.eval()
    out = []
    for e in examples[:limit]:
        ids = tokenizer(prompt_text(tokenizer, e.messages[:-1]), return_tensors="pt", add_special_tokens=False)
        logits = model(input_ids=ids["input_ids"].to(device), logits_to_keep=positions).logits
        out.append(logits[0].float().cpu())
    return out


def logit_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    diffs = torch.cat([(x - y).abs().flatten() for x, y in zip(a, b)])
    return {"max_abs": float(diffs.max()), "mean_abs": float(diffs.mean())}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def scores(gens: Generations, examples: list[Example], metric_names: list[str],
           pattern: str | None) -> tuple[dict[str, float], dict[str, ScoreInterval]]:
    """Each score's mean over the examples, and its 95% interval over them."""
    from bench.core.scoring import interval, per_example, score

    refs = [e.response for e in examples]
    means = score(metric_names, gens.predictions, refs, pattern)
    intervals = {}
    for name, values in per_example(metric_names, gens.predictions, refs, pattern).items():
        low, high, how = interval(values)
        intervals[name] = ScoreInterval(low=low, high=high, method=how, n=len(values), values=values)
    return means, intervals


# ---- the evaluate stage ------------------------------------------------------------------------------------------


@dataclass
class Evaluated:
    metrics: dict[str, float]
    intervals: dict[str, ScoreInterval]
    predictions: list[Prediction]
    generations: Generations
    decoding: str  # how the answers were decoded: the record's environment.generation




def evaluate(cfg: RunConfig, method: Method | None, model, loaded: Loaded, place: Place) -> Evaluated:
    """Held-out loss (and validation loss when rows were held out for sweeps), greedy answers and their scores.
    Methods the harness decodes with its own loop are scored through generate() too, under VIA_GENERATE names."""
    ev, examples = cfg.eval, loaded.eval_examples
    pad_free = method is not None and not method.left_pad_safe
    cached = method is None or method.kv_cache_generate
    with place.autocast():
        chunk = cfg.training.loss_chunk_bytes or DEFAULT_CHUNK_BYTES
        chunk = None if chunk == "off" else chunk
        loss = eval_loss(model, loaded.eval, ev.batch_size, loaded.pad_id, place.device, chunk_bytes=chunk)
        metrics = {"eval_loss": loss, "eval_perplexity": perplexity(loss)}
        if loaded.validation:
            metrics["validation_loss"] = eval_loss(model, loaded.validation, ev.batch_size, loaded.pad_id,
                                                   place.device, chunk_bytes=chunk)
        gens = generate(model, loaded.tokenizer, examples, ev.batch_size, ev.max_new_tokens, place.device, pad_free,
                        cached)
        outside = None if cached else generate(model, loaded.tokenizer, examples, ev.batch_size, ev.max_new_tokens,
                                               place.device, pad_free=True, cached=True)
    means, intervals = scores(gens, examples, ev.metrics, ev.extract)
    metrics |= means | {"generate_tokens_per_second": gens.tokens_per_second}
    if outside is not None:
        metrics |= {VIA_GENERATE + k: v for k, v in scores(outside, examples, ev.metrics, ev.extract)[0].items()}
    predictions = [Prediction(prompt=e.prompt, reference=e.response, prediction=p,
                              generate_prediction=outside.predictions[i] if outside else None)
                   for i, (e, p) in enumerate(zip(examples[:ev.keep_predictions], gens.predictions))]
    decoding = "generate() with KV cache" if cached else "greedy_virtual with KV cache"
    return Evaluated(metrics, intervals, predictions, gens, decoding)


def general_texts(cfg: RunConfig) -> list[str] | None:
    """The general-text corpus forgetting is measured on, or None when the suite does not measure it."""
    ev = cfg.eval
    if not (ev.enabled and ev.forgetting):
        return None
    return paragraphs(GENERAL_TEXT if ev.forgetting is True else ev.forgetting)


def general_loss(cfg: RunConfig, model, loaded: Loaded, texts: list[str], place: Place, base: bool = False) -> float:
    """Loss per token on the general texts; `base`: of the base model alone, adapters and virtual tokens off (for
    QLoRA its 4-bit base)."""
    from peft import PeftModel

    off = model.disable_adapter() if base and isinstance(model, PeftModel) else contextlib.nullcontext()
    with off, place.autocast():
        return text_loss(model, loaded.tokenizer, texts, cfg.training.max_seq_len, cfg.eval.batch_size, place.device)

"""Generation scores only mean something if they are the trained model's own answers: for every method, the harness's
batched generation must equal greedy decoding by a full forward pass, one prompt at a time, with no cache."""

from __future__ import annotations

import pytest
import torch

from bench.datasets import batches as D
from bench.core.config import Budget
from bench.run.evaluation import end_token_ids, generate
from bench.run.load import build
from bench.run.models import byte_tokenizer
from bench.core.records import DataNotes
from bench.run.train import train
from methods import METHODS, SHIPPED
from tests.conftest import CPU32, tiny_config, training

pytestmark = pytest.mark.train  # every test here trains or generates with a tiny model (tests/conftest.py: the tiers)

CPU = torch.device("cpu")


@torch.no_grad()
def reference_greedy(model, tokenizer, example, max_new_tokens: int) -> list[int]:
    stops = end_token_ids(tokenizer)
    ids = tokenizer(D.prompt_text(tokenizer, example.messages[:-1]), return_tensors="pt",
                    add_special_tokens=False).input_ids
    new = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        new.append(nxt)
        if nxt in stops:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


@pytest.mark.parametrize("method_id", list(SHIPPED))
def test_harness_generation_is_the_models_own_greedy_answer(method_id, smoke_examples):
    method = METHODS[method_id]
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    model = build(cfg, None, CPU32, method)
    train_ex, eval_ex = smoke_examples
    feats = D.tokenize(train_ex, tokenizer, cfg.training.max_seq_len, cfg.dataset, DataNotes(source="test"), "train")
    batches = D.batches(feats, 4, 0, tokenizer.pad_token_id, method.packable, 1000.0)
    # Trained hard enough that virtual tokens, prefixes and adapters move the answers away from the base model's.
    train(model, batches, training(cfg, learning_rate=3e-2), Budget(max_steps=4), 4, CPU32)
    model.eval()
    examples = sorted(eval_ex, key=lambda e: len(e.prompt))[:: max(1, len(eval_ex) // 4)][:4]
    got = generate(model, tokenizer, examples, batch_size=4, max_new_tokens=8, device=CPU,
                   pad_free=not method.left_pad_safe, cached=method.kv_cache_generate)
    assert got.token_ids == [reference_greedy(model, tokenizer, e, 8) for e in examples]


@pytest.mark.parametrize("method_id", [m for m in SHIPPED if not SHIPPED[m].kv_cache_generate])
def test_cached_virtual_token_decoding_batches_prompts_of_one_length(method_id, smoke_examples):
    """greedy_virtual decodes several prompts of one length together, with one KV cache: each row's answer must
    still be the one-prompt-at-a-time uncached answer."""
    from dataclasses import replace

    method = METHODS[method_id]
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = build(cfg, None, CPU32, method)
    train_ex, eval_ex = smoke_examples
    # A learning rate at which the tiny random model's answers depend on the prompt for all three methods (at 1e-2
    # and 3e-2 some give every prompt the same answer), so a row mixed up with another would show.
    lr = 1e-1
    feats = D.tokenize(train_ex, tokenizer, cfg.training.max_seq_len, cfg.dataset, DataNotes(source="test"), "train")
    train(model, D.batches(feats, 4, 0, tokenizer.pad_token_id, False, 1000.0),
          training(cfg, learning_rate=lr), Budget(max_steps=4), 4, CPU32)
    model.eval()
    # Different prompts cut to one length (the byte tokenizer gives one token per character): one batch, no padding.
    n = min(len(e.prompt) for e in eval_ex)
    examples = [replace(e, messages=e.messages[:-2] + [{"role": "user", "content": e.prompt[:n]}, e.messages[-1]])
                for e in eval_ex]
    got = generate(model, tokenizer, examples, batch_size=len(examples), max_new_tokens=8, device=CPU,
                   pad_free=not method.left_pad_safe, cached=False)
    want = [reference_greedy(model, tokenizer, x, 8) for x in examples]
    assert got.token_ids == want
    assert len({tuple(w) for w in want}) > 1 or len(want[0]) < 8  # the rows are not all trivially alike


@pytest.mark.parametrize("method_id", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_generate_on_the_pinned_transformers_decodes_prompt_learning_as_its_forward_pass_does(method_id):
    """The guard on constraints.txt's transformers pin: transformers 5.24.0 passes generate()'s cache as `cache`
    while PEFT 0.21.2 looks for `past_key_values`, and its logits drift from the model's own forward pass from the
    second new token on (prefix tuning from the first); 5.0 to 5.23.0 agree to float rounding. Fails on a pin
    where outside clients (lm-eval, a generate() call) would not reproduce the harness's scores."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {"prompt_tuning": PromptTuningConfig, "p_tuning": PromptEncoderConfig,
              "prefix_tuning": PrefixTuningConfig}[method_id](task_type="CAUSAL_LM", num_virtual_tokens=8)
    base = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(base).eval(), config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)  # away from the initial prompt, as after training
        ids = torch.randint(3, 200, (2, 12))
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        for step, scores in enumerate(out.scores):
            seq = out.sequences[:, : ids.shape[1] + step]
            own = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
            assert torch.allclose(scores, own, atol=1e-5), f"step {step}: max diff {(scores - own).abs().max():.2e}"

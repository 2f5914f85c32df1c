"""Model presets: architectures by name, built with random weights (a name list the schema reads without torch)."""

from __future__ import annotations

from typing import Any

# Architectures with random weights: for tests, and for memory/throughput planning without downloading weights.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, vocab_size=320, tie_word_embeddings=False,
    ),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0's exact shape.
    "tinyllama-1.1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False,
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct's shape.
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, vocab_size=49152, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True,
    ),
    # Llama-3.2-3B's depth (28 layers) and 128-wide heads on 256-wide layers: PEFT's method_comparison experiment
    # configs, written for Llama-3.2-3B (adapters in all 28 layers, ranks, blocks and vectors of up to 256), apply
    # to it unchanged; 18.5M parameters train a few steps on a CPU in seconds.
    "llama-3.2-3b-mini": dict(
        model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=2, head_dim=128, max_position_embeddings=1024, vocab_size=320, tie_word_embeddings=False,
    ),
    # meta-llama/Llama-3.2-3B's shape (PEFT's method_comparison benchmark model), for `bench plan`.
    "llama-3.2-3b": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, vocab_size=128256, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=True,
    ),
    # meta-llama/Meta-Llama-3-8B's shape, for `bench plan`.
    "llama-3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, vocab_size=128256, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False,
    ),
}

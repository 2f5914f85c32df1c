#!/usr/bin/env bash
# GPU throughput and memory check: every method for 30 steps on TinyLlama-1.1B's architecture with random
# weights, sequences of 2048 tokens, bf16; prints tokens/s, MFU and peak memory per method and the goals.
# Needs no network. Usage: bash scripts/gpu_check.sh [--dry-run] [--only RUN...] [--output DIR]
# (--dry-run: the same suite on the CPU with the tiny preset, three steps: checks everything but the device).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
exec python3 -m bench perf "$@"

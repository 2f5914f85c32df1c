#!/usr/bin/env bash
# The GPU check, one prepared script for a machine the harness has not run on (no network needed):
# `bench perf` (every method for 20 steps on TinyLlama-1.1B's shape, random weights, seq 2048, bf16: tokens/s, MFU,
# memory; LoRA and QLoRA again with evaluation and the merge check, their memory by phase), then `bench gpu-check`
# (fp32 master weights, QLoRA vs LoRA memory, a bf16 merge, packed attention, a 128k-vocabulary eval), one line each.
# Usage: bash scripts/gpu_check.sh [--dry-run] [--output DIR]   (--dry-run: the same on the CPU with tiny shapes)
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m bench perf "$@"
perf=$?
dry=()
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=(--dry-run); done
python3 -m bench gpu-check "${dry[@]}"
check=$?
exit $(( perf > check ? perf : check ))

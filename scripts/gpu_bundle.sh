#!/usr/bin/env bash
# The offline bundle for scripts/gpu_check.sh: the wheels a GPU image lacks, for a node with no network.
# Run on any machine that reaches PyPI: bash scripts/gpu_bundle.sh [DIR]   (DIR: default .gpu-bundle, git-ignored)
#
# The image it targets has Python 3.12, a CUDA 13 torch (2.11 up to the pinned 2.13), accelerate, pandas, scipy,
# rich, jinja2, matplotlib and an older transformers and peft; it lacks pydantic, ruamel.yaml and bitsandbytes.
# The bundle holds those, the pinned transformers and peft, and what the pinned transformers needs newer than
# such an image may have (huggingface_hub and its HTTP stack, tokenizers, safetensors, regex). datasets, evaluate,
# trl and gguf are not needed: the check reads local JSONL and builds random-weight models.
# bitsandbytes is repacked with the one CUDA library its loader (bitsandbytes/cextension.py,
# get_cuda_bnb_library_path) picks on CUDA 13: an exact match for 13.0, else the highest packaged 13.x at or below
# the runtime's, so libbitsandbytes_cuda130.so serves every CUDA 13 runtime (BNB_CUDA=132 keeps another one).
# Every version is the pin in constraints.txt. At most 40 MiB in all; the size is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu-bundle}
python_version=${BUNDLE_PYTHON_VERSION:-3.12}
bnb_cuda=${BNB_CUDA:-130}
limit=$((40 * 1024 * 1024))
packages=(transformers peft tokenizers huggingface_hub safetensors regex httpx2 httpcore2 anyio idna h11 truststore
          fsspec pydantic pydantic_core annotated-types typing-inspection typing_extensions ruamel.yaml bitsandbytes)
pins=()
for p in "${packages[@]}"; do
  pin=$(grep -i -m1 "^${p}==" constraints.txt | cut -d' ' -f1) || { echo "gpu_bundle.sh: no pin for $p in constraints.txt" >&2; exit 2; }
  pins+=("$pin")
done
rm -rf "$dir"
mkdir -p "$dir"
python3 -m pip download --quiet --dest "$dir" --no-deps --only-binary=:all: --implementation cp \
  --python-version "$python_version" --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform linux_x86_64 "${pins[@]}"
python3 - "$dir" "$bnb_cuda" <<'EOF'
"""Repack the bitsandbytes wheel with only the CPU library and one CUDA library, its RECORD rewritten to match."""
import re, sys, zipfile
from pathlib import Path

folder, keep_cuda = Path(sys.argv[1]), sys.argv[2]
(wheel,) = folder.glob("bitsandbytes-*.whl")
keep = {"libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{keep_cuda}.so"}
dropped = lambda name: re.fullmatch(r"bitsandbytes/libbitsandbytes_\w+\.so", name) and name.split("/")[1] not in keep
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    names = src.namelist()
    if not any(n.endswith(f"libbitsandbytes_cuda{keep_cuda}.so") for n in names):
        sys.exit(f"gpu_bundle.sh: {wheel.name} has no libbitsandbytes_cuda{keep_cuda}.so")
    for info in src.infolist():
        if dropped(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(l for l in lines if not dropped(l.split(",")[0])).encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
slim.replace(wheel)
print(f"bitsandbytes repacked with {', '.join(sorted(keep))}")
EOF
total=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
ls -l "$dir"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $NF}'
printf 'bundle: %s, %d wheels, %.1f MiB (limit 40 MiB)\n' "$dir" "$(ls "$dir"/*.whl | wc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$limit" ]; then
  echo "gpu_bundle.sh: the bundle is over 40 MiB" >&2
  exit 1
fi

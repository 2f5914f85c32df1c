#!/usr/bin/env bash
# The GPU check, one prepared script for a GPU node the harness has not run on, with no network:
# it installs the offline bundle (scripts/gpu_bundle.sh) into a temporary folder put first on PYTHONPATH, then runs
# `bench gpu-check` (the checks that can fail: fp32 masters, QLoRA vs LoRA memory, the merged weights, packed
# attention, chunked eval memory) and then a trimmed `bench perf` (full fine-tuning, LoRA, QLoRA and their memory
# runs on TinyLlama-1.1B's shape; full fine-tuning keeps no weights, the rest write to a temporary folder, deleted
# at the end). One line per check.
# Usage: bash scripts/gpu_check.sh [--bundle DIR] [--out DIR] [--dry-run] [--only-install]
#   --bundle DIR  wheels from scripts/gpu_bundle.sh (default .gpu-bundle; without one, what is installed is used)
#   --out DIR     summary.txt (one line per check) and at most 5 more small files: gpu-check.log, perf.md,
#                 records.jsonl (the perf records), environment.txt, install.log
#   --dry-run     the same on the CPU with tiny shapes; a bundle built for another Python than this one is
#                 installed for its own Python (the install is checked) but not put on the path
#   --only-install  install the bundle and check the harness imports, then stop
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=.gpu-bundle out="" dry=() only_install=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --dry-run) dry=(--dry-run); shift ;;
    --only-install) only_install=1; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --bundle DIR, --out DIR, --dry-run, --only-install)" >&2
       exit 2 ;;
  esac
done
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PYTHONUNBUFFERED=1
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
logs=$work/logs
mkdir -p "$logs"
path=$PWD
if compgen -G "$bundle/*.whl" > /dev/null; then
  own=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  tag=$(ls "$bundle"/pydantic_core-*.whl | sed -E 's/.*-cp([0-9])([0-9]+)-.*/\1.\2/')
  flags=()
  [ "$own" != "$tag" ] && flags=(--python-version "$tag" --implementation cp --only-binary=:all:
                                 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64)
  if ! "$py" -m pip install --no-index --no-deps --no-cache-dir --no-compile --disable-pip-version-check --target "$work/site" \
      "${flags[@]}" "$bundle"/*.whl > "$logs/install.log" 2>&1; then
    echo "FAIL install: pip install --no-index of $bundle into a temporary folder failed:"; tail -5 "$logs/install.log"
    exit 1
  fi
  n=$(ls -d "$work"/site/*.dist-info | wc -l)
  size=$(du -sb "$work/site" | cut -f1)
  if [ "$own" = "$tag" ]; then
    path=$work/site:$PWD
    echo "PASS install: $n packages from $bundle installed offline into $work/site ($((size / 1048576)) MiB), first on PYTHONPATH"
  elif [ ${#dry[@]} -gt 0 ]; then
    echo "PASS install: $n packages from $bundle installed offline for Python $tag ($((size / 1048576)) MiB); this is Python $own: not put on PYTHONPATH (dry run)"
  else
    echo "FAIL install: the bundle is for Python $tag, this is Python $own: rebuild it with BUNDLE_PYTHON_VERSION=$own bash scripts/gpu_bundle.sh"
    exit 1
  fi
else
  echo "SKIP install: no wheels in $bundle: the installed packages are used (build a bundle with scripts/gpu_bundle.sh)"
fi
export PYTHONPATH=$path
if ! "$py" -c 'import bench.core.config, bench.commands.gpucheck, transformers, peft, bitsandbytes, pydantic, ruamel.yaml' \
    > "$logs/import.log" 2>&1; then
  echo "FAIL imports: the harness cannot import here:"; tail -3 "$logs/import.log"
  exit 1
fi
echo "PASS imports: bench, transformers, peft, bitsandbytes, pydantic, ruamel.yaml"
[ "$only_install" = 1 ] && exit 0
"$py" -c 'import sys, torch, transformers, peft, accelerate, bitsandbytes
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
      f"{transformers.__version__} ({transformers.__file__}), peft {peft.__version__}, accelerate "
      f"{accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}; device: {device}")' 2>&1 \
  | grep -v -e "^Failed to load" -e "^W[0-9]" | tee "$logs/environment.txt"
"$py" -m bench gpu-check "${dry[@]}" 2>&1 | tee "$logs/gpu-check.log"
check=${PIPESTATUS[0]}
perf_only=(--only full lora qlora lora-memory qlora-memory)
"$py" -m bench perf "${dry[@]}" "${perf_only[@]}" --output "$work/perf" 2>&1 | tee "$logs/perf.log"
perf=${PIPESTATUS[0]}
grep -E '^(PASS|FAIL|SKIP) ' "$logs/gpu-check.log" > "$logs/summary.txt"
grep -E '^(PASS|FAIL|SKIP) perf' "$logs/perf.log" >> "$logs/summary.txt"
if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$logs/summary.txt" "$logs/gpu-check.log" "$logs/environment.txt" "$out/"
  [ -f "$logs/install.log" ] && cp "$logs/install.log" "$out/"
  [ -f "$work/perf/perf.md" ] && cp "$work/perf/perf.md" "$out/"
  # The perf records, without their predictions: each a line, the whole under 16 MiB.
  "$py" -c 'import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.json")):
    r = json.loads(p.read_text())
    if isinstance(r, dict) and "config_hash" in r:
        r.pop("predictions", None); print(json.dumps(r))' "$work/perf" > "$out/records.jsonl"
  echo "wrote $(ls "$out" | wc -l) files to $out"
fi
exit $(( perf > check ? perf : check ))

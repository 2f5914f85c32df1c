#!/usr/bin/env bash
# CI regression gate: run the smoke suite fresh and compare it with the committed reference records (exit 1 on
# regression).
# Run: scripts/ci_gate.sh [--markdown FILE]   (extra arguments go to `bench compare`; PYTHON picks the interpreter)
# After an intended change to results, in tox's environment (the memory figures depend on it; see docs/guides/ci.md):
# .tox/gate/bin/python -m bench run suites/smoke.yaml --force --output results/smoke, then
# .tox/gate/bin/python -m bench save-reference results/smoke baselines/smoke.json, and commit the new file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# A failed run still writes its record; the gate, not the run's exit code, decides whether that is a regression.
"$PYTHON" -m bench run suites/smoke.yaml --force --output "$out" --no-report || true
"$PYTHON" -m bench compare baselines/smoke.json "$out" "$@"

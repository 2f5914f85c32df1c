#!/usr/bin/env bash
# Set up and run every test from nothing: `bash scripts/test.sh` (the README's test command; .ci/run calls it).
# Installs Chromium for the HTML report test where apt is available (Debian/Ubuntu as root), then tox runs the
# pytest suite and the regression gate (smoke suite vs baselines/smoke.json) in its own virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python3 -m pip install -q 'tox>=4.20'
python3 -m tox "$@"

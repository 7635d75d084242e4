#!/usr/bin/env bash
# The test command: set up .venv, then run the test suite (slow tests excluded; `-m slow` runs them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest "$@"

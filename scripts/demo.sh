#!/usr/bin/env bash
# The run command: set up .venv, then distill SmolLM2-135M-Instruct on CPU (configs/demo.yaml).
# Extra arguments override the config, e.g. `bash scripts/demo.sh --trainer.max_epochs 1`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m lit_kd demo "$@"

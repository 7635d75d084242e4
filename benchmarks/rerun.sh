#!/bin/bash
# Re-run every benchmark whose record a README table shows, one command per record, one after another, then
# regenerate the tables from the new records (benchmarks/records/<name>.json):
#
#   bash benchmarks/rerun.sh            # from anywhere; hours on a 2-core CPU: let nothing else run meanwhile
#
# The commands are those the README quotes; each record names its own command, so a stale record (the test
# tests/test_benchmark_records.py says which) can also be re-run alone, followed by python benchmarks/tables.py.
# The README's figures are measured without PyTorch's huge-page allocation: THP_MEM_ALLOC_ENABLE is unset here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
unset THP_MEM_ALLOC_ENABLE

python benchmarks/generation_speed.py
python benchmarks/diagnostics_overhead.py --config configs/demo.yaml --steps 10 --log-every 5
python benchmarks/diagnostics_overhead.py --config configs/tiny.yaml --steps 40 --log-every 2
python benchmarks/diagnostics_overhead.py --config configs/tiny.yaml --steps 40 --log-every 1
python benchmarks/tau_rules.py --repeats 3
python benchmarks/cache_verify.py
python benchmarks/loss_memory.py --vocab 50257 --peers liger-compiled
python benchmarks/loss_memory.py --vocab 151936 --rows 2048 --repeats 1 --peers none --no-compiled
python benchmarks/teacher_cache.py --config configs/demo.yaml
python benchmarks/cached_step.py
python benchmarks/policy_step.py --config configs/demo.yaml --steps 6
python benchmarks/adapters.py --config configs/demo.yaml --steps 8
python benchmarks/adapters.py --config configs/demo.yaml --student gpt2-base --steps 8
python benchmarks/cross_tokenizer.py
python benchmarks/fsdp.py --steps 4

python benchmarks/tables.py

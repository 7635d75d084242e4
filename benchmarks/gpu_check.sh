#!/bin/bash
# The GPU checks of lit_kd, in one script for a machine with NVIDIA GPUs (run from the repository root, venv set
# up by scripts/setup.sh with a CUDA build of torch). Prints everything to stdout; nothing needs the network.
#
#   bash benchmarks/gpu_check.sh            # every GPU of the machine
#
# 1. the GPU tests (pytest -m gpu): FSDP2 on CUDA with a sharded student and a frozen teacher;
# 2. benchmarks/fsdp.py on CUDA: 1 process vs FSDP2 vs DDP over the GPUs, bf16-mixed, with tokens/s and MFU
#    (FLOPs from DistillModule.flops_per_batch, peak FLOPs from Lightning's get_available_flops);
# 3. benchmarks/loss_memory.py on CUDA: the KD loss of full logits vs lit_kd's chunked fused kernels (eager and
#    torch.compile'd: Triton) vs Liger and TRL where installed, peak allocated memory and time, V = 50,257 and 151,936;
# 4. QLoRA (model.student.peft.quantize, needs bitsandbytes: pip install '.[qlora]'): a 4-bit student base, its
#    adapters trained, checkpointed and exported merged, with the base's memory in 4 bits against bfloat16.
set -euo pipefail
source .venv/bin/activate
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "no CUDA device: nothing to check"; exit 1; fi
nvidia-smi --query-gpu=name,memory.total --format=csv
echo "== 1. GPU tests"
python -m pytest -q -m gpu tests
echo "== 2. FSDP2 vs DDP vs 1 process on $GPUS GPU(s)"
python benchmarks/fsdp.py --accelerator cuda --devices "$GPUS" --precision bf16-mixed --steps 20 --layers 30
echo "== 3. the KD loss: full logits vs chunked (eager, compiled) vs peers, on CUDA"
python benchmarks/loss_memory.py --device cuda --vocab 50257,151936 --repeats 3
echo "== 4. QLoRA: a 4-bit student base with LoRA adapters"
python -m pytest -q -s -m gpu tests/modules/test_qlora.py

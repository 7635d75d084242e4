#!/bin/bash
# lit_kd on a SLURM cluster: FSDP2 (configs/strategies/fsdp.yaml) over every GPU of every node of the job.
# srun starts one task per GPU; Lightning's SLURMEnvironment reads the ranks and the master address from SLURM's
# variables (nothing here sets them). Give the run's configs and overrides as arguments:
#
#   sbatch --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 scripts/slurm.sh \
#       --config configs/pairs/opt.yaml --config configs/objectives/fkl.yaml --model.loss.tau 2.0
#
# The venv must exist on a shared file system (bash scripts/setup.sh once, on a login node).
#SBATCH --job-name=lit_kd
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --output=logs/slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
srun python -m lit_kd fit "$@" --config configs/strategies/fsdp.yaml \
    --trainer.num_nodes "$SLURM_JOB_NUM_NODES" --trainer.devices "$SLURM_NTASKS_PER_NODE"

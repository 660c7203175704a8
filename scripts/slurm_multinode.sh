#!/usr/bin/env bash
# Multi-node tunekit training under Slurm: one `tunekit train` per node, each starting one process per GPU
# through torchrun (tunekit relaunches itself; see docs/scaling.md). Submit with:
#
#   sbatch scripts/slurm_multinode.sh recipes/my.yaml [overrides...]
#
# Every node runs the same command with its own --node-rank; node 0's hostname is the rendezvous address.
# The output dir (output.dir in the recipe) should be on a filesystem all nodes share: rank 0 writes the
# run files and consolidated final weights there; DeepSpeed ZeRO ranks write their checkpoint shards there.
#SBATCH --job-name=tunekit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts --nproc workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

RECIPE=${1:?usage: sbatch scripts/slurm_multinode.sh RECIPE [overrides...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}

# srun starts one task per node; SLURM_NODEID is that node's rank.
srun --kill-on-bad-exit=1 bash -c "tunekit train '$RECIPE' $* \
  --nproc $GPUS_PER_NODE \
  --nnodes $SLURM_NNODES \
  --node-rank \$SLURM_NODEID \
  --master-addr $MASTER_ADDR \
  --master-port $MASTER_PORT"

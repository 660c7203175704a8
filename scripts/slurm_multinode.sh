#!/usr/bin/env bash
# Multi-node tunekit training under Slurm: one `tunekit train` per node, each starting one process per GPU
# through torchrun (tunekit relaunches itself; see docs/scaling.md). Submit with:
#
#   sbatch scripts/slurm_multinode.sh recipes/my.yaml [overrides...]
#
# Every node runs the same command with its own --node-rank; node 0's hostname is the rendezvous address.
# The output dir (output.dir in the recipe) should be on a filesystem all nodes share: rank 0 writes the
# run files and consolidated final weights there; DeepSpeed ZeRO ranks write their checkpoint shards there.
#
# Stopping (docs/scaling.md, "Signals"): SIGTERM to any of the job's processes stops every rank at the end of
# its current step with a checkpoint; the run exits 143 and `sbatch scripts/slurm_multinode.sh RECIPE --resume`
# continues it. At the time limit or on preemption Slurm sends SIGTERM to every process of the job step, then
# SIGKILL after its grace period (KillWait, often 30 s; GraceTime for preemption): too short for a step and a
# checkpoint save on a large model. --signal below asks for the SIGTERM 300 s before the time limit instead
# (raise it when a step plus a save take longer). Every process gets that SIGTERM, and torchrun forwards a
# copy: tunekit takes the copies, within 5 s, as one request. To stop by hand: `scancel --signal=TERM JOBID`
# (the same); a second one 5 s or more later aborts at once without saving the step in progress.
# torchrun SIGKILLs workers still running TORCH_ELASTIC_SHUTDOWN_TIMEOUT after it forwarded a signal
# (tunekit sets 300 s unless it is set): keep it at least as long as the --signal lead time.
#SBATCH --job-name=tunekit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts --nproc workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --signal=TERM@300            # SIGTERM to every process of the step 300 s before the time limit
set -euo pipefail

RECIPE=${1:?usage: sbatch scripts/slurm_multinode.sh RECIPE [overrides...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}

# srun starts one task per node; SLURM_NODEID is that node's rank. `exec`: the task is tunekit itself, not a
# shell that a SIGTERM would end (which --kill-on-bad-exit would take for a failed task and SIGKILL the step).
srun --kill-on-bad-exit=1 bash -c "exec tunekit train '$RECIPE' $* \
  --nproc $GPUS_PER_NODE \
  --nnodes $SLURM_NNODES \
  --node-rank \$SLURM_NODEID \
  --master-addr $MASTER_ADDR \
  --master-port $MASTER_PORT"

#!/bin/bash
# The 50-task OGBench protocol as a SLURM job array: 10 jobs, one domain (5 tasks) each, so each job
# pretrains its domain's BC policy once. Seeds run in parallel inside each job (vmapped).
#
#   sbatch experiments/slurm_ogbench50.sh            # TRQAM
#   METHOD=qam sbatch experiments/slurm_ogbench50.sh # the QAM baseline
#
# Preemption and time limits: --signal=B:TERM@300 sends SIGTERM to this script 5 minutes before the
# kill. The script passes it to the launcher, which stops at its next safe point with a checkpoint
# there and exits with 143; the script then requeues the job (--requeue). The command line always
# has --resume, which is idempotent: a run that does not exist starts, a partial run continues and a
# finished run is skipped, so a requeued job simply carries on.
#
# Afterwards: python -m experiments.report --runs_dir=runs/ogbench50
#SBATCH --job-name=trqam-ogbench50
#SBATCH --array=0-9
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=128G
#SBATCH --time=3-00:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%A_%a.out

set -uo pipefail
METHOD=${METHOD:-trqam}
NUM_SEEDS=${NUM_SEEDS:-8}  # the protocol: 8 seeds per task
python -m experiments.train \
  --config=experiments/configs/ogbench.py \
  --suite=ogbench50 --shard="${SLURM_ARRAY_TASK_ID}/10" \
  --method="${METHOD}" --num_seeds="${NUM_SEEDS}" \
  --output_dir=runs/ogbench50 --noreport --resume &
pid=$!
trap 'kill -TERM "${pid}"' TERM
wait "${pid}"; status=$?
if [ "${status}" -ge 128 ] && kill -0 "${pid}" 2>/dev/null; then
  wait "${pid}"; status=$?  # the trap interrupted the first wait: wait for the launcher's own exit
fi
if [ "${status}" -eq 143 ]; then
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${status}"

#!/bin/bash
# The 50-task OGBench protocol as a SLURM job array: 10 jobs, one domain (5 tasks) each, so each job
# pretrains its domain's BC policy once. Seeds run in parallel inside each job (vmapped).
#
#   sbatch experiments/slurm_ogbench50.sh            # TRQAM
#   METHOD=qam sbatch experiments/slurm_ogbench50.sh # the QAM baseline
#
# Afterwards: python -m experiments.report --runs_dir=runs/ogbench50
#SBATCH --job-name=trqam-ogbench50
#SBATCH --array=0-9
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=128G
#SBATCH --time=3-00:00:00
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail
METHOD=${METHOD:-trqam}
NUM_SEEDS=${NUM_SEEDS:-4}
python -m experiments.train \
  --config=experiments/configs/ogbench.py \
  --suite=ogbench50 --shard="${SLURM_ARRAY_TASK_ID}/10" \
  --method="${METHOD}" --num_seeds="${NUM_SEEDS}" \
  --output_dir=runs/ogbench50 --noreport \
  ${RESUME:+--resume}

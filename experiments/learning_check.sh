#!/bin/bash
# CPU-scale learning check: BC, QAM and TRQAM on cube-single and cube-double task 1, 3 seeds each.
# Datasets are generated on first use. Results: runs/learning_check/report/.
set -euo pipefail
for env in cube-single-play-singletask-task1-v0 cube-double-play-singletask-task1-v0; do
  for method in bc qam trqam; do
    python -m experiments.train --config=experiments/configs/learning_check.py \
      --env_name="$env" --method="$method" --noreport "$@"
  done
done
python -m experiments.report --runs_dir=runs/learning_check

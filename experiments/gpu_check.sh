#!/bin/bash
# The GPU check (docs/performance.md): one run on one card, under 8 minutes, a short table printed last.
#
#   experiments/gpu_check.sh LOG_DIR [REFERENCE_DIR]
#   GPU_CHECK_TINY=1 experiments/gpu_check.sh /tmp/gpu_check    # tiny shapes: a check of the plumbing, any machine
#
# In order:
#   1. the reference update on this card: REFERENCE_DIR/reference_speed.py (default third_party/peer, an ignored
#      folder holding a copy of the reference folder), one seed, one jitted call per update, with a fixed device
#      batch and with its per-step host batch. Skipped with one line if the folder has no reference_speed.py.
#   2. python -m experiments.benchmark --suite=gpu: the two ceilings (matmul in float32 and bfloat16, bandwidth),
#      then the learners benchmark at L = 1, 8, 40 (width 512) and L = 1, 8, 20 (width 1024) and BC-only updates,
#      each in float32 and bfloat16, with a jax.profiler trace of one call (scan_steps = 20 updates) at L = 40.
#      Rows that would start after GPU_CHECK_BUDGET_S seconds (from the start of this script) are skipped.
#   3. the top ops of the trace, and the summary table (python -m experiments.roofline).
#
# LOG_DIR gets at most 5 files, none in sub-folders: log.txt (everything), summary.txt, top_ops.txt,
# trace.json.gz and profile.xplane.pb (if under 15 MB).
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 360), GPU_CHECK_METHODS (default trqam;
# e.g. trqam,sqam), GPU_CHECK_TINY (1: tiny shapes), JAX_COMPILATION_CACHE_DIR (default /tmp/trqam_jax_cache, so an
# immediate rerun on the same machine skips the compiles). If the folder third_party/pylib exists it is put on
# PYTHONPATH (e.g. for ml_collections, which the reference code imports, where the card's Python lacks it).
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 LOG_DIR [REFERENCE_DIR]" >&2
  exit 2
fi
DIR=$1
REF=${2:-third_party/peer}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-360}
METHODS=${GPU_CHECK_METHODS:-trqam}
TINY=${GPU_CHECK_TINY:-0}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/trqam_jax_cache}
if [ -d third_party/pylib ]; then export PYTHONPATH="$PWD/third_party/pylib${PYTHONPATH:+:$PYTHONPATH}"; fi

mkdir -p "$DIR" || exit 2
LOG=$DIR/log.txt
: >"$LOG"
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
say() { echo "$*" | tee -a "$LOG"; }

if [ "$TINY" = 1 ]; then
  TINY_FLAG=--tiny
  REF_ARGS=(--width 16 --steps 2)
  REF_WIDTH=16
  # Tiny runs are a CPU check: cut XLA's compile time (no effect on what is checked).
  export XLA_FLAGS=${XLA_FLAGS:-"--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
else
  TINY_FLAG=
  REF_ARGS=(--width 512 --steps 50)
  REF_WIDTH=512
fi

say "gpu_check: $(date -u +%FT%TZ), budget ${BUDGET}s, methods $METHODS, tiny=$TINY, python $($PY -c 'import sys; print(sys.version.split()[0])')"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader >>"$LOG" 2>&1
fi

# 1. The reference update.
if [ -f "$REF/reference_speed.py" ]; then
  for host in 0 1; do
    extra=()
    if [ $host = 1 ]; then extra=(--host_batch); fi
    say "== reference update (host_batch=$host, $(elapsed) s)"
    out=$(timeout 150 "$PY" "$REF/reference_speed.py" "${REF_ARGS[@]}" "${extra[@]}" 2>&1)
    rc=$?
    echo "$out" >>"$LOG"
    rate=$(echo "$out" | sed -n 's/^reference_updates_per_s=\([0-9.]*\).*/\1/p' | tail -1)
    if [ -n "$rate" ]; then
      say "reference_updates_per_s=$rate"
      echo "REFERENCE {\"host_batch\": $([ $host = 1 ] && echo true || echo false), \"updates_per_s\": $rate, \"width\": $REF_WIDTH}" >>"$LOG"
    else
      say "reference (host_batch=$host) failed (exit $rc): $(echo "$out" | tail -1)"
      echo "REFERENCE {\"host_batch\": $([ $host = 1 ] && echo true || echo false), \"note\": \"failed (exit $rc), see log.txt\"}" >>"$LOG"
    fi
  done
else
  say "reference: skipped (no $REF/reference_speed.py)"
fi

# 2. Ceilings, learners rows and the profile, in one process.
PROFILE=$(mktemp -d)
left=$((BUDGET - $(elapsed)))
if [ $left -lt 1 ]; then left=1; fi
say "== benchmark suite ($(elapsed) s; rows start until ${left} s from now)"
timeout $((left + 180)) "$PY" -u -m experiments.benchmark --suite=gpu $TINY_FLAG --method="$METHODS" \
  --time_budget_s="$left" --profile_dir="$PROFILE" 2>&1 | tee -a "$LOG" |
  grep --line-buffered -E '^(==|ceiling|floor|  L|[ 0-9]{3} |profile|skipped|device|config|Traceback|[A-Za-z]*Error)'
say "suite exit ${PIPESTATUS[0]} ($(elapsed) s)"

# 3. The trace's top ops and the table.
trace=$(find "$PROFILE" -name '*.trace.json.gz' | head -1)
if [ -z "$trace" ]; then trace=$(find "$PROFILE" -name 'perfetto_trace.json.gz' | head -1); fi
if [ -n "$trace" ]; then
  cp "$trace" "$DIR/trace.json.gz"
  xplane=$(find "$PROFILE" -name '*.xplane.pb' | head -1)
  if [ -n "$xplane" ] && [ "$(stat -c %s "$xplane")" -lt 15000000 ]; then cp "$xplane" "$DIR/profile.xplane.pb"; fi
  "$PY" -m experiments.roofline top_ops "$DIR/trace.json.gz" --top 20 >"$DIR/top_ops.txt" 2>&1
  cat "$DIR/top_ops.txt" >>"$LOG"
  head -12 "$DIR/top_ops.txt"
else
  say "profile: no trace written"
fi
rm -rf "$PROFILE"
"$PY" -m experiments.roofline table "$LOG" >"$DIR/summary.txt" 2>&1
cat "$DIR/summary.txt" | tee -a "$LOG"
say "gpu_check: done in $(elapsed) s; logs in $DIR"

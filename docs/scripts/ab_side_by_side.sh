#!/usr/bin/env bash
# Does the miniature train faster two rows at a time (one intra-op thread each) than one row at a
# time (all threads)? The A/B behind `routevit reproduce --jobs 2`.
#
#   docs/scripts/ab_side_by_side.sh RECIPE [DATA] [SECONDS]
#
# RECIPE: a row's recipe, e.g. runs/cifar10_mini/blvit_seed0/recipe.yaml (the teacher it distils
# from must exist). Runs it once alone for SECONDS (default 120), then twice side by side with
# OMP_NUM_THREADS=1 for SECONDS, each run stopped by SIGTERM; prints training steps per second
# from the runs' metrics.jsonl (the first logged step to the last, warm-up excluded).
# Nothing else should run meanwhile. Environment: PYTHON (default: python).
set -euo pipefail
RECIPE=$1
DATA=${2:-/work/shared/data/cifar10/train}
SECONDS_EACH=${3:-120}
PY=${PYTHON:-python}
THREADS=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

one() {  # $1 run name, $2 intra-op threads
  OMP_NUM_THREADS=$2 timeout -s TERM "$SECONDS_EACH" "$PY" -m routevit.cli train "$RECIPE" --data "$DATA" \
    --output "$WORK/$1" --set run.log_every_steps=10 > "$WORK/$1.log" 2>&1 || true
}
rate() {  # steps per second between the first and the last logged training step
  "$PY" - "$WORK/$1/metrics.jsonl" <<'EOF'
import json, sys
events = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "train"]
first, last = events[0], events[-1]
print(f"{(last['step'] - first['step']) / (last['time'] - first['time']):.3f}")
EOF
}

one alone "$THREADS"
one left 1 & one right 1 & wait
alone=$(rate alone); left=$(rate left); right=$(rate right)
"$PY" -c "
alone, left, right = $alone, $left, $right
print(f'one run, $THREADS threads:        {alone:.3f} steps/s')
print(f'two runs, 1 thread each:   {left:.3f} + {right:.3f} = {left + right:.3f} steps/s')
print(f'side by side / alone:      {(left + right) / alone:.2f}x')
"

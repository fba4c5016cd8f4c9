#!/usr/bin/env bash
# Berkeley (100 instances), RITM click protocol: gp, random walker and GrabCut in one harness.
#   benchmarks/eval_berkeley.sh [OUT] [extra `volseg eval` arguments, e.g. --max-instances 10]
# Reads $VOLSEG_DEV_DATA/2d/berkeley (default ../shared/data/dev next to the repo); nothing is copied.
# Resumable: rerun the same command after an interruption.  One method per process, in parallel
# when JOBS=2 or more (timings then share the CPU; use JOBS=1 for clean seconds-per-click).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${VOLSEG_DEV_DATA:-$(pwd)/../shared/data/dev}/2d/berkeley"
OUT="${1:-/tmp/volseg_eval_berkeley}"; shift || true
PY="${PYTHON:-.venv/bin/python}"
JOBS="${JOBS:-1}"
METHODS="${METHODS:-gp random-walker grabcut}"
[ -d "$DATA" ] || { echo "Berkeley dev data not found at $DATA (set VOLSEG_DEV_DATA)" >&2; exit 1; }
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core per method process
mkdir -p "$OUT"
run() { "$PY" -m volseg eval --dataset Berkeley --root "$DATA" --method "$1" --out "$OUT" --no-progress "${@:2}" \
          > "$OUT/log_$1.txt" 2>&1 && echo "done: $1" || { echo "FAILED: $1 (see $OUT/log_$1.txt)" >&2; return 1; }; }
pids=()
for m in $METHODS; do
  run "$m" "$@" & pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
done
status=0; for p in "${pids[@]}"; do wait "$p" || status=1; done
# one table and one plot for every method found in OUT
"$PY" -c "import sys; from volseg.eval.report import report, load_summaries, table
w = report(sys.argv[1], 'Berkeley'); print(table(load_summaries(sys.argv[1], 'Berkeley')['Berkeley'])); print(w)" "$OUT"
exit $status

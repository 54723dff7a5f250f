#!/usr/bin/env bash
# Evaluate one trained run under a fixed, deterministic protocol (greedy decoding: beam 1, 32 new
# tokens, batch 16, seed 42) on all eight tasks (tasks without a test file are skipped), then write
# that run's table to RUN_DIR/summary. With no argument the newest run (newest args.json under
# $RUNS_DIR) is evaluated:
#   bash run_fixed_evaluation.sh [RUN_DIR]        e.g. MAX_EXAMPLES=100 bash run_fixed_evaluation.sh
set -euo pipefail
cd "$(dirname "$0")"
RUNS_DIR=${RUNS_DIR:-runs}
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MAX_EXAMPLES=${MAX_EXAMPLES:-}           # empty = full test sets
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

RUN_DIR=${1:-}
if [ -z "$RUN_DIR" ] && [ -d "$RUNS_DIR" ]; then  # the newest args.json marks the newest run
  RUN_DIR=$(find "$RUNS_DIR" -name args.json -printf '%T@ %h\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
fi
if [ -z "$RUN_DIR" ]; then
  echo "error: no run (no args.json) under $RUNS_DIR; train one first or pass RUN_DIR" >&2
  exit 2
fi
if [ ! -f "$RUN_DIR/args.json" ]; then
  echo "error: $RUN_DIR has no args.json (not a run folder)" >&2
  exit 2
fi
if [ ! -d "$DATA_DIR" ]; then
  echo "error: data folder $DATA_DIR not found; set KNOWHIRA_DATA_DIR or run: python download_all_eval_datasets.py --datasets all" >&2
  exit 2
fi
echo "evaluating $RUN_DIR"
export TOKENIZERS_PARALLELISM=false
"$PY" train_knowhira.py --ckpt "$RUN_DIR" --data_dir "$DATA_DIR" --dataset all --eval_mode generate \
  --beam_size 1 --max_new_tokens 32 --eval_batch 16 --seed 42 ${MAX_EXAMPLES:+--max_examples "$MAX_EXAMPLES"}
"$PY" analyze_results.py "$RUN_DIR" --out "$RUN_DIR/summary"

#!/usr/bin/env bash
# The main job, end to end on a fresh machine (a 2-core CPU is enough):
#   install -> fetch the real SmolLM2-135M-Instruct -> train KnowHiRA on a mix of every training
#   file found in the data folder -> evaluate on every task whose test file is present -> table.
# Override with environment variables, e.g. MAX_STEPS=200 KNOWHIRA_DATA_DIR=/data/commonsense.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MAX_STEPS=${MAX_STEPS:-40}
BATCH=${BATCH:-8}
LR=${LR:-3e-3}
R=${R:-32}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-100}
OUT=${OUT:-runs/quickstart}
# the answer format a small model can learn (README "Answer formats"), scored by log-likelihood; the
# clean protocol never cuts a response (hira's cuts targets at 16 tokens)
FORMAT=(--answer_format text --protocol clean)

if [ ! -d "$DATA_DIR" ]; then
  echo "error: data folder $DATA_DIR not found; set KNOWHIRA_DATA_DIR or run: python -m data.download --out data/commonsense" >&2
  exit 2
fi
bash scripts/setup_env.sh
GGUF=$(bash scripts/fetch_smollm2.sh)
source scripts/common.sh
MIX=$(train_mix "$DATA_DIR")
[ -n "$MIX" ] || { echo "error: no <task>/train.json under $DATA_DIR" >&2; exit 2; }
echo "training mix: $MIX"
export TOKENIZERS_PARALLELISM=false
.venv/bin/python train_knowhira.py --model_name "$GGUF" --data_dir "$DATA_DIR" --dataset "mix:$MIX" \
  "${FORMAT[@]}" --peft_type knowhira --r_ab "$R" --lr "$LR" --warmup 4 --batch "$BATCH" \
  --max_steps "$MAX_STEPS" --eval_steps 20 --save_steps 20 --val_size 60 --best_metric val_acc \
  --validate_at_start --output_folder "$OUT" --run_name knowhira_smollm2
# every offered option scored after the run's prompt (--eval_mode loglik, the text format's default); the
# untouched model on the same questions is the baseline of the paired Δ / p columns
.venv/bin/python train_knowhira.py --ckpt "$OUT/knowhira_smollm2" --data_dir "$DATA_DIR" --dataset all \
  --max_examples "$EVAL_EXAMPLES" --eval_batch 16
.venv/bin/python train_knowhira.py --ckpt none --model_name "$GGUF" --data_dir "$DATA_DIR" --dataset all \
  "${FORMAT[@]}" --max_examples "$EVAL_EXAMPLES" --eval_batch 16 --results_dir "$OUT/zeroshot"
.venv/bin/python analyze_results.py "$OUT" --baseline "$OUT/zeroshot" --out "$OUT/summary"

#!/usr/bin/env bash
# The main job, end to end on a fresh machine (a 2-core CPU is enough, under 15 minutes):
#   install -> fetch the real SmolLM2-135M-Instruct -> train KnowHiRA on the knowledge tasks whose training
#   files are in the data folder (ARC-Easy, ARC-Challenge, OpenBookQA; not BoolQ, which teaches only its
#   "true" prior) in the cloze answer format -> score the final checkpoint and the untouched model on the
#   same test questions of those tasks, lm-eval style -> the table of what training changed.
# Override with environment variables, e.g. MAX_STEPS=400 EVAL_EXAMPLES=1000 KNOWHIRA_DATA_DIR=/data/commonsense.
# Why these settings: the knowledge-task experiment (docs/experiments/knowledge_20261205/).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MAX_STEPS=${MAX_STEPS:-200}
BATCH=${BATCH:-8}
LR=${LR:-2e-3}
R=${R:-32}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-300}
OUT=${OUT:-runs/quickstart}

if [ ! -d "$DATA_DIR" ]; then
  echo "error: data folder $DATA_DIR not found; set KNOWHIRA_DATA_DIR or run: python -m data.download --out data/commonsense" >&2
  exit 2
fi
bash scripts/setup_env.sh  # the runtime requirements only (no test tools)
GGUF=$(bash scripts/fetch_smollm2.sh)
source scripts/common.sh
MIX=$(train_mix "$DATA_DIR" "$KNOWLEDGE_TASKS")
[ -n "$MIX" ] || { echo "error: no <task>/train.json of $KNOWLEDGE_TASKS under $DATA_DIR" >&2; exit 2; }
echo "training mix: $MIX"
export TOKENIZERS_PARALLELISM=false
# the cloze answer format: "Question: ...\nAnswer:" + " <the gold choice>", loss on the choice (docs/evaluation.md)
.venv/bin/python train_knowhira.py --model_name "$GGUF" --data_dir "$DATA_DIR" --dataset "mix:$MIX" \
  --answer_format cloze --peft_type knowhira --r_ab "$R" --target_modules q_proj,k_proj,v_proj,up_proj,down_proj \
  --lr "$LR" --warmup 20 --batch "$BATCH" --max_steps "$MAX_STEPS" --eval_steps 50 --save_steps 50 \
  --val_size 120 --best_metric val_acc --validate_at_start --output_folder "$OUT" --run_name knowhira_smollm2
# each choice's text scored as the continuation of its question, as lm-eval scores ARC and OBQA (the run's
# format's default); the final checkpoint; the untouched model on the same questions is the paired baseline
.venv/bin/python train_knowhira.py --ckpt "$OUT/knowhira_smollm2" --adapter final --data_dir "$DATA_DIR" \
  --dataset "$MIX" --max_examples "$EVAL_EXAMPLES" --eval_batch 16
.venv/bin/python train_knowhira.py --ckpt none --model_name "$GGUF" --data_dir "$DATA_DIR" --dataset "$MIX" \
  --eval_mode cloze --max_examples "$EVAL_EXAMPLES" --eval_batch 16 --results_dir "$OUT/zeroshot"
# acc_norm: the score per character of the choice (lm-eval's headline metric for ARC and OBQA)
.venv/bin/python analyze_results.py "$OUT" --baseline "$OUT/zeroshot" --metric acc_norm --out "$OUT/summary"

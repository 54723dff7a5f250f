#!/usr/bin/env bash
# Every method under one protocol: same model, data mix, seed, step budget, effective batch, rank,
# targets and evaluation; only --peft_type and the learning rate (table below) change.
# Then one analyze_results.py table (with trainable-parameter counts).
#   KNOWHIRA_DATA_DIR=../shared/data/commonsense MAX_STEPS=40 bash scripts/compare_methods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MODEL=${MODEL:-$(bash scripts/fetch_smollm2.sh)}
METHODS=${METHODS:-"fft lora dora ia3 hira kasa hira_sb knowhira"}
MAX_STEPS=${MAX_STEPS:-40}
BATCH=${BATCH:-4}
GRAD_ACC=${GRAD_ACC:-1}
R=${R:-32}
TARGETS=${TARGETS:-q_proj,k_proj,v_proj,up_proj,down_proj}
SEED=${SEED:-42}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-100}
EVAL_MODE=${EVAL_MODE:-generate}
OUT=${OUT:-runs/compare}
LR_OVERRIDE=${LR_OVERRIDE:-}   # one LR for every method (used by scripts/sweep_lr.sh)
SKIP_EVAL=${SKIP_EVAL:-0}      # 1: train only (validation loss), no test-set evaluation
# Learning rate per method (docs/methods.md, "Learning rates"); re-tune with scripts/sweep_lr.sh.
declare -A LR=([fft]=2e-5 [lora]=5e-4 [dora]=5e-4 [ia3]=3e-3 [hira]=1e-3 [kasa]=5e-4 [hira_sb]=1e-3 [knowhira]=1e-3)
# per-method flags: plain HiRA has no orthogonality term (fft and ia3 report --r_ab as unused)
declare -A EXTRA=([hira]="--ortho_lambda 0")
source scripts/common.sh
MIX=${MIX:-$(train_mix "$DATA_DIR")}
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false
for m in $METHODS; do
  read -ra extra <<< "${EXTRA[$m]:-}"
  "$PY" train_knowhira.py --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset "mix:$MIX" \
    --peft_type "$m" --r_ab "$R" --target_modules "$TARGETS" --lr "${LR_OVERRIDE:-${LR[$m]}}" --warmup 4 \
    --batch "$BATCH" --grad_acc "$GRAD_ACC" --max_steps "$MAX_STEPS" --seed "$SEED" \
    --val_size 60 --eval_steps 10 --save_steps "$MAX_STEPS" --output_folder "$OUT" --run_name "$m" "${extra[@]}"
  rm -rf "$OUT/$m/checkpoints"   # keep best/ and final/; the resume state is not needed after a finished run
  [ "$SKIP_EVAL" = 1 ] && continue
  "$PY" train_knowhira.py --ckpt "$OUT/$m" --data_dir "$DATA_DIR" --dataset all \
    --eval_mode "$EVAL_MODE" --max_examples "$EVAL_EXAMPLES" --eval_batch 16
done
[ "$SKIP_EVAL" = 1 ] || "$PY" analyze_results.py "$OUT" --out "$OUT/summary"

#!/usr/bin/env bash
# A 7B-13B Llama + KnowHiRA (or any --peft_type, fft included) with FSDP2 full-shard over $NGPU GPUs
# (torchrun + accelerate), bf16 base weights, gradient checkpointing; then evaluation of the best
# adapter on all eight benchmarks (DDP-style sharded evaluation of the merged model, which fits
# one GPU in bf16 for 7B/13B) and the results table. Edit the variables (or set them in the
# environment) to run a sweep. On CPU the same script runs over gloo with a tiny model, e.g.
#   NGPU=2 MODEL=/path/to/tiny-llama MAX_STEPS=4 LOAD_BIT=32 bash scripts/run_llama_fsdp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-8}
MASTER_PORT=${MASTER_PORT:-29500}
MODEL=${MODEL:-meta-llama/Llama-2-7b-hf}
METHOD=${METHOD:-knowhira}
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
DATASET=${DATASET:-common_170k}          # or mix:boolq,ARC-Easy,... when the 170K file is absent
TARGETS=${TARGETS:-q_proj,k_proj,v_proj,up_proj,down_proj}
R=${R:-32}
LR=${LR:-2e-4}
BATCH=${BATCH:-4}                        # per device
GRAD_ACC=${GRAD_ACC:-4}                  # effective batch = BATCH x GRAD_ACC x NGPU
EPOCHS=${EPOCHS:-3}
MAX_STEPS=${MAX_STEPS:--1}
LOAD_BIT=${LOAD_BIT:-16}
VAL_SIZE=${VAL_SIZE:-120}
EVAL_STEPS=${EVAL_STEPS:-200}
MAX_EXAMPLES=${MAX_EXAMPLES:-}           # empty = full test sets
EVAL_MODE=${EVAL_MODE:-generate}
OUT=${OUT:-runs/llama_fsdp}
RUN_NAME=${RUN_NAME:-${METHOD}_r${R}_lr${LR}}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node="$NGPU" --master_port="$MASTER_PORT")

"${TORCHRUN[@]}" train_knowhira.py --fsdp --enable_grad_ckpt --model_name "$MODEL" --data_dir "$DATA_DIR" \
  --dataset "$DATASET" --peft_type "$METHOD" --target_modules "$TARGETS" --r_ab "$R" --lr "$LR" \
  --batch "$BATCH" --grad_acc "$GRAD_ACC" --epoch "$EPOCHS" --max_steps "$MAX_STEPS" --load_bit "$LOAD_BIT" \
  --val_size "$VAL_SIZE" --warmup 100 --eval_steps "$EVAL_STEPS" --save_steps "$EVAL_STEPS" \
  --output_folder "$OUT" --run_name "$RUN_NAME"
"${TORCHRUN[@]}" train_knowhira.py --ckpt "$OUT/$RUN_NAME" --data_dir "$DATA_DIR" --dataset all \
  --eval_mode "$EVAL_MODE" ${MAX_EXAMPLES:+--max_examples "$MAX_EXAMPLES"}
"$PY" analyze_results.py "$OUT" --out "$OUT/summary"

#!/usr/bin/env bash
# GPT-Neo-1.3B + KnowHiRA on $NGPU GPUs (torchrun, DDP through accelerate), then evaluation of the
# best adapter on all eight benchmarks, then the results table. Edit the variables below (or set
# them in the environment) to run a sweep. With no GPU the same script runs on CPU over gloo, e.g.
#   NGPU=2 MODEL=/path/to/tiny-model MAX_STEPS=4 ./run_gptneo13b_knowhira_multigpu.sh
set -euo pipefail
cd "$(dirname "$0")"
NGPU=${NGPU:-2}
MASTER_PORT=${MASTER_PORT:-29500}
MODEL=${MODEL:-EleutherAI/gpt-neo-1.3B}
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
DATASET=${DATASET:-common_170k}          # or mix:boolq,ARC-Easy,... when the 170K file is absent
TARGETS=${TARGETS:-q_proj,k_proj,v_proj,c_fc,mlp.c_proj}
R=${R:-32}
ALPHA=${ALPHA:-0.5}                      # knowledge_alpha
ORTHO=${ORTHO:-1e-3}                     # ortho_lambda
LR=${LR:-1e-3}
BATCH=${BATCH:-4}                        # per device
GRAD_ACC=${GRAD_ACC:-4}                  # effective batch = BATCH x GRAD_ACC x NGPU
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:--1}
LOAD_BIT=${LOAD_BIT:-16}
VAL_SIZE=${VAL_SIZE:-120}                # validation examples held out of the training data
MAX_EXAMPLES=${MAX_EXAMPLES:-}           # empty = full test sets
EVAL_MODE=${EVAL_MODE:-generate}
OUT=${OUT:-runs/gptneo13b}
RUN_NAME=${RUN_NAME:-knowhira_r${R}_a${ALPHA}_l${ORTHO}_lr${LR}}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node="$NGPU" --master_port="$MASTER_PORT")

"${TORCHRUN[@]}" train_knowhira.py --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset "$DATASET" \
  --peft_type knowhira --target_modules "$TARGETS" --r_ab "$R" --knowledge_alpha "$ALPHA" \
  --ortho_lambda "$ORTHO" --lr "$LR" --batch "$BATCH" --grad_acc "$GRAD_ACC" --epoch "$EPOCHS" \
  --max_steps "$MAX_STEPS" --load_bit "$LOAD_BIT" --val_size "$VAL_SIZE" --warmup 100 --eval_steps 200 --save_steps 200 \
  --output_folder "$OUT" --run_name "$RUN_NAME"
"${TORCHRUN[@]}" train_knowhira.py --ckpt "$OUT/$RUN_NAME" --data_dir "$DATA_DIR" --dataset all \
  --eval_mode "$EVAL_MODE" ${MAX_EXAMPLES:+--max_examples "$MAX_EXAMPLES"}
"$PY" analyze_results.py "$OUT" --out "$OUT/summary"

#!/usr/bin/env bash
# Multi-node KnowHiRA training: run this on EVERY node with its own NODE_RANK.
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0.example:29400 bash scripts/multinode_example.sh   # on node 0
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0.example:29400 bash scripts/multinode_example.sh   # on node 1
# Effective batch = BATCH x GRAD_ACC x NNODES x NGPU_PER_NODE (printed at start). The run folder must
# be on storage every node can read (rank 0 writes logs, checkpoints and adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:?set NODE_RANK (0..NNODES-1)}
NGPU_PER_NODE=${NGPU_PER_NODE:-8}
RDZV_ENDPOINT=${RDZV_ENDPOINT:?set RDZV_ENDPOINT host:port of node 0}
MODEL=${MODEL:-meta-llama/Llama-2-7b-hf}
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
OUT=${OUT:-runs/multinode}
PY=${PY:-python}
SHARD=(); [ "${FSDP:-0}" = 1 ] && SHARD=(--fsdp)   # FSDP=1: FSDP2 full-shard across all nodes' GPUs
"$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --nproc_per_node="$NGPU_PER_NODE" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" \
  --rdzv_id="${RDZV_ID:-knowhira}" \
  train_knowhira.py --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset "${DATASET:-common_170k}" \
  --peft_type "${METHOD:-knowhira}" --r_ab "${R:-32}" --lr "${LR:-2e-4}" --batch "${BATCH:-4}" --grad_acc "${GRAD_ACC:-1}" \
  --load_bit 16 --enable_grad_ckpt "${SHARD[@]}" --output_folder "$OUT" --run_name "${RUN_NAME:-knowhira_llama7b}"

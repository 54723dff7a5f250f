#!/usr/bin/env bash
# One command for the day a GPU is lent (about 8 minutes on one H100): what has never run on a GPU here,
# measured into one folder, docs/gpu/<device>_<date>/ (commit it):
#   env.json        torch, CUDA, the device, its memory, bf16 support
#   bench.json      python -m scripts.bench: (a) the fused Hadamard layer against peft's HiRA and LoRA layers
#                   in bf16, forward + backward; (b)/(c) the recipe's bf16 training step of a GPT-Neo-1.3B-shaped
#                   model (random weights, 24 blocks) and of SmolLM2 for knowhira, hira, peft-hira, lora, fft:
#                   tokens/s, TFLOP/s and the share of --peak_tflops (MFU), peak memory; (e) evaluation
#                   throughput (generation and loglik) at batch 1, 16 and 64
#   precision.json  20 steps of knowhira on the same records in bf16 (--load_bit 16 --mixed_precision bf16) and
#                   in fp32: both loss curves and their largest relative difference (tolerance 5e-2); and bf16
#                   with --torch_compile against bf16 eager (same tolerance), with each run's median step time
#   dist.json       the distributed paths at world size 1 under torchrun (NCCL on a GPU, gloo on a CPU): DDP,
#                   and FSDP2 (--fsdp), 4 steps each: exit codes and losses against the single process's
#   README.md       the tables (scripts/gpu_report.py)
# Usage:  bash scripts/gpu_check.sh          on the GPU machine (KNOWHIRA_DATA_DIR: the data folder)
#         bash scripts/gpu_check.sh --dry    tiny shapes on any device, CPU included, into $OUT (default
#                                            runs/gpu_check_dry): checks the script itself (tests/test_gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = --dry ] && DRY=1
PY=${PY:-.venv/bin/python}
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
TOKENIZER=${KNOWHIRA_TOKENIZER_DIR:-../shared/tokenizers/gpt2}
MODEL=${MODEL:-$(bash scripts/fetch_smollm2.sh)}  # the precision and distributed parts train on it
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
if [ "$DRY" = 1 ]; then OUT=${OUT:-runs/gpu_check_dry}; else OUT=${OUT:-docs/gpu/${DEVICE}_$(date +%Y%m%d)}; fi
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false

echo "== 1. environment -> $OUT/env.json"
"$PY" - "$OUT/env.json" <<'PYEOF'
import json, platform, sys, torch
gpu = torch.cuda.is_available()
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
       "device": torch.cuda.get_device_name(0) if gpu else "cpu",
       "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None,
       "bf16": torch.cuda.is_bf16_supported() if gpu else True, "gpus": torch.cuda.device_count()}
open(sys.argv[1], "w").write(json.dumps(env, indent=1))
print(env)
PYEOF

echo "== 2. benchmark -> $OUT/bench.json"
if [ "$DRY" = 1 ]; then
  SIZES=(--sections a,b --smollm2 none --layer_dim 32 --tokens 16 --layer_batch 2 --r 4 --repeats 1 --warmup 0
         --infer_repeats 1 --neo_hidden 32 --neo_heads 2 --neo_layers 1 --step_batch 2 --step_data boolq
         --step_records 4 --cutoff_len 48 --step_repeats 1 --step_warmup 0 --methods knowhira,lora)
else
  SIZES=(--sections a,b,c,e --smollm2 "$MODEL" --layer_dtype bf16 --dtype bf16 --neo_layers 24 --step_batch 8
         --step_records 64 --step_repeats 10 --eval_batches 1,16,64 --eval_n 64 --methods knowhira,hira,peft-hira,lora,fft
         --torch_compile)
fi
"$PY" -m scripts.bench "${SIZES[@]}" --gptneo_shaped --data_dir "$DATA_DIR" --tokenizer "$TOKENIZER" --out "$OUT/bench.json"

# the training flags of parts 3 and 4: knowhira, cloze format, ARC-Challenge (the smallest train file)
STEPS=$([ "$DRY" = 1 ] && echo 2 || echo 20)
BATCH=$([ "$DRY" = 1 ] && echo 2 || echo 8)
TRAIN=(train_knowhira.py --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset ARC-Challenge --answer_format cloze
       --peft_type knowhira --r_ab 8 --lr 2e-3 --seed 1 --batch "$BATCH" --val_size 0 --save_steps 1000
       --cache_dir none --output_folder "$OUT/runs")
rm -rf "$OUT/runs"

echo "== 3. bf16 against fp32, and compiled bf16 against eager bf16, $STEPS steps -> $OUT/precision.json"
"$PY" "${TRAIN[@]}" --max_steps "$STEPS" --run_name fp32
"$PY" "${TRAIN[@]}" --max_steps "$STEPS" --run_name bf16 --load_bit 16 --mixed_precision bf16
"$PY" "${TRAIN[@]}" --max_steps "$STEPS" --run_name bf16_compiled --load_bit 16 --mixed_precision bf16 --torch_compile

echo "== 4. torchrun at world size 1: DDP and FSDP2 -> $OUT/dist.json"
DIST_STEPS=$([ "$DRY" = 1 ] && echo 2 || echo 4)
"$PY" "${TRAIN[@]}" --max_steps "$DIST_STEPS" --run_name single
for kind in ddp fsdp; do
  flags=()
  [ "$kind" = fsdp ] && flags=(--fsdp)
  set +e
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "${TRAIN[@]}" --max_steps "$DIST_STEPS" \
    --run_name "$kind" "${flags[@]}" > "$OUT/$kind.console.txt" 2>&1
  echo $? > "$OUT/$kind.rc"
  set -e
  tail -n 3 "$OUT/$kind.console.txt"
done

rm -rf "$OUT/runs"/*/checkpoints "$OUT/runs"/*/final "$OUT/runs"/*/best "$OUT/runs"/*/tb  # no weights in git
"$PY" scripts/gpu_report.py "$OUT"  # exit 1 when a part failed (a distributed run, or bf16 beyond tolerance)

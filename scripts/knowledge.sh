#!/usr/bin/env bash
# The knowledge-task experiment (issue 27), its design fixed before any result: see
# docs/experiments/knowledge_20261205/README.md. One command per phase; every phase is resumable (finished
# runs and evaluated tasks are skipped, an unfinished run continues with --resume), so it spans sessions:
#   bash scripts/knowledge.sh pilot   # knowhira seed 1, lr 2e-3, 400 steps, in the text and in the cloze answer
#                                     # format; each scored in its own form on 500 seeded questions per knowledge
#                                     # task beside zero-shot scored the same way; the pre-registered rule
#                                     # (scripts/knowledge_rules.py format) writes the chosen format to $DOCS/pilot/
#   bash scripts/knowledge.sh sweep   # 3 rates per method on a log grid (knowhira and hira share one), 120 steps,
#                                     # seed 1, validation accuracy at the end; a best rate at the grid's edge
#                                     # adds one rate beyond it
#   bash scripts/knowledge.sh main    # SEEDS x METHODS at the sweep's rates, 400 steps; the FINAL checkpoint of
#                                     # every finished run (and zero-shot) evaluated at once on the test files
#   bash scripts/knowledge.sh tables  # Δ vs zero-shot (seed groups and per seed, both metrics), knowhira − hira
#                                     # and knowhira − lora, the target check, curves and hours, the adapters
#   bash scripts/knowledge.sh all     # the four in order
# Protocol (one for all runs): SmolLM2-135M-Instruct; mix:ARC-Easy,ARC-Challenge,openbookqa (no BoolQ: it
# teaches only a prior); r=32 on q,k,v,up,down; batch 8; warmup 20; cosine; validation 240 records of the mix.
# Each finished run's small outputs go to $DOCS/<run>/, its evaluations' to $DOCS/<format>/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MODEL=${MODEL:-$(bash scripts/fetch_smollm2.sh)}
NAME=${NAME:-knowledge_20261205}
RUNS=${RUNS:-runs/$NAME}
DOCS=${DOCS:-docs/experiments/$NAME}
METHODS=${METHODS:-"knowhira hira lora fft"}
SEEDS=${SEEDS:-"1 2 3"}
MIX=ARC-Easy,ARC-Challenge,openbookqa
STEPS=400
SWEEP_STEPS=120
PILOT_N=500
# learning-rate grids (log-spaced; knowhira and hira share one) and the rate beyond each edge
declare -A GRID=([knowhira]="1e-3 3e-3 1e-2" [hira]="1e-3 3e-3 1e-2" [lora]="3e-4 1e-3 3e-3" [fft]="1e-5 3e-5 1e-4")
declare -A BELOW=([knowhira]=3e-4 [hira]=3e-4 [lora]=1e-4 [fft]=3e-6)
declare -A ABOVE=([knowhira]=3e-2 [hira]=3e-2 [lora]=1e-2 [fft]=3e-4)
declare -A EXTRA=([hira]="--ortho_lambda 0")  # plain HiRA has no orthogonality term
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false
source scripts/common.sh

train() {  # run name, method, learning rate, seed, steps, answer format, validation every N steps
  local extra
  read -ra extra <<< "${EXTRA[$2]:-}"
  train_run "$1" --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset "mix:$MIX" --answer_format "$6" \
    --protocol clean --peft_type "$2" --r_ab 32 --target_modules q_proj,k_proj,v_proj,up_proj,down_proj \
    --lr "$3" --seed "$4" --max_steps "$5" --batch 8 --warmup 20 --lr_scheduler cosine --val_size 240 \
    --eval_steps "$7" --best_metric val_acc --validate_at_start --save_steps 50 --keep_checkpoints 1 \
    "${extra[@]}"
  rm -rf "${RUNS:?}/$1/best"  # the final checkpoint is the one evaluated and analysed: best/ is not used
}

format_flags() {  # the evaluation flags of an answer format: each scored in its own form
  case $1 in
    text) echo "--answer_format text --eval_mode loglik --protocol clean" ;;
    cloze) echo "--eval_mode cloze" ;;
    *) echo "unknown answer format '$1' (text|cloze)" >&2; exit 2 ;;
  esac
}

evaluate() {  # format, run name (or zeroshot), then the evaluation's place under $RUNS and its tasks/size
  local fmt=$1 name=$2 flags adapter=()
  read -ra flags <<< "$(format_flags "$fmt")"
  [ "$name" = zeroshot ] || adapter=(--adapter final)  # the final checkpoint: best/ gives no test number
  eval_run "$3/$name" "$name" "$4" "${flags[@]}" "${adapter[@]}" --eval_batch 16 "${@:5}"
}

pilot() {
  local fmt
  for fmt in text cloze; do
    train "pilot_${fmt}_knowhira_s1" knowhira 2e-3 1 "$STEPS" "$fmt" 100
  done
  local m1 m2
  for fmt in text cloze; do
    evaluate "$fmt" zeroshot "pilot/$fmt" "$MIX" --max_examples "$PILOT_N"
    evaluate "$fmt" "pilot_${fmt}_knowhira_s1" "pilot/$fmt" "$MIX" --max_examples "$PILOT_N"
    m1=$([ "$fmt" = cloze ] && echo acc_norm || echo acc)  # the format's fixed metric, then the other
    m2=$([ "$m1" = acc ] && echo acc_norm || echo acc)
    "$PY" analyze_results.py "$DOCS/pilot/$fmt" --baseline zeroshot --no_seed_groups --metric "$m1" \
      --out "$DOCS/pilot/summary_$fmt" >/dev/null
    "$PY" analyze_results.py "$DOCS/pilot/$fmt" --baseline zeroshot --no_seed_groups --metric "$m2" \
      --out "$DOCS/pilot/summary_${fmt}_$m2" >/dev/null
  done
  "$PY" -m scripts.knowledge_rules format "$DOCS/pilot"
}

chosen_format() {
  local file=$DOCS/pilot/format
  [ -f "$file" ] || { echo "no $file: run the pilot phase first" >&2; exit 2; }
  cat "$file"
}

sweep() {
  local fmt i m lrs lr
  fmt=$(chosen_format)
  for i in 1 0 2; do  # the middle rate of every method first
    for m in $METHODS; do
      read -ra lrs <<< "${GRID[$m]}"
      train "sweep_${m}_lr${lrs[$i]}" "$m" "${lrs[$i]}" 1 "$SWEEP_STEPS" "$fmt" "$SWEEP_STEPS"
    done
  done
  for m in $METHODS; do  # a best rate at an edge of the grid: one rate beyond it
    read -ra lrs <<< "${GRID[$m]}"
    lr=$(chosen_rate "$m")
    if [ "$lr" = "$(printf '%g' "${lrs[0]}")" ]; then lr=${BELOW[$m]}
    elif [ "$lr" = "$(printf '%g' "${lrs[2]}")" ]; then lr=${ABOVE[$m]}
    else continue; fi
    train "sweep_${m}_lr$lr" "$m" "$lr" 1 "$SWEEP_STEPS" "$fmt" "$SWEEP_STEPS"
  done
  "$PY" -m scripts.sweep_table "$DOCS" --out "$DOCS/sweep.md" >/dev/null
}

chosen_rate() {  # the sweep's rate for a method (scripts/sweep_table.py's rule: highest validation accuracy)
  "$PY" -m scripts.sweep_table "$DOCS" --out "$RUNS/.sweep.md" | sed -n "s/^LR_$1=//p"
}

EVAL_KNOWLEDGE=ARC-Easy,ARC-Challenge,openbookqa  # every question of the test files
main_eval() {  # format, run name (or zeroshot): the knowledge tasks whole, BoolQ (500, transfer), PIQA
  local fmt=$1
  evaluate "$fmt" "$2" "$fmt" "$EVAL_KNOWLEDGE"
  evaluate "$fmt" "$2" "$fmt" boolq --max_examples 500
  if [ "$fmt" = cloze ]; then  # PIQA in cloze form, whole: transfer and knowledge kept in one
    evaluate "$fmt" "$2" "$fmt" piqa
  else  # PIQA 500 in the text form (transfer); knowledge kept or lost: cloze on all of ARC-Easy and PIQA
    evaluate "$fmt" "$2" "$fmt" piqa --max_examples 500
    evaluate cloze "$2" cloze ARC-Easy,piqa
  fi
}

main_runs() {
  local fmt seed m lr
  fmt=$(chosen_format)
  main_eval "$fmt" zeroshot
  for seed in $SEEDS; do
    for m in $METHODS; do
      lr=$(chosen_rate "$m")
      [ -n "$lr" ] || { echo "no finished sweep run of $m: run the sweep phase first" >&2; exit 2; }
      train "${m}_s$seed" "$m" "$lr" "$seed" "$STEPS" "$fmt" 50
      main_eval "$fmt" "${m}_s$seed"
    done
  done
}

tables() {
  local fmt kind m m1 m2 runs=() vs
  fmt=$(chosen_format)
  for kind in $fmt $([ "$fmt" = text ] && echo cloze); do
    [ -d "$DOCS/$kind" ] || continue
    vs=()  # knowhira − hira and knowhira − lora (over all their seeds)
    for m in hira lora; do
      if [ -d "$DOCS/$kind/knowhira_s1" ] && [ -d "$DOCS/$kind/${m}_s1" ]; then
        vs+=(--compare "$DOCS/$kind/knowhira_s1" "$DOCS/$kind/${m}_s1")
      fi
    done
    m1=$([ "$kind" = cloze ] && echo acc_norm || echo acc)  # the format's fixed metric first
    m2=$([ "$m1" = acc ] && echo acc_norm || echo acc)
    "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --metric "$m1" --out "$DOCS/summary_$kind" "${vs[@]}"
    "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --metric "$m1" --no_seed_groups \
      --out "$DOCS/summary_${kind}_per_seed"
    "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --metric "$m2" --out "$DOCS/summary_${kind}_$m2" "${vs[@]}"
  done
  "$PY" -m scripts.knowledge_rules target "$DOCS/$fmt"
  "$PY" -m scripts.sweep_table "$DOCS" --main --out "$DOCS/main_curves.md"  # curves over seeds, hours
  for m in $METHODS; do [ -d "$RUNS/${m}_s1" ] && runs+=("$RUNS/${m}_s1"); done
  if [ ${#runs[@]} -eq 0 ]; then  # it reads the weights, which stay in $RUNS (not in git)
    echo "analyze_adapter: no seed-1 run in $RUNS; $DOCS/adapters left as it is" >&2; return 0
  fi
  "$PY" analyze_adapter.py "${runs[@]}" --results "$DOCS/$fmt" --out "$DOCS/adapters"
}

case "${1:-all}" in
  pilot) pilot ;;
  sweep) sweep ;;
  main) main_runs ;;
  tables) tables ;;
  all) pilot; sweep; main_runs; tables ;;
  *) echo "usage: $0 pilot|sweep|main|tables|all" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The 200-step showcase (docs/experiments/smollm2_20261124/README.md), one command per phase; every phase is
# resumable (finished runs are skipped, an unfinished one continues with --resume), so it can span sessions:
#   bash scripts/showcase.sh sweep    # SWEEP_STEPS steps per (method, learning rate): validation accuracy
#   bash scripts/showcase.sh main     # SEEDS seeds per method at its chosen rate (LR_<method>), STEPS steps;
#                                     # zero-shot and each finished run are evaluated in the text format at once,
#                                     # so the main table's predictions are committed with the run
#   bash scripts/showcase.sh ablation # KnowHiRA with its gates at GATE_LR_SCALE x the rate (ABLATION_SEEDS),
#                                     # evaluated in the text format at once
#   bash scripts/showcase.sh long     # the budget question: LONG_METHODS at LONG_STEPS steps (seed 1, their
#                                     # chosen rates), evaluated in the text format at once
#   bash scripts/showcase.sh eval     # every finished main and ablation run and zero-shot, same examples;
#                                     # KINDS picks the evaluations (text cloze label), in that order
#   bash scripts/showcase.sh tables   # analyze_results.py tables (Δ vs zero-shot per seed group and per
#                                     # seed, knowhira − each method; acc and acc_norm), the main runs' validation
#                                     # curves and hours, analyze_adapter.py (gates, forgetting) of the
#                                     # seed-1 runs
#   bash scripts/showcase.sh all      # the six in order
# Protocol (one for all): SmolLM2-135M-Instruct; the mix of every train file of the data folder;
# --answer_format text; --protocol clean; r=32 on q,k,v,up,down; batch 8; warmup 10; cosine decay;
# validation accuracy on 120 held-out records before training (step 0: the untrained model) and every
# EVAL_STEPS steps picks best/.
# Each finished run's small outputs (args.json, log.jsonl, train_summary.json, loss.png; never weights)
# go to $DOCS/<run>/ as soon as it finishes, its evaluations' (results.json, eval/*.jsonl) to
# $DOCS/{text,cloze,label}/<run>/; the runs themselves live in $RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${KNOWHIRA_DATA_DIR:-data/commonsense}
MODEL=${MODEL:-$(bash scripts/fetch_smollm2.sh)}
NAME=${NAME:-smollm2_20261124}
RUNS=${RUNS:-runs/$NAME}
DOCS=${DOCS:-docs/experiments/$NAME}
METHODS=${METHODS:-"knowhira hira lora fft"}
SWEEP_STEPS=${SWEEP_STEPS:-80}
STEPS=${STEPS:-200}
EVAL_STEPS=${EVAL_STEPS:-40}
SEEDS=${SEEDS:-"1 2 3"}
ABLATION_SEEDS=${ABLATION_SEEDS:-"1"}
GATE_LR_SCALE=${GATE_LR_SCALE:-30}
LONG_METHODS=${LONG_METHODS:-"knowhira hira"}
LONG_STEPS=${LONG_STEPS:-1000}
LONG_EVAL_STEPS=${LONG_EVAL_STEPS:-200}
EVAL_N=${EVAL_N:-500}
KINDS=${KINDS:-"text cloze label"}
EVAL_TASKS=ARC-Easy,ARC-Challenge,openbookqa,boolq,piqa
# learning-rate grids of the sweep (log-spaced, around each family's usual rates)
declare -A GRID=([fft]="1e-5 3e-5 1e-4" [lora]="3e-4 1e-3 3e-3" [dora]="3e-4 1e-3 3e-3"
                 [hira]="1e-3 3e-3 1e-2" [knowhira]="1e-3 3e-3 1e-2" [kasa]="3e-4 1e-3 3e-3"
                 [hira_sb]="1e-3 3e-3 1e-2")
# plain HiRA has no orthogonality term
declare -A EXTRA=([hira]="--ortho_lambda 0")
source scripts/common.sh
MIX=${MIX:-$(train_mix "$DATA_DIR")}
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false

train() {  # run name, method, learning rate, seed, steps, [extra flags...]
  local extra
  read -ra extra <<< "${EXTRA[$2]:-}"
  extra+=("${@:6}")
  train_run "$1" --model_name "$MODEL" --data_dir "$DATA_DIR" --dataset "mix:$MIX" \
    --answer_format text --protocol clean --peft_type "$2" --r_ab 32 \
    --target_modules q_proj,k_proj,v_proj,up_proj,down_proj --lr "$3" --seed "$4" --max_steps "$5" \
    --batch 8 --warmup 10 --lr_scheduler cosine --val_size 120 --eval_steps "$EVAL_STEPS" \
    --best_metric val_acc --validate_at_start --save_steps 20 --keep_checkpoints 1 "${extra[@]}"
}

evaluate() {  # kind (text|cloze|label), run name (or "zeroshot"): results in $RUNS/<kind>/<name>/
  local kind=$1 name=$2 args
  [ -f "$RUNS/$kind/$name/.done" ] && return 0
  case $kind in
    # (a) text format: ARC-Easy, ARC-Challenge, OBQA, BoolQ and PIQA (transfer) on EVAL_N seeded examples
    text) args=(--answer_format text --eval_mode loglik --max_examples "$EVAL_N") ;;
    # (b) knowledge kept or lost: lm-eval-style cloze on the full ARC-Easy and PIQA test files
    cloze) args=(--eval_mode cloze) ;;
    # (c) the label format on the same examples as (a)
    label) args=(--answer_format label --eval_mode loglik --max_examples "$EVAL_N") ;;
  esac
  eval_run "$kind/$name" "$name" "$([ "$kind" = cloze ] && echo ARC-Easy,piqa || echo "$EVAL_TASKS")" \
    --protocol clean --eval_batch 16 "${args[@]}"
  touch "$RUNS/$kind/$name/.done"
}

sweep() {  # the middle rate of every method first, then the low ones, then the high ones
  local i m lrs
  for i in 1 0 2; do
    for m in $METHODS; do
      read -ra lrs <<< "${GRID[$m]}"
      train "sweep_${m}_lr${lrs[$i]}" "$m" "${lrs[$i]}" 1 "$SWEEP_STEPS"
    done
  done
  "$PY" -m scripts.sweep_table "$DOCS" --out "$DOCS/sweep.md"
}

main_runs() {
  evaluate text zeroshot
  for seed in $SEEDS; do
    for m in $METHODS; do
      local var="LR_$m"
      train "${m}_s$seed" "$m" "${!var:?set $var to the rate the sweep chose}" "$seed" "$STEPS"
      evaluate text "${m}_s$seed"
    done
  done
}

ablation() {
  local seed
  for seed in $ABLATION_SEEDS; do
    train "knowhira_gate${GATE_LR_SCALE}_s$seed" knowhira "${LR_knowhira:?set LR_knowhira}" "$seed" "$STEPS" \
      --gate_lr_scale "$GATE_LR_SCALE"
    evaluate text "knowhira_gate${GATE_LR_SCALE}_s$seed"
  done
}

long_runs() {
  local m var
  for m in $LONG_METHODS; do
    var="LR_$m"
    EVAL_STEPS=$LONG_EVAL_STEPS train "${m}_long${LONG_STEPS}_s1" "$m" "${!var:?set $var to the rate the sweep chose}" 1 \
      "$LONG_STEPS"
    evaluate text "${m}_long${LONG_STEPS}_s1"
  done
}

eval_all() {  # every evaluation kind over all runs before the next kind: (a) is the main table
  local kind seed m run runs=(zeroshot)
  for seed in $SEEDS; do for m in $METHODS; do runs+=("${m}_s$seed"); done; done
  for seed in $ABLATION_SEEDS; do runs+=("knowhira_gate${GATE_LR_SCALE}_s$seed"); done
  for kind in $KINDS; do  # checked before anything runs: a typo must not surface hours in
    case $kind in text|cloze|label) ;; *) echo "KINDS: unknown evaluation '$kind' (text|cloze|label)" >&2; exit 2 ;; esac
  done
  for kind in $KINDS; do
    for run in "${runs[@]}"; do
      if [ "$run" = zeroshot ] || [ -f "$RUNS/$run/train_summary.json" ]; then evaluate "$kind" "$run"; fi
    done
  done
}

tables() {  # analyze_results.py per evaluation kind; analyze_adapter.py over each configuration's seed-1 run
  local kind gate=knowhira_gate${GATE_LR_SCALE}_s1 long_k=knowhira_long${LONG_STEPS}_s1 long_h=hira_long${LONG_STEPS}_s1 runs=() vs m
  for kind in text cloze label; do
    [ -d "$DOCS/$kind" ] || continue
    vs=()  # knowhira − every other method (over all their seeds), where both are evaluated
    for m in $METHODS; do
      if [ "$m" != knowhira ] && [ -d "$DOCS/$kind/knowhira_s1" ] && [ -d "$DOCS/$kind/${m}_s1" ]; then
        vs+=(--compare "$DOCS/$kind/knowhira_s1" "$DOCS/$kind/${m}_s1")
      fi
    done
    # seed groups (mean ± std)
    "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --out "$DOCS/summary_$kind" "${vs[@]}"
    # one row per seed: Δ vs zero-shot and McNemar p of every seed (the target: p < 0.01 in each);
    # the gate ablation against knowhira of the same seed
    "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --no_seed_groups --out "$DOCS/summary_${kind}_per_seed" \
      $( [ -d "$DOCS/$kind/$gate" ] && echo --compare "$DOCS/$kind/$gate" "$DOCS/$kind/knowhira_s1" ) \
      $( [ -d "$DOCS/$kind/$long_k" ] && [ -d "$DOCS/$kind/$long_h" ] && echo --compare "$DOCS/$kind/$long_k" "$DOCS/$kind/$long_h" )
    # the length-normalised score (score / option length; text and cloze only: label options are one word)
    [ "$kind" = label ] || "$PY" analyze_results.py "$DOCS/$kind" --baseline zeroshot --metric acc_norm \
      --out "$DOCS/summary_${kind}_norm" "${vs[@]}"
  done
  "$PY" -m scripts.sweep_table "$DOCS" --main --out "$DOCS/main_curves.md"  # curves over seeds, hours
  for m in $METHODS $gate; do if [ -d "$RUNS/${m%_s1}_s1" ]; then runs+=("$RUNS/${m%_s1}_s1"); fi; done
  if [ ${#runs[@]} -eq 0 ]; then  # it reads the weights, which stay in $RUNS (not in git)
    echo "analyze_adapter: no seed-1 run in $RUNS; $DOCS/adapters left as it is" >&2; return 0
  fi
  "$PY" analyze_adapter.py "${runs[@]}" --results "$DOCS/text" --out "$DOCS/adapters"  # acc: text format
}

case "${1:-all}" in
  sweep) sweep ;;
  main) main_runs ;;
  ablation) ablation ;;
  long) long_runs ;;
  eval) eval_all ;;
  tables) tables ;;
  all) sweep; main_runs; ablation; long_runs; eval_all; tables ;;
  *) echo "usage: $0 sweep|main|ablation|long|eval|tables|all" >&2; exit 2 ;;
esac

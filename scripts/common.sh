# Sourced by the shell scripts: the one list of the eight tasks, and the training mix of a data folder.
TASKS="boolq piqa social_i_qa hellaswag winogrande ARC-Easy ARC-Challenge openbookqa"

# the tasks a 135M model can learn knowledge from (BoolQ's LLM-Adapters file has no passage: it teaches a prior)
KNOWLEDGE_TASKS="ARC-Easy ARC-Challenge openbookqa"

# every task of $2 (default: all eight) with a <data_dir>/<task>/train.json, comma-separated (--dataset mix:...)
train_mix() {
  local mix="" t
  for t in ${2:-$TASKS}; do
    [ -f "$1/$t/train.json" ] && mix="$mix${mix:+,}$t"
  done
  echo "$mix"
}

# ---- experiment phases (scripts/showcase.sh, scripts/knowledge.sh); they set RUNS, DOCS, PY, MODEL, DATA_DIR
# copy a finished folder's small outputs: $RUNS/<path> -> $DOCS/<path> (never weights)
keep() {
  local src=$RUNS/$1 dst=$DOCS/$1 f
  mkdir -p "$dst"
  for f in args.json log.jsonl train_summary.json loss.png results.json; do
    [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
  done
  if [ -d "$src/eval" ]; then mkdir -p "$dst/eval"; cp "$src"/eval/*.jsonl "$dst/eval/"; fi
  return 0
}

# train_run NAME FLAGS...: a started $RUNS/NAME continues with --resume, a finished one is left as it is, else
# it trains with FLAGS; then its resume state is dropped (best/ and final/ stay) and its outputs kept
train_run() {
  local name=$1 dir=$RUNS/$1
  shift
  if [ -f "$dir/args.json" ] && [ ! -f "$dir/train_summary.json" ]; then
    "$PY" train_knowhira.py --resume "$dir"
  elif [ ! -f "$dir/args.json" ]; then
    "$PY" train_knowhira.py "$@" --output_folder "$RUNS" --run_name "$name"
  fi
  rm -rf "$dir/checkpoints"
  keep "$name"
}

# eval_run OUT RUN TASKS FLAGS...: evaluate $RUNS/RUN (or "zeroshot": $MODEL untouched) on each task of the
# comma list TASKS, one call per task, into $RUNS/OUT (a task done is marked and skipped), then keep OUT
eval_run() {
  local out=$1 ckpt=$RUNS/$2 tasks=$3 base=() task
  shift 3
  if [ "$(basename "$ckpt")" = zeroshot ]; then ckpt=none; base=(--model_name "$MODEL"); fi
  for task in ${tasks//,/ }; do
    [ -f "$RUNS/$out/.done_$task" ] && continue
    "$PY" train_knowhira.py --ckpt "$ckpt" "${base[@]}" --data_dir "$DATA_DIR" --dataset "$task" "$@" \
      --results_dir "$RUNS/$out"
    touch "$RUNS/$out/.done_$task"
  done
  keep "$out"
}

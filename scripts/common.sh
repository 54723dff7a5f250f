# Sourced by the shell scripts: the one list of the eight tasks, and the training mix of a data folder.
TASKS="boolq piqa social_i_qa hellaswag winogrande ARC-Easy ARC-Challenge openbookqa"

# every task with a <data_dir>/<task>/train.json, comma-separated (the --dataset mix:... list)
train_mix() {
  local mix="" t
  for t in $TASKS; do
    [ -f "$1/$t/train.json" ] && mix="$mix${mix:+,}$t"
  done
  echo "$mix"
}

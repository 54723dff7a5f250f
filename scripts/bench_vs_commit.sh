#!/usr/bin/env bash
# The recipe's SmolLM2 training step (benchmark section b) of another commit against this tree, in one
# run, alternated (REV, this tree, REV, this tree, ...) so that machine drift hits both alike:
#   bash scripts/bench_vs_commit.sh REV [ROUNDS]        (env: METHOD=knowhira BATCH=8 REPEATS=3 OUT=...)
# Prints each side's median ms/step and examples/s and their ratio; writes OUT (JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bash scripts/bench_vs_commit.sh REV [ROUNDS]}
ROUNDS=${2:-2}
METHOD=${METHOD:-knowhira}
BATCH=${BATCH:-8}
REPEATS=${REPEATS:-3}
OUT=${OUT:-docs/bench_vs_$(git rev-parse --short "$REV").json}
PY=$PWD/.venv/bin/python
: "${KNOWHIRA_DATA_DIR:?set KNOWHIRA_DATA_DIR (absolute)}"
export KNOWHIRA_SMOLLM2_GGUF=${KNOWHIRA_SMOLLM2_GGUF:-$PWD/weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
work=$(mktemp -d)
git worktree add -q --detach "$work/tree" "$REV"
trap 'git worktree remove --force "$work/tree"; rm -rf "$work"' EXIT
for i in $(seq "$ROUNDS"); do
  for side in base head; do
    dir=$([ "$side" = base ] && echo "$work/tree" || echo "$PWD")
    (cd "$dir" && "$PY" -m scripts.bench --sections b --methods "$METHOD" --step_batch "$BATCH" \
      --step_repeats "$REPEATS" --step_warmup 1 --data_dir "$KNOWHIRA_DATA_DIR" --out "$work/$side$i.json" \
      > "$work/$side$i.log" 2>&1) || { tail -20 "$work/$side$i.log"; exit 1; }
  done
done
"$PY" - "$work" "$ROUNDS" "$METHOD" "$BATCH" "$REV" "$OUT" <<'EOF'
import json, statistics, sys
work, rounds, method, batch, rev, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
sides = {}
for side in ("base", "head"):
    times = [t for i in range(1, rounds + 1)
             for t in json.load(open(f"{work}/{side}{i}.json"))["step"]["smollm2"]["all_s"][method]]
    sides[side] = {"all_s": times, "median_s": statistics.median(times),
                   "examples_per_s": batch / statistics.median(times)}
result = {"rev": rev, "method": method, "batch": batch, "rounds": rounds, **sides,
          "speedup_examples_per_s": sides["head"]["examples_per_s"] / sides["base"]["examples_per_s"]}
json.dump(result, open(out, "w"), indent=1)
for side, label in (("base", rev), ("head", "this tree")):
    print(f"{label:>12}: {1000 * sides[side]['median_s']:.0f} ms/step, {sides[side]['examples_per_s']:.2f} examples/s")
print(f"speed-up (examples/s, this tree / {rev}): {result['speedup_examples_per_s']:.2f}x; wrote {out}")
EOF

#!/usr/bin/env bash
# Re-tune one method's learning rate under the compare_methods.sh protocol (same data, steps, batch,
# seed): train once per LR and print each run's best validation accuracy (higher is better) and loss.
#   METHOD=knowhira LRS="3e-4 1e-3 3e-3" MAX_STEPS=40 bash scripts/sweep_lr.sh
# Values reach Python through argv, never its source; a failed run shows the tail of its log.
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${METHOD:?set METHOD}
LRS=${LRS:-"1e-4 3e-4 1e-3 3e-3"}
OUT=${OUT:-runs/sweep_$METHOD}
for lr in $LRS; do
  mkdir -p "$OUT/lr$lr"
  log="$OUT/lr$lr/sweep.log"
  if ! METHODS=$METHOD LR_OVERRIDE=$lr SKIP_EVAL=1 OUT="$OUT/lr$lr" bash scripts/compare_methods.sh >"$log" 2>&1; then
    echo "error: $METHOD at lr $lr failed; the end of $log:" >&2
    tail -n 5 "$log" >&2
    exit 2
  fi
  .venv/bin/python - "$OUT/lr$lr/$METHOD/train_summary.json" "$METHOD" "$lr" <<'PYEOF'
import json, sys
path, method, lr = sys.argv[1:]
s = json.load(open(path))
print(f"{method} lr={lr} best_val_acc={s.get('best_val_acc')} best_val_loss={s['best_val_loss']:.4f}")
PYEOF
done

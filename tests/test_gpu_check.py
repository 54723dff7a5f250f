"""scripts/gpu_check.sh --dry: the one-command GPU check runs end to end at tiny shapes on this machine (CPU:
gloo instead of NCCL, bf16 on the CPU), so it is known to work before a GPU is lent. Tiny RANDOM GPT-Neo."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_its_tables(tmp_path, tiny_neo_dir, data_dir, gpt2_tokenizer):
    out = tmp_path / "gpu"
    env = {**os.environ, "PY": sys.executable, "MODEL": str(tiny_neo_dir), "OUT": str(out), "OMP_NUM_THREADS": "1",
           "KNOWHIRA_DATA_DIR": str(data_dir), "KNOWHIRA_TOKENIZER_DIR": gpt2_tokenizer.name_or_path}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    env_json = json.loads((out / "env.json").read_text())
    assert env_json["torch"] and env_json["device"]
    bench = json.loads((out / "bench.json").read_text())
    assert all(t > 0 for t in bench["step"]["gptneo_shaped"]["median_s"].values())
    precision = json.loads((out / "precision.json").read_text())
    assert len(precision["fp32"]) == len(precision["bf16"]) == len(precision["bf16_compiled"]) == 2 and precision["ok"]
    assert 0 < precision["max_rel_diff"] <= precision["tolerance"]  # bf16 differs, within the tolerance
    assert precision["compiled_max_rel_diff"] <= precision["tolerance"]  # --torch_compile ran and agreed
    assert json.loads((out / "runs" / "bf16_compiled" / "args.json").read_text())["torch_compile"] is True
    dist = json.loads((out / "dist.json").read_text())
    for kind in ("ddp", "fsdp"):  # world size 1: the same losses as one process, up to float rounding
        assert dist[kind]["rc"] == 0 and dist[kind]["max_rel_diff_to_single"] < 1e-5, dist[kind]
    readme = (out / "README.md").read_text()
    assert "## bf16 against fp32, compiled against eager" in readme and "| ddp | 0 |" in readme
    assert not list(out.rglob("*.safetensors"))  # no weights left


def test_median_step_time_skips_the_first_half(tmp_path):
    """The compiled run's first steps compile: its step time is the median gap over the second half."""
    from scripts.gpu_report import median_step_s

    run = tmp_path / "run"
    run.mkdir()
    times = [0.0, 10.0, 11.0, 13.0, 14.0]  # gaps 10, 1, 2, 1: the 10 s compile is in the first half
    lines = [{"step": 0, "val_loss": 1.0}] + [{"step": i + 1, "loss_task": 1.0, "time": t} for i, t in enumerate(times)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert median_step_s(run) == 1.0
    assert median_step_s(tmp_path / "missing") is None

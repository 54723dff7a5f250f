"""The training commands and the Python API of the ORIGINAL KnowHiRA README, verbatim except for the
hub model name (a tiny RANDOMLY INITIALISED local model instead of EleutherAI/gpt-neo-1.3B, which
cannot be downloaded here). `--dataset common_170k` reads <data_dir>/commonsense_170k.json; the
default data folder comes from KNOWHIRA_DATA_DIR, set here to a folder holding a slice of real
records. (The evaluation command, download_all_eval_datasets.py, analyze_results.py with no argument
and run_fixed_evaluation.sh are in test_legacy_commands.py / test_train_cli.py; the multi-GPU script
in test_distributed.py.)"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def common_170k(tmp_path_factory, data_dir):
    """A folder holding 450 real records as commonsense_170k.json (the torchrun command's effective
    batch is 288) and 150 of them (the single-process command): the shortest boolq questions, to
    keep the 1,152 examples of the torchrun run cheap."""
    work = tmp_path_factory.mktemp("original")
    boolq = json.loads((data_dir / "boolq" / "train.json").read_text())
    records = sorted(boolq, key=lambda r: len(r["instruction"]))[:450]
    for name, n in (("torchrun", 450), ("single", 150)):
        (work / name / "data").mkdir(parents=True)
        (work / name / "data" / "commonsense_170k.json").write_text(json.dumps(records[:n]))
    return work


def run_cli(argv: list[str], work: Path, torchrun: int = 0):
    env = {**os.environ, "KNOWHIRA_DATA_DIR": str(work / "data"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
                 "--master_port=29501"] if torchrun else [sys.executable])
    return subprocess.run(launcher + [str(ROOT / "train_knowhira.py"), *argv], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def the_run(work: Path) -> Path:
    (run,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
    return run


def test_single_gpu_command(common_170k, tiny_neo_dir):
    work = common_170k / "single"
    p = run_cli(["--model_name", str(tiny_neo_dir), "--dataset", "common_170k", "--r_ab", "32",
                 "--knowledge_alpha", "0.6", "--ortho_lambda", "0.0001", "--svd_rank_ratio", "0.85",
                 "--spectrum_init_scale", "0.1", "--adaptive_gating", "--batch", "8", "--lr", "1e-4",
                 "--epoch", "3.0"], work)
    assert p.returncode == 0, p.stderr[-3000:]
    run = the_run(work)
    saved = json.loads((run / "args.json").read_text())
    assert (saved["r_ab"], saved["knowledge_alpha"], saved["ortho_lambda"], saved["svd_rank_ratio"],
            saved["spectrum_init_scale"], saved["adaptive_gating"], saved["epoch"]) == \
        (32, 0.6, 0.0001, 0.85, 0.1, True, 3.0)
    # 150 records - 120 validation = 30 -> 3 steps per epoch at batch 8; 3.0 epochs
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    assert (run / "best" / "knowhira_adapter.safetensors").is_file()


def test_torchrun_command(common_170k, tiny_neo_dir):
    """torchrun --nproc_per_node=2 --master_port=29501 train_knowhira.py ... --batch 12 --grad_acc 12
    --epoch 4.0: an effective batch of 12 x 12 x 2 = 288, so 330 training records give 1 step/epoch."""
    work = common_170k / "torchrun"
    p = run_cli(["--model_name", str(tiny_neo_dir), "--dataset", "common_170k", "--r_ab", "48",
                 "--knowledge_alpha", "0.7", "--batch", "12", "--grad_acc", "12", "--lr", "1e-4",
                 "--epoch", "4.0"], work, torchrun=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "= 288" in p.stdout + p.stderr
    run = the_run(work)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, gpt2_tokenizer):
    """A tiny RANDOM Llama with 4 key/value heads, so k_proj and v_proj are 48 x 48 and r = 32 fits."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    config = tiny_config("llama")
    config.num_key_value_heads = 4
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    gpt2_tokenizer.save_pretrained(str(out))
    return out


def test_python_api(tiny_llama_dir):
    """get_knowhira_models(model_name=..., r_ab=32, target_modules=[q, v, k, o], knowledge_alpha=0.6,
    ortho_lambda=0.0001) -> (model, tokenizer, config), adapters on exactly those layers."""
    from models.adapter import adapter_layers
    from models.get_models import get_knowhira_models, load_base_model

    model, tokenizer, config = get_knowhira_models(
        model_name=str(tiny_llama_dir), r_ab=32, target_modules=["q_proj", "v_proj", "k_proj", "o_proj"],
        knowledge_alpha=0.6, ortho_lambda=0.0001)
    assert (config.r_ab, config.knowledge_alpha, config.ortho_lambda) == (32, 0.6, 0.0001)
    layers = adapter_layers(model)
    assert sorted({n.rsplit(".", 1)[-1] for n in layers}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert len(layers) == 2 * 4
    # hidden 48: q, k, v, o all 48 x 48 -> r (in + out) + r per layer
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 4 * (32 * 96 + 32)
    base, _ = load_base_model(str(tiny_llama_dir))
    ids = torch.tensor([tokenizer("Is the sky blue?")["input_ids"]])
    with torch.no_grad():  # B = 0: the adapted model equals the base model at step 0
        assert torch.equal(model(ids).logits, base(ids).logits)
    sigma = layers["model.layers.0.self_attn.q_proj"].sigma_norm
    assert sigma[0] == 1 and torch.all(sigma[1:] <= 1) and not math.isclose(sigma[-1].item(), 1.0)


def test_llama_attention_targets_in_the_cli(tiny_llama_dir, small_data_dir, tmp_path):
    import train_knowhira

    assert train_knowhira.main(["--model_name", str(tiny_llama_dir), "--data_dir", str(small_data_dir),
                                "--dataset", "boolq", "--target_modules", "q_proj,k_proj,v_proj,o_proj",
                                "--init_ab", "kaiming,zero", "--r_ab", "4", "--batch", "2",
                                "--max_steps", "1", "--val_size", "4", "--output_folder", str(tmp_path),
                                "--run_name", "r"]) == 0
    saved = json.loads((tmp_path / "r" / "args.json").read_text())
    assert saved["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and saved["init_ab"] == "kaiming"

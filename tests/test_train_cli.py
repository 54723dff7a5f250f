"""train_knowhira.py end to end (subprocesses and in-process main()) on a tiny RANDOM GPT-Neo with
the real GPT-2 tokenizer: SIGKILL + --resume reproduces the uninterrupted run exactly (also when
killed in the middle of a checkpoint write), the run folder holds what it should, bad inputs fail
cleanly before anything is written, and a diverging run stops keeping its last good checkpoint."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_knowhira
from conftest import one_thread, run_main
from data.options import DataOptions
from models.get_models import ModelOptions
from models.methods.knowhira import KnowHiRAConfig
from training.checkpoint import FAULT_ENV
from training.loop import LoopConfig
from training.recipe import RunOptions

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_knowhira.py"
TARGETS = "q_proj,v_proj,out_proj,c_fc,c_proj"
R = 4
STEPS = 10
TIMEOUT = 300


def run_option_names() -> set[str]:
    """Fields of the model, data, loop and run option groups (every training run's args.json)."""
    return {f.name for cls in (ModelOptions, DataOptions, LoopConfig, RunOptions) for f in fields(cls)}


def cli_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop(FAULT_ENV, None)
    env.update(extra)
    return env


def train_args(model_dir, data_dir, out, name):
    return ["--model_name", str(model_dir), "--data_dir", str(data_dir),
            "--dataset", "mix:boolq,openbookqa", "--val_size", "4", "--cutoff_len", "128",
            "--batch", "2", "--max_steps", str(STEPS), "--save_steps", "2", "--eval_steps", "5",
            "--keep_checkpoints", "2", "--r_ab", str(R), "--lr", "1e-2", "--seed", "3",
            "--target_modules", TARGETS, "--output_folder", str(out), "--run_name", name]


def start(args, out, tag, **env):
    log = open(out / f"{tag}.console.txt", "w")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=cli_env(**env),
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def logged_steps(run_dir) -> list[int]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().split("\n")[:-1]:  # complete lines only
        steps.append(json.loads(line)["step"])
    return steps


def read_log(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line]


def wait(proc, out, tag):
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{tag} timed out:\n{(out / f'{tag}.console.txt').read_text()[-3000:]}")


def console(out, tag):
    return (out / f"{tag}.console.txt").read_text()[-3000:]


# ---- 5. three runs: A uninterrupted, B SIGKILLed mid-run, C killed inside a checkpoint write ----
@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_neo_dir, small_data_dir):
    out = tmp_path_factory.mktemp("cli_runs")
    args = {n: train_args(tiny_neo_dir, small_data_dir, out, n) for n in "ABC"}
    procs = {"A": start(args["A"], out, "A"), "B": start(args["B"], out, "B"),
             "C": start(args["C"], out, "C", **{FAULT_ENV: "6"})}
    info = {"out": out}
    deadline = time.time() + TIMEOUT
    while len(logged_steps(out / "B")) < 5:  # B: SIGKILL once it has logged >= 5 of 10 steps
        if procs["B"].poll() is not None or time.time() > deadline:
            for p in procs.values():
                p.kill()
            pytest.fail(f"run B ended before it could be killed:\n{console(out, 'B')}")
        time.sleep(0.02)
    os.kill(procs["B"].pid, signal.SIGKILL)
    info["rc_B"] = procs["B"].wait(timeout=60)
    info["B_steps_at_kill"] = logged_steps(out / "B")
    info["B_final_at_kill"] = (out / "B" / "final").exists()
    info["rc_C"] = wait(procs["C"], out, "C")
    ck = out / "C" / "checkpoints"
    info["C_at_kill"] = {"dirs": sorted(p.name for p in ck.iterdir() if p.is_dir()),
                         "tmp_files": sorted(p.name for p in (ck / "step_000006.tmp").iterdir())
                         if (ck / "step_000006.tmp").is_dir() else None,
                         "latest": (ck / "latest").read_text() if (ck / "latest").exists() else None,
                         "steps": logged_steps(out / "C")}
    info["rc_A"] = wait(procs["A"], out, "A")
    assert info["rc_A"] == 0, console(out, "A")
    # B resumes with --resume alone, C with its original training command plus --resume (what users type)
    resumed = {"B": start(["--resume", str(out / "B")], out, "B.resume"),
               "C": start([*args["C"], "--resume", str(out / "C")], out, "C.resume")}
    for n, p in resumed.items():
        info[f"rc_{n}_resume"] = wait(p, out, f"{n}.resume")
    return info


def test_run_B_was_killed_mid_run(runs):
    assert runs["rc_B"] == -signal.SIGKILL
    assert 5 <= max(runs["B_steps_at_kill"]) < STEPS and not runs["B_final_at_kill"]


def test_run_C_was_killed_inside_the_checkpoint_write(runs):
    at_kill = runs["C_at_kill"]
    assert runs["rc_C"] == -signal.SIGKILL
    # step 6's folder was half written (weights, no optimizer state) and never renamed
    assert at_kill["dirs"] == ["step_000002", "step_000004", "step_000006.tmp"]
    assert at_kill["tmp_files"] == ["trainable.safetensors"]
    assert at_kill["latest"] == "step_000004"
    assert at_kill["steps"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["B", "C"])
def test_resume_reproduces_the_uninterrupted_run(runs, name):
    out = runs["out"]
    assert runs[f"rc_{name}_resume"] == 0, console(out, f"{name}.resume")
    assert "resumed from" in console(out, f"{name}.resume")
    ref, got = read_log(out / "A"), read_log(out / name)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    for a, b in zip(ref, got):
        assert abs(a["loss_task"] - b["loss_task"]) <= 1e-6, (a["step"], a["loss_task"], b["loss_task"])
        assert abs(a["loss_reg"] - b["loss_reg"]) <= 1e-6
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert ("val_loss" in a) == ("val_loss" in b)
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) <= 1e-6
    for sub in ("final", "best"):
        wa = load_file(str(out / "A" / sub / "knowhira_adapter.safetensors"))
        wb = load_file(str(out / name / sub / "knowhira_adapter.safetensors"))
        assert wa.keys() == wb.keys() and len(wa) > 0
        for k in wa:
            assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, (sub, k)
    # no half-written checkpoint (or atomic-write temp file) is left anywhere in the run folder
    assert not list((out / name).rglob("*.tmp"))
    assert sorted(p.name for p in (out / name / "checkpoints").iterdir()) == \
        ["latest", "step_000008", "step_000010"]


# ---- 8 (+3, 9). what a finished run folder holds ---------------------------------------------
def test_run_dir_contents(runs, tiny_neo_dir):
    run = runs["out"] / "A"
    saved = json.loads((run / "args.json").read_text())
    cfg = json.loads((tiny_neo_dir / "config.json").read_text())
    h, inner, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_layers"]
    shapes = [(h, h), (h, h), (h, h), (h, inner), (inner, h)]  # q, v, out_proj, c_fc, c_proj
    assert saved["trainable_params"] == layers * sum(R * (i + o) + R for i, o in shapes) == 4648
    assert saved["n_train"] == 76 and saved["n_val"] == 4  # 40 boolq + 40 openbookqa - 4 held out
    assert saved["r_ab"] == R and saved["target_modules"] == TARGETS.split(",")
    # args.json: the model/data/loop/run options, only the chosen method's config fields, and counts
    assert saved.keys() == {*run_option_names(), "peft_type", *asdict(KnowHiRAConfig()),
                            "trainable_params", "n_train", "n_val", "data_records", "data_sha256"}
    assert saved["data_records"] == 80 and len(saved["data_sha256"]) == 64 and saved["allow_data_change"] is False
    assert saved["peft_type"] == "knowhira" and saved["resume"] is None and saved["run_name"] == "A"
    assert "kasa_alpha" not in saved and "lora_alpha" not in saved and "sb_eta" not in saved
    for sub in ("best", "final"):  # our own file names: not a peft folder (--export peft makes one)
        assert sorted(p.name for p in (run / sub).iterdir()) == \
            ["knowhira_adapter.json", "knowhira_adapter.safetensors"]
        adapter_cfg = json.loads((run / sub / "knowhira_adapter.json").read_text())
        # {"peft_type": name, **the method's config fields} (r_ab, not the layer's r)
        assert adapter_cfg == {"peft_type": "knowhira",
                               **{k: saved[k] for k in asdict(KnowHiRAConfig())}}
        assert adapter_cfg["r_ab"] == R and adapter_cfg["target_modules"] == TARGETS.split(",")
    weights = load_file(str(run / "final" / "knowhira_adapter.safetensors"))
    assert sum(v.numel() for k, v in weights.items()
               if k.rsplit(".", 1)[-1] in ("hira_A", "hira_B", "gate")) == 4648

    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert [r["step"] for r in log if "val_loss" in r] == [5, 10]  # --eval_steps 5
    lam = saved["ortho_lambda"]
    assert lam == 1e-3
    for r in log:  # 3. L_ortho is logged and enters the total with weight λ
        assert r["loss_reg"] > 0 and math.isfinite(r["loss_task"])
        assert r["loss_total"] == pytest.approx(r["loss_task"] + lam * r["loss_reg"], rel=1e-12)
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    assert log[0]["lr"] == pytest.approx(1e-2) and log[-1]["lr"] < log[0]["lr"]  # cosine decay
    assert log[-1]["loss_reg"] < log[0]["loss_reg"]  # the regulariser is being minimised
    # --keep_checkpoints 2 with --save_steps 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["latest", "step_000008", "step_000010"]

    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tb_loss = acc.Scalars("loss_task")
    assert [e.step for e in tb_loss] == list(range(1, STEPS + 1))
    assert [e.value for e in tb_loss] == pytest.approx([r["loss_task"] for r in log], rel=1e-6)
    assert [e.step for e in acc.Scalars("val_loss")] == [5, 10]

    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ---- 6. bad inputs: non-zero exit, a message naming the problem, nothing written -------------
def broken_data_dir(tmp_path, content):
    d = tmp_path / "data"
    (d / "boolq").mkdir(parents=True)
    (d / "boolq" / "train.json").write_text(content)
    return d


BAD = {
    "malformed_json": ('[{"instruction": "x",', "boolq", [], ["malformed JSON", "train.json"]),
    "no_instruction": ('[{"input": "", "output": "the correct answer is true"}]', "boolq", [],
                       ["record 0", "'instruction'"]),
    "empty_file": ("[]", "boolq", [], ["no records", "train.json"]),
    "unknown_task": (None, "mix:boolq,nosuchtask", [], ["nosuchtask", "known tasks"]),
    "missing_data_dir": ("missing", "boolq", [], ["does not exist", "no_such_folder"]),
    "r_ab_zero": (None, "mix:boolq,openbookqa", ["--r_ab", "0"], ["--r_ab", "must be > 0, got 0"]),
    "svd_rank_ratio": (None, "mix:boolq,openbookqa", ["--svd_rank_ratio", "1.5"],
                       ["--svd_rank_ratio", "1.5", "(0, 1]"]),
    "knowledge_alpha": (None, "mix:boolq,openbookqa", ["--knowledge_alpha", "2"],
                        ["--knowledge_alpha", "[0, 1]"]),
    "unknown_target": (None, "mix:boolq,openbookqa", ["--target_modules", "q_proj,o_proj"],
                       ["o_proj", "out_proj"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_cleanly(case, tmp_path, capsys, tiny_neo_dir, small_data_dir):
    content, dataset, extra, needles = BAD[case]
    if content == "missing":
        data = tmp_path / "no_such_folder"
    elif content is not None:
        data = broken_data_dir(tmp_path, content)
    else:
        data = small_data_dir
    out = tmp_path / "out"
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", data, "--dataset", dataset,
                        "--val_size", 1, "--cutoff_len", 128, "--max_steps", 2,
                        "--output_folder", out, "--run_name", "bad", *extra], capsys)
    assert rc not in (0, None)
    assert "error" in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()  # no run folder, nothing half-written


def test_unknown_target_module_lists_the_available_ones(tmp_path, capsys, tiny_neo_dir, small_data_dir):
    rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", small_data_dir,
                        "--dataset", "boolq", "--val_size", 1, "--target_modules", "q_proj,o_proj",
                        "--output_folder", tmp_path / "out"], capsys)
    assert rc == 2
    listed = err.split("available linear module names:")[1]
    assert {n.strip() for n in listed.split(",")} == {"q_proj", "k_proj", "v_proj", "out_proj",
                                                       "c_fc", "c_proj"}
    assert not (tmp_path / "out").exists()


def test_resume_without_args_json(tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    rc, err = run_main(["--resume", empty], capsys)
    assert rc == 2 and "args.json" in err and str(empty) in err
    assert list(empty.iterdir()) == []


def test_bad_input_exit_status_of_the_script(tmp_path):
    data = broken_data_dir(tmp_path, '[{"instruction": "x",')
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data_dir", str(data), "--dataset", "boolq",
                           "--output_folder", str(tmp_path / "out")], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ---- 7. a diverging run stops with a clear message, keeping the last good checkpoint ---------
def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, tiny_neo_dir,
                                                            small_data_dir):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc, err = run_main(["--model_name", tiny_neo_dir, "--data_dir", small_data_dir,
                            "--dataset", "mix:boolq,openbookqa", "--val_size", 4, "--cutoff_len", 128,
                            "--batch", 2, "--max_steps", 8, "--save_steps", 1, "--keep_checkpoints", 3,
                            "--eval_strategy", "no", "--r_ab", R, "--target_modules", TARGETS,
                            "--lr", "1e6", "--warmup", 8, "--max_grad_norm", 0, "--output_folder", tmp_path,
                            "--run_name", "diverge"], capsys)
    finally:
        torch.set_num_threads(n_threads)
    run = tmp_path / "diverge"
    log = read_log(run)
    assert rc == 3
    assert "non-finite task loss" in err and f"at step {len(log) + 1}" in err
    assert 3 <= len(log) < 8  # it really diverged, within a few steps (the warmup delays it)
    assert all(math.isfinite(r["loss_task"]) for r in log)
    # the checkpoint of the last finite step is removed: the next step is not finite from it, so
    # --resume would stop again at once; the one before it is the last good checkpoint
    removed, good = f"step_{len(log):06d}", f"step_{len(log) - 1:06d}"
    assert f"{removed} was removed" in err and f"the last good checkpoint is {run / 'checkpoints' / good}" in err
    assert (run / "checkpoints" / "latest").read_text() == good and not (run / "checkpoints" / removed).exists()
    ckpt = run / "checkpoints" / good
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.pt", "trainable.safetensors"]
    assert torch.load(ckpt / "state.pt", weights_only=True)["step"] == len(log) - 1
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert len(saved) == 30 and all(torch.isfinite(t).all() for t in saved.values())  # A, B, gate x 10 layers
    assert not list(run.rglob("*.tmp"))
    assert not (run / "final").exists()  # no adapter is published from a diverged run
    torch.set_num_threads(1)
    try:  # --resume trains on from the good checkpoint (and, the data order being exact, stops again)
        rc, err = run_main(["--resume", run], capsys)
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 3 and f"at step {len(log) + 1}" in err
    assert [r["step"] for r in read_log(run)] == list(range(1, len(log) + 1))


# ---- the redesigned command line: modes, method flags, --epoch, parse-time checks, --resume ----
def tiny_train_args(model_dir, data_dir, out, *extra):
    """A few-second in-process run: boolq only (40 records, 4 held out -> 36), batch 12 -> 3 steps
    per epoch; no validation, checkpoints only at the end."""
    return ["--model_name", model_dir, "--data_dir", data_dir, "--dataset", "boolq", "--val_size", 4,
            "--cutoff_len", 128, "--batch", 12, "--r_ab", R, "--target_modules", TARGETS, "--lr", "1e-2",
            "--seed", 3, "--eval_strategy", "no", "--save_steps", 1000, "--output_folder", out, *extra]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def threads1():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_neo_dir, small_data_dir):
    """A finished 2-step KnowHiRA run (in-process), to evaluate and to copy for resuming."""
    out = tmp_path_factory.mktemp("tiny_run")
    with one_thread():
        assert train_knowhira.main([str(a) for a in tiny_train_args(
            tiny_neo_dir, small_data_dir, out, "--max_steps", 2, "--run_name", "tiny")]) == 0
    return out / "tiny"


@pytest.mark.parametrize("epoch,steps", [("3.0", 9), ("0.5", 2)])  # 3 steps/epoch; ceil(0.5 x 3) = 2
def test_fractional_epoch(epoch, steps, tmp_path, capsys, tiny_neo_dir, small_data_dir, threads1):
    out = tmp_path / "out"
    rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, out, "--epoch", epoch), capsys)
    assert rc == 0, err
    (run,) = out.iterdir()  # the default run name: {method}_{model}_lr{lr}_s{seed}_{time}-{pid}
    assert re.fullmatch(rf"knowhira_{re.escape(tiny_neo_dir.name)}_lr0\.01_s3_\d{{8}}-\d{{6}}-{os.getpid()}",
                        run.name), run.name
    saved = json.loads((run / "args.json").read_text())
    assert saved["epoch"] == float(epoch) and saved["max_steps"] == -1 and saved["n_train"] == 36
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert [r["epoch"] for r in log] == pytest.approx([s / 3 for s in range(1, steps + 1)])
    assert json.loads((run / "train_summary.json").read_text())["steps"] == steps
    assert (run / "checkpoints" / "latest").read_text() == f"step_{steps:06d}"
    assert (run / "final" / "knowhira_adapter.safetensors").is_file()


def test_eval_mode_rejects_a_training_flag(tiny_run, data_dir, tmp_path, capsys):
    before = sorted(p.name for p in tiny_run.iterdir())
    rc, err = run_main(["--ckpt", tiny_run, "--dataset", "boolq", "--data_dir", data_dir, "--lr", "1e-3",
                        "--results_dir", tmp_path / "res"], capsys)
    assert rc == 2
    line = one_line(err)
    assert "error" in line and "--lr" in line and "training flag" in line
    assert not (tmp_path / "res").exists() and sorted(p.name for p in tiny_run.iterdir()) == before


@pytest.mark.parametrize("flag", [["--model_name", "gpt2"], ["--load_bit", "16"], ["--gguf_file", "x.gguf"]])
def test_eval_mode_model_flags_only_for_zero_shot(flag, tiny_run, capsys):
    rc, err = run_main(["--ckpt", tiny_run, "--dataset", "boolq", *flag], capsys)
    assert rc == 2
    line = one_line(err)
    assert flag[0] in line and "--ckpt none" in line


def test_eval_mode_batch_is_the_eval_batch(tiny_run, data_dir, tmp_path, capsys, threads1):
    res = tmp_path / "res"
    rc, err = run_main(["--ckpt", tiny_run, "--dataset", "boolq", "--eval_strategy", "no", "--batch", 8,
                        "--data_dir", data_dir, "--max_examples", 10, "--max_new_tokens", 4,
                        "--results_dir", res], capsys)
    assert rc == 0, err
    results = json.loads((res / "results.json").read_text())
    assert list(results["tasks"]) == ["boolq"]
    assert results["tasks"]["boolq"]["batch_size"] == 8 and results["tasks"]["boolq"]["n"] == 10
    assert results["meta"]["method"] == "knowhira" and results["meta"]["r_ab"] == R
    assert len((res / "eval" / "boolq.jsonl").read_text().splitlines()) == 10


@pytest.mark.parametrize("flag", [["--max_examples", "4"], ["--eval_mode", "loglik"], ["--eval_batch", "8"],
                                  ["--max_new_tokens", "4"], ["--beam_size", "2"], ["--results_dir", "x"]])
def test_training_mode_rejects_an_evaluation_flag(flag, tmp_path, capsys, tiny_neo_dir, small_data_dir):
    out = tmp_path / "out"
    rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, out, "--max_steps", 1, *flag), capsys)
    assert rc == 2
    line = one_line(err)
    assert flag[0] in line and "evaluation flag" in line
    assert not out.exists()


def test_a_flag_of_another_method_is_noted_and_ignored(tmp_path, capsys, tiny_neo_dir, small_data_dir,
                                                       threads1):
    out = tmp_path / "out"
    rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, out, "--max_steps", 2, "--run_name", "lora",
                                       "--peft_type", "lora", "--knowledge_alpha", "0.7"), capsys)
    assert rc == 0, err
    assert "note: --knowledge_alpha not used by lora; ignored" in err.splitlines()
    run = out / "lora"
    saved = json.loads((run / "args.json").read_text())
    assert saved["peft_type"] == "lora" and saved["lora_alpha"] == 16.0 and saved["r_ab"] == R
    assert "knowledge_alpha" not in saved and "ortho_lambda" not in saved
    assert [r["step"] for r in read_log(run)] == [1, 2]
    assert all(r["loss_reg"] == 0.0 for r in read_log(run))  # LoRA has no regulariser
    peft_cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["r"] == R  # peft's own format


@pytest.mark.parametrize("flag,needle", [
    (["--lr", "nan"], "argument --lr: must be a finite number"),
    (["--g_init", "inf"], "argument --g_init: must be a finite number"),
    (["--epoch=-inf"], "argument --epoch: must be a finite number"),
    (["--epoch", "0"], "argument --epoch: must be > 0"),
    (["--target_modules", "re:(q_proj"], "argument --target_modules: invalid regex '(q_proj'"),
    (["--target_modules", "re:"], "argument --target_modules: empty regex"),
    (["--run_name", "../x"], "argument --run_name: must be a folder name, not a path"),
    (["--run_name", "/tmp/x"], "argument --run_name: must be a folder name, not a path"),
])
def test_bad_value_is_a_one_line_parse_error(flag, needle, tmp_path, capsys, tiny_neo_dir, small_data_dir):
    out = tmp_path / "out"
    rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, out, "--max_steps", 1, *flag), capsys)
    assert rc == 2
    line = one_line(err)
    assert "error" in line and needle in line, line
    assert not out.exists()  # no run folder


def copy_run(run, tmp_path):
    """A copy of a finished run to resume (resume takes the folder from the path it is given)."""
    dst = tmp_path / "runs" / run.name
    shutil.copytree(run, dst)
    return dst


def test_resume_rejects_a_configuration_flag(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, err = run_main(["--resume", run, "--lr", "1"], capsys)
    assert rc == 2
    line = one_line(err)
    assert "--lr" in line and "cannot change in a resumed run" in line and "args.json" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # nothing touched


def test_resume_accepts_the_training_command_repeated(tiny_run, tiny_neo_dir, small_data_dir, tmp_path, capsys,
                                                      threads1):
    """The habit of every trainer: the same command with --resume RUN_DIR added (flags equal to the saved
    values, --output_folder/--run_name naming the run) continues the run; a changed flag is named."""
    run = copy_run(tiny_run, tmp_path)
    same = tiny_train_args(tiny_neo_dir, small_data_dir, run.parent, "--run_name", run.name)
    rc, err = run_main([*same, "--max_steps", 3, "--resume", run], capsys)
    assert rc == 0, err
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]
    other = tiny_train_args(tiny_neo_dir, small_data_dir, run.parent, "--run_name", "elsewhere")
    rc, err = run_main([*other, "--seed", 4, "--resume", run], capsys)
    assert rc == 2
    line = one_line(err)
    assert "--run_name tiny → elsewhere" in line and "--seed 3 → 4" in line


def test_config_file_is_the_flags_and_args_json_is_one(tiny_run, tiny_neo_dir, small_data_dir, tmp_path, capsys,
                                                       threads1):
    """--config FILE: its values are the flags (YAML or JSON), the command line overrides them, and a run's
    args.json repeats the run with one change (here the seed)."""
    out = tmp_path / "runs"
    rc, err = run_main(["--config", tiny_run / "args.json", "--seed", 4, "--run_name", "tiny_s4",
                        "--output_folder", out], capsys)
    assert rc == 0, err
    a, b = (json.loads((r / "args.json").read_text()) for r in (tiny_run, out / "tiny_s4"))
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"seed", "run_name", "output_folder"}
    assert b["seed"] == 4
    # a hand-written YAML config + one override = the same flags typed out
    (tmp_path / "c.yaml").write_text("model_name: %s\ndata_dir: %s\ndataset: boolq\nval_size: 4\ncutoff_len: 128\n"
                                     "batch: 12\nr_ab: %d\ntarget_modules: [%s]\nlr: 1.0e-2\nseed: 3\n"
                                     "eval_strategy: 'no'\nsave_steps: 1000\nmax_steps: 1\n"
                                     % (tiny_neo_dir, small_data_dir, R, TARGETS))
    rc, err = run_main(["--config", tmp_path / "c.yaml", "--lr", "2e-2", "--output_folder", out, "--run_name", "y"],
                       capsys)
    assert rc == 0, err
    rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, out, "--max_steps", 1, "--lr", "2e-2",
                                       "--run_name", "flags"), capsys)
    assert rc == 0, err
    y, flags = (json.loads((out / n / "args.json").read_text()) for n in ("y", "flags"))
    assert {k for k in y.keys() | flags.keys() if y.get(k) != flags.get(k)} == {"run_name"}


def test_edited_args_json_is_a_one_line_error_on_resume(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    saved = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**saved, "r_ab": 3.5}))
    rc, err = run_main(["--resume", run], capsys)
    assert rc == 2 and one_line(err) == f"error: {run / 'args.json'}: r_ab: must be an int, got float 3.5"
    (run / "args.json").write_text(json.dumps({**saved, "peft_type": ["knowhira"]}))
    rc, err = run_main(["--resume", run], capsys)
    assert rc == 2 and one_line(err) == (f"error: {run / 'args.json'}: peft_type must be a method name (a string), "
                                         "got list ['knowhira']")


def test_resume_with_fewer_steps_than_reached_is_refused(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, err = run_main(["--resume", run, "--max_steps", "1"], capsys)
    assert rc == 2 and "is at step 2, beyond the 1 steps asked for" in err.strip().splitlines()[-1]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # args.json still says 2


def test_resume_with_more_max_steps_continues(tiny_run, tmp_path, capsys, threads1):
    run = copy_run(tiny_run, tmp_path)
    rc = train_knowhira.main(["--resume", str(run), "--max_steps", "5"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "note: resuming with --max_steps 5 (the run had 2)" in printed.err.splitlines()
    assert "resumed from" in printed.out and "step_000002" in printed.out
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r.get("resumed", False) for r in log] == [False, False, True, False, False]  # its span holds the pause
    saved = json.loads((run / "args.json").read_text())
    assert saved["max_steps"] == 5 and saved["run_name"] == run.name
    assert saved["output_folder"] == str(run.parent)
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 5
    assert (run / "checkpoints" / "latest").read_text() == "step_000005"
    # steps 1-2 are the original run's, unchanged
    ref = read_log(tiny_run)
    assert [r["loss_task"] for r in log[:2]] == [r["loss_task"] for r in ref]
    a = load_file(str(tiny_run / "final" / "knowhira_adapter.safetensors"))
    b = load_file(str(run / "final" / "knowhira_adapter.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a if k.endswith("hira_A"))


@pytest.mark.parametrize("method", ["knowhira", "lora"])
def test_a_run_with_gradient_checkpointing_warns_of_no_deprecated_api(method, tmp_path, capsys, tiny_neo_dir,
                                                                       small_data_dir, threads1):
    """Issue 29 defect 9: every run warned that transformers' gradient_checkpointing_enable /
    is_gradient_checkpointing are deprecated (we call activation_checkpointing_enable; peft's call is ours to hide)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, err = run_main(tiny_train_args(tiny_neo_dir, small_data_dir, tmp_path, "--max_steps", 1,
                                           "--peft_type", method, "--enable_grad_ckpt"), capsys)
    assert rc == 0, err
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []

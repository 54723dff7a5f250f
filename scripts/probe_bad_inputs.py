"""Probe train_knowhira.py with bad input, damaged files and failures mid-run; print what a user sees.

    python -m scripts.probe_bad_inputs [--out docs/robustness.md] [--cases a,b] [--mode fork|subprocess]

Every case (the CASES table below: how to set it up, the command line, the exit status and the words
its message must hold, what may be left on disk) runs train_knowhira.py as its own process, in its own
scratch folder, on tiny RANDOMLY INITIALISED Llama models and 40-record copies of the real data files
(from $KNOWHIRA_DATA_DIR and the GPT-2 tokenizer in $KNOWHIRA_TOKENIZER_DIR), and is judged:

    exit status   the case's (2 bad input, 3 non-finite training, 130 Ctrl-C, 1 other OS errors, 0 where
                  the case promises the run goes on)
    message       stderr is one line (no "Traceback") holding the case's words. Progress bars (tqdm's and
                  transformers', on stderr as a terminal shows them) are not messages; for failures in
                  the middle of training (strict=False) note:/warning: lines are not counted either
    leftovers     the scratch folder's listing (and every file's bytes) before and after: nothing new,
                  or exactly what the case promises (its own check, e.g. a resumed run's log)

A full disk is a 24 KiB tmpfs mounted under the scratch folder when this process may mount one (root),
else a simulated ENOSPC in every atomic write after args.json (utils/atomic.py); the report says which.

--mode fork (default) imports torch, transformers, ... once and forks one process per command (each
runs the script as __main__ with its own stdin/stdout/stderr, environment and signals; what the
imports print is reported), so the ~80 cases take about a minute or two on 2 cores; --mode
subprocess starts a fresh interpreter per command, exactly as a user's shell does (slower).
tests/test_robustness.py runs this table.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_knowhira.py"
TIMEOUT = 300  # seconds per command
N_RECORDS = 40  # records per data file copy
TASKS = ("boolq", "openbookqa")


# ---- the case table ------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    defect: str  # the item ("1".."16"), or "old" (inputs checked before the issue)
    what: str  # one line for the table
    argv: list  # templates: {model} {data} {work} {out} {run}
    exit: int
    words: tuple = ()  # in the message line (exit != 0) or anywhere in stdout+stderr (exit 0)
    setup: Callable | None = None  # setup(ctx): prepare the scratch folder (before the snapshot)
    check: Callable | None = None  # check(ctx, result) -> (problems, leftovers text); None: nothing new
    strict: bool = True  # stderr exactly one line; False: one line besides progress bars and notes
    interrupt: Callable | None = None  # send `signal` to the command once interrupt(ctx) is true
    signal: int = signal.SIGINT
    fault: str | None = None  # "enospc": simulated full disk (when no tmpfs can be mounted)


def T(*extra):
    """The issue's training command T (tiny Llama, boolq, r 4, 2 steps) plus `extra` (later flags win)."""
    return ["--model_name", "{model}", "--data_dir", "{data}", "--dataset", "boolq",
            "--target_modules", "q_proj,v_proj", "--r_ab", "4", "--batch", "2", "--max_steps", "2",
            "--val_size", "4", "--output_folder", "{out}", "--run_name", "r", *extra]


def REF(*extra):
    """T for 12 steps without validation: the shared reference run's command (interruption cases)."""
    return T("--max_steps", "12", "--eval_strategy", "no", "--save_steps", "1000", *extra)


def E(*extra):
    """The issue's evaluation command E on the run copy {run}."""
    return ["--ckpt", "{run}", "--data_dir", "{data}", "--dataset", "boolq", "--max_examples", "4", *extra]


def R(*extra):
    """--resume of the run copy {run}."""
    return ["--resume", "{run}", *extra]


# setups ------------------------------------------------------------------------------------------
def copy_run(ctx):
    """A copy of the shared 2-step run (checkpoints step 1 and 2, best/, final/) at {run}."""
    shutil.copytree(ctx.base_run, ctx.run)


def copy_run_as_new_run_name(ctx):
    shutil.copytree(ctx.base_run, ctx.out / "r")


def then(*steps):
    def setup(ctx):
        for s in steps:
            s(ctx)
    return setup


def edit_args(**changes):
    def edit(ctx):
        path = ctx.run / "args.json"
        saved = json.loads(path.read_text())
        saved.update({k: v.format(**ctx.vars) if isinstance(v, str) else v for k, v in changes.items()})
        path.write_text(json.dumps(saved, indent=2))
    return edit


def write(rel, text):
    """Write `text` to {work}/rel."""
    def w(ctx):
        path = ctx.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return w


def mkdir(rel):
    def m(ctx):
        (ctx.work / rel).mkdir(parents=True, exist_ok=True)
    return m


def copy_model(ctx, keep=None, broken=None):
    """{work}/m: a copy of the tiny model's folder (only the files `keep`; `broken` overwritten with '{')."""
    dst = ctx.work / "m"
    dst.mkdir()
    for f in ctx.model.iterdir():
        if keep is None or f.name in keep:
            shutil.copy(f, dst / f.name)
    if broken:
        (dst / broken).write_text("{")


def adapter_weights(run: Path) -> Path:
    """The saved adapter's tensor file in best/ (this project's name, or the name older runs used)."""
    for name in ("knowhira_adapter.safetensors", "adapter_model.safetensors"):
        if (run / "best" / name).is_file():
            return run / "best" / name
    raise FileNotFoundError(f"no adapter in {run / 'best'}")


def adapter_config(run: Path) -> Path:
    for name in ("knowhira_adapter.json", "adapter_config.json"):
        if (run / "best" / name).is_file():
            return run / "best" / name
    raise FileNotFoundError(f"no adapter config in {run / 'best'}")


def truncate(path_fn, size):
    def t(ctx):
        path = path_fn(ctx)
        with open(path, "r+b") as f:
            f.truncate(size)
    return t


def nan_tensors(path_fn, pattern=r"hira_[AB]$"):
    """Overwrite the data of the F32 tensors whose name matches `pattern` with NaN (header intact)."""
    def n(ctx):
        path = path_fn(ctx)
        raw = bytearray(path.read_bytes())
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + hlen])
        hit = 0
        for name, info in header.items():
            if name != "__metadata__" and re.search(pattern, name) and info["dtype"] == "F32":
                lo, hi = info["data_offsets"]
                raw[8 + hlen + lo:8 + hlen + hi] = struct.pack("<f", float("nan")) * ((hi - lo) // 4)
                hit += 1
        assert hit, f"no tensor matching {pattern} in {path}"
        path.write_bytes(bytes(raw))
    return n


def edit_json(path_fn, fn):
    def e(ctx):
        path = path_fn(ctx)
        path.write_text(json.dumps(fn(json.loads(path.read_text())), indent=2))
    return e


def data_copy(mutate):
    """A private copy of the data folder at {work}/data with mutate(records of boolq/train.json)."""
    def d(ctx):
        dst = ctx.work / "data"
        shutil.copytree(ctx.data, dst)
        path = dst / "boolq" / "train.json"
        path.write_text(mutate(json.loads(path.read_text())))
        ctx.vars["data"] = str(dst)
    return d


def run_on_changed_data(ctx):
    """The run copy as if trained on a private data folder {work}/data (args.json's and the checkpoints'
    data_dir moved there), whose boolq/train.json then loses its last 5 records."""
    import torch

    data_copy(lambda records: json.dumps(records[:-5]))(ctx)
    edit_args(data_dir="{data}")(ctx)
    for state_file in (ctx.run / "checkpoints").glob("step_*/state.pt"):
        state = torch.load(state_file, weights_only=True)
        state["config"]["data_dir"] = ctx.vars["data"]
        torch.save(state, state_file)


def test_file(mutate):
    def d(ctx):
        dst = ctx.work / "data"
        if not dst.exists():
            shutil.copytree(ctx.data, dst)
        path = dst / "boolq" / "test.json"
        changed = mutate(json.loads(path.read_text()))
        path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
        ctx.vars["data"] = str(dst)
    return d


def long_response(records):
    records[7] = {**records[7], "output": "the correct answer is " + " ".join(["very"] * 600) + " true"}
    return json.dumps(records)


def long_question(records):
    records = records[:4]
    records[1] = {**records[1], "instruction": " ".join(["Is it so?"] * 300) + "\n\n" + records[1]["instruction"]}
    return records


def bad_answer(records):
    records[2] = {**records[2], "answer": "maybe"}
    return records


def hold_lock(ctx):
    """Another process training in {run}: its RUN/.lock held (an open file description of our own)."""
    import fcntl

    ctx.lock = open(ctx.run / ".lock", "a")
    fcntl.flock(ctx.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove(rel_fn):
    def r(ctx):
        path = rel_fn(ctx)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return r


def loss_png_is_a_folder(ctx):
    (ctx.run / "loss.png").unlink()
    (ctx.run / "loss.png" / "x").mkdir(parents=True)


def small_disk(ctx):
    """{out} on a tmpfs too small for a run (or, without root, a simulated ENOSPC; ctx.fault)."""
    disk = ctx.work / "disk"
    disk.mkdir()
    if ctx.mode_full_disk == "tmpfs":
        import subprocess

        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)], check=True)
        ctx.mounted.append(disk)
    ctx.vars["out"] = str(disk / "out")
    ctx.out = disk / "out"


# checks ------------------------------------------------------------------------------------------
def log_steps(run: Path) -> list:
    path = run / "log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line] if path.exists() else []


def finite_file(path: Path) -> bool:
    import numpy as np
    from safetensors.numpy import load_file

    return all(bool(np.isfinite(v).all()) for v in load_file(str(path)).values())


def checkpoints(run: Path) -> list:
    root = run / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def latest_of(run: Path):
    pointer = run / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def resumed_run_check(steps, *words):
    """A resumed run that goes on: the log holds each step once, 1..steps; `latest` is step `steps`."""
    def check(ctx, result):
        problems = []
        got = log_steps(ctx.run)
        if got != list(range(1, steps + 1)):
            problems.append(f"log steps {got}, expected 1..{steps} once each")
        if latest_of(ctx.run) != f"step_{steps:06d}":
            problems.append(f"latest is {latest_of(ctx.run)}")
        return problems, f"run continued to step {steps}; log steps {got[0] if got else '-'}..{got[-1] if got else '-'} once each"
    return check


def nothing_but(*allowed):
    """Nothing new except changes to paths matching one of the regexes `allowed`."""
    def check(ctx, result):
        changes = [c for c in ctx.diff if not any(re.search(a, c[1:]) for a in allowed)]
        return ([f"unexpected change {c}" for c in changes[:5]],
                "nothing new" if not ctx.diff else "only " + ", ".join(sorted({c for c in ctx.diff}))[:120])
    return check


def diverged_check(ctx, result):
    """Exit 3: every checkpoint left is finite and `latest` names one that --resume can continue
    from (its next step is finite); or, without one, no run folder at all."""
    run = ctx.out / "r"
    if not run.exists():
        return [], "no run folder (no good checkpoint was written)"
    problems = []
    cks = checkpoints(run)
    bad = [c.name for c in cks if not finite_file(c / "trainable.safetensors")]
    if bad:
        problems.append(f"non-finite checkpoints {bad}")
    latest = latest_of(run)
    if latest is None or not (run / "checkpoints" / latest).is_dir():
        problems.append(f"latest {latest!r} names no checkpoint")
        return problems, f"run folder with {[c.name for c in cks]}"
    if latest not in result.message:
        problems.append(f"the message does not name {latest}")
    step = int(latest.split("_")[1])
    again = ctx.invoke(["--resume", str(run)], strict=False)
    m = re.search(r"at step (\d+)", again.message)
    if again.rc == 3 and m and int(m.group(1)) <= step + 1:
        problems.append(f"--resume fails at once (from {latest}): {again.message}")
    elif again.rc not in (0, 3) or again.traceback:
        problems.append(f"--resume: exit {again.rc}: {again.message}")
    return problems, (f"run folder, {len(cks)} finite checkpoint(s), latest {latest}; --resume trains on "
                      f"(exit {again.rc}{', then ' + again.message[:60] if again.rc else ''})")


def no_run_folder(ctx, result):
    return ([f"left {c}" for c in ctx.diff[:5]], "nothing new (the failed new run's folder was removed)")


def losses(run: Path) -> list:
    return [json.loads(line)["loss_task"] for line in (run / "log.jsonl").read_text().splitlines() if line]


def interrupted_check(last_step_saved: bool):
    """The run stopped part way with `latest` naming a complete checkpoint (of its last logged step
    after Ctrl-C); --resume finishes it with the losses of the uninterrupted reference run, each
    step logged once."""
    def check(ctx, result):
        run, problems = ctx.out / "r", []
        latest, steps = latest_of(run), log_steps(run)
        if latest is None or not (run / "checkpoints" / latest / "state.pt").is_file():
            return [f"latest {latest} names no complete checkpoint"], "run folder without a checkpoint"
        if last_step_saved and latest != f"step_{steps[-1]:06d}":
            problems.append(f"latest {latest} is not the last logged step {steps[-1:]}")
        again = ctx.invoke(["--resume", str(run)], strict=False)
        ref = losses(ctx.ref_run)
        if again.rc != 0:
            problems.append(f"--resume: exit {again.rc}: {again.message}")
        elif log_steps(run) != list(range(1, len(ref) + 1)):
            problems.append(f"log after resume {log_steps(run)}")
        elif max(abs(a - b) for a, b in zip(losses(run), ref)) > 1e-6:
            problems.append(f"losses differ from the uninterrupted run: {losses(run)} vs {ref}")
        return problems, (f"run folder, stopped at step {steps[-1] if steps else 0} with checkpoint {latest}; "
                          f"--resume finishes it with the uninterrupted run's losses (exit {again.rc})")
    return check


def full_disk_check(ctx, result):
    run = ctx.out / "r"
    if not run.exists():
        return [], "nothing new (the failed new run's folder was removed)"
    latest = latest_of(run)
    ok = latest is not None and (run / "checkpoints" / latest / "state.pt").is_file()
    return ([] if ok else [f"run folder left without a complete checkpoint: {sorted(p.name for p in run.iterdir())}"],
            f"run folder with complete checkpoint {latest}")


def modes_check(ctx, result):
    problems = []
    run = ctx.out / "r"
    for p in sorted(run.rglob("*")):
        if p.is_file() and p.name != ".lock":
            mode = p.stat().st_mode & 0o777
            if mode != 0o644:
                problems.append(f"{p.relative_to(run)} has mode {oct(mode)}")
    return problems[:5], "a finished run; every file mode 0644 (umask 022)"


def results_json_check(ctx, result):
    problems = []
    results = json.loads((ctx.run / "results.json").read_text())
    task = results.get("tasks", {}).get("boolq", {})
    if task.get("truncated_prompts") != 1:
        problems.append(f"results.json tasks.boolq.truncated_prompts = {task.get('truncated_prompts')!r}, expected 1")
    rows = (ctx.run / "eval" / "boolq.jsonl").read_text().splitlines()
    if len(rows) != 4:
        problems.append(f"{len(rows)} rows in eval/boolq.jsonl")
    return problems, f"results.json (truncated_prompts {task.get('truncated_prompts')}), eval/boolq.jsonl"


def ckpt_of(step):
    return lambda ctx: ctx.run / "checkpoints" / f"step_{step:06d}"


LIST_FILE = '[{"instruction": "x",'
CASES = [
    # ---- inputs checked before the issue (flags, data, datasets) --------------------------------
    Case("unknown_flag", "old", "a flag that does not exist", T("--no_such_flag", "1"), 2,
         ("unrecognized arguments", "--no_such_flag")),
    Case("bad_peft_type", "old", "an unknown method", T("--peft_type", "nosuch"), 2, ("--peft_type", "nosuch")),
    Case("bad_choice", "old", "a value outside the choices", T("--lr_scheduler", "step"), 2,
         ("--lr_scheduler", "step")),
    Case("int_flag_text", "old", "text for an integer flag", T("--batch", "two"), 2, ("--batch", "two")),
    Case("r_ab_zero", "old", "rank 0", T("--r_ab", "0"), 2, ("--r_ab", "must be > 0")),
    Case("alpha_out_of_range", "old", "--knowledge_alpha 2", T("--knowledge_alpha", "2"), 2,
         ("--knowledge_alpha", "[0, 1]")),
    Case("eval_flag_in_training", "old", "an evaluation flag without --ckpt", T("--max_examples", "4"), 2,
         ("--max_examples", "evaluation flag")),
    Case("ckpt_and_resume", "old", "--ckpt with --resume", ["--ckpt", "{work}", "--resume", "{work}"], 2,
         ("--ckpt", "--resume")),
    Case("unknown_target", "old", "--target_modules naming no module", T("--target_modules", "q_proj,c_attn"), 2,
         ("c_attn", "available linear module names")),
    Case("missing_data_dir", "old", "--data_dir that does not exist", T("--data_dir", "{work}/no_data"), 2,
         ("no_data", "does not exist")),
    Case("malformed_data", "old", "a train.json that is not JSON", T(), 2, ("boolq/train.json", "malformed JSON"),
         setup=data_copy(lambda r: LIST_FILE)),
    Case("empty_data", "old", "a train.json with no records", T(), 2, ("boolq/train.json", "no records"),
         setup=data_copy(lambda r: "[]")),
    Case("record_without_instruction", "old", "a record with no instruction", T(), 2,
         ("boolq/train.json", "record 3", "'instruction'"),
         setup=data_copy(lambda r: json.dumps(r[:3] + [{"output": "x"}] + r[4:]))),
    Case("unknown_dataset", "old", "--dataset nosuch", T("--dataset", "nosuch"), 2, ("nosuch", "accepted forms")),
    Case("mix_unknown_task", "old", "a mix naming an unknown task", T("--dataset", "mix:boolq,nosuch"), 2,
         ("nosuch", "known tasks")),
    Case("mix_repeated_task", "old", "a mix naming a task twice", T("--dataset", "mix:boolq,boolq"), 2,
         ("boolq", "more than once")),
    Case("missing_170k", "old", "common_170k without its file", T("--dataset", "common_170k"), 2,
         ("commonsense_170k.json", "not found")),
    Case("output_folder_is_a_file", "old", "--output_folder naming a file", T("--output_folder", "{work}/afile"), 2,
         ("afile", "is a file"), setup=write("afile", "x")),
    Case("eval_test_malformed", "old", "a test.json that is not JSON, then E", E(), 2, ("boolq/test.json", "malformed JSON"),
         setup=then(copy_run, test_file(lambda r: LIST_FILE))),
    Case("eval_test_bad_answer", "old", "a test record whose answer is not an answer word, then E", E(), 2,
         ("boolq", "record 2", "maybe"), setup=then(copy_run, test_file(bad_answer))),
    Case("zero_shot_missing_model", "8", "--ckpt none --model_name naming no folder",
         ["--ckpt", "none", "--model_name", "{work}/nope", "--dataset", "boolq", "--data_dir", "{data}"], 2,
         ("nope", "does not exist")),
    Case("missing_test_split", "old", "evaluating a task with no test file", E("--dataset", "piqa"), 2,
         ("piqa",), setup=copy_run),
    # ---- 1. non-finite numbers ----------------------------------------------------------------
    Case("lr_nan", "1", "--lr nan", T("--lr", "nan"), 2, ("--lr", "finite")),
    Case("lr_inf", "1", "--lr inf", T("--lr", "inf"), 2, ("--lr", "finite")),
    Case("epoch_minus_inf", "1", "--epoch=-inf", T("--epoch=-inf"), 2, ("--epoch", "finite")),
    Case("alpha_nan", "1", "--knowledge_alpha nan", T("--knowledge_alpha", "nan"), 2, ("--knowledge_alpha", "finite")),
    Case("lr_beyond_float32", "1", "--lr 1e39 (finite, but no float32)", T("--lr", "1e39"), 2, ("--lr", "finite")),
    Case("diverge_no_checkpoint", "1", "--lr 1e30: non-finite before any checkpoint",
         T("--lr", "1e30", "--max_grad_norm", "0"), 3, ("non-finite", "step 2", "no checkpoint was written"),
         strict=False, check=no_run_folder),
    # ---- 2. the last good checkpoint is good ----------------------------------------------------
    Case("diverge_hira_lr1e12", "2", "T --peft_type hira --lr 1e12 --max_grad_norm 0 --save_steps 1 --max_steps 12",
         T("--peft_type", "hira", "--lr", "1e12", "--max_grad_norm", "0", "--save_steps", "1", "--max_steps", "12"),
         3, ("non-finite",), strict=False, check=diverged_check),
    Case("diverge_keeps_good_checkpoint", "2", "--lr 3e5 --warmup 8 --max_grad_norm 0 --save_steps 1: diverges later",
         T("--lr", "3e5", "--warmup", "8", "--max_grad_norm", "0", "--save_steps", "1", "--max_steps", "12"),
         3, ("non-finite", "was removed", "the last good checkpoint is"), strict=False, check=diverged_check),
    # ---- 3. no half-made run folder -----------------------------------------------------------
    Case("batch_above_data", "3", "--batch 64 on 36 records", T("--batch", "64"), 2,
         ("36 training examples", "effective batch")),
    Case("val_size_39", "3", "--val_size 39 of 40 records", T("--val_size", "39"), 2,
         ("1 training examples", "effective batch")),
    Case("val_size_40", "3", "--val_size 40 of 40 records", T("--val_size", "40"), 2,
         ("--val_size", "no training records")),
    # ---- 4, 5. --target_modules regexes -------------------------------------------------------
    Case("regex_invalid", "4", "--target_modules 're:(q_proj'", T("--target_modules", "re:(q_proj"), 2,
         ("--target_modules", "invalid regex")),
    Case("regex_empty", "5", "--target_modules re:", T("--target_modules", "re:"), 2,
         ("--target_modules", "empty regex")),
    Case("regex_matches_nothing", "5", "--target_modules 're:nothing.*'", T("--target_modules", "re:nothing.*"), 2,
         ("nothing.*", "matches no linear layer")),
    # ---- 6. context length --------------------------------------------------------------------
    Case("cutoff_above_positions", "6", "--cutoff_len 4096 on a 512-position model", T("--cutoff_len", "4096"), 2,
         ("--cutoff_len 4096", "512")),
    Case("eval_prompt_too_long", "6", "a test question longer than the model's positions", E(), 0,
         ("boolq",), setup=then(copy_run, test_file(long_question)), check=results_json_check, strict=False),
    # ---- 7. damaged adapter and state files -----------------------------------------------------
    Case("adapter_truncated", "7", "truncate -s 4000 best/<adapter>.safetensors, then E", E(), 2,
         ("best/", ".safetensors"), setup=then(copy_run, truncate(lambda c: adapter_weights(c.run), 4000))),
    Case("adapter_nan", "7", "A/B of best/ set to NaN (header intact), then E", E(), 2,
         ("best/", "non-finite"), setup=then(copy_run, nan_tensors(lambda c: adapter_weights(c.run)))),
    Case("state_truncated", "7", "checkpoint state.pt truncated, then --resume", R(), 2,
         ("step_000002/state.pt", "cannot be read"),
         setup=then(copy_run, truncate(lambda c: ckpt_of(2)(c) / "state.pt", 1000))),
    Case("trainable_truncated", "7", "checkpoint trainable.safetensors truncated, then --resume", R(), 2,
         ("step_000002/trainable.safetensors", "cannot be read"),
         setup=then(copy_run, truncate(lambda c: ckpt_of(2)(c) / "trainable.safetensors", 100))),
    Case("checkpoint_nan", "7", "checkpoint tensors set to NaN, then --resume", R(), 2,
         ("step_000002/trainable.safetensors", "non-finite"),
         setup=then(copy_run, nan_tensors(lambda c: ckpt_of(2)(c) / "trainable.safetensors", r"hira_[AB]$"))),
    # ---- 8. model paths -----------------------------------------------------------------------
    Case("model_missing", "8", "--model_name naming no folder", T("--model_name", "{work}/no_such_model"), 2,
         ("no_such_model", "does not exist", "hub name")),
    Case("model_dir_empty", "8", "--model_name naming an empty folder", T("--model_name", "{work}/empty"), 2,
         ("empty", "no config.json"), setup=mkdir("empty")),
    Case("model_without_tokenizer", "8", "a model folder without tokenizer files", T("--model_name", "{work}/m"), 2,
         ("could not be loaded",), setup=lambda c: copy_model(c, keep=("config.json", "model.safetensors"))),
    Case("model_config_invalid", "8", "a model folder whose config.json is not JSON", T("--model_name", "{work}/m"), 2,
         ("could not be loaded", "config.json"), setup=lambda c: copy_model(c, broken="config.json")),
    Case("gguf_missing", "8", "--model_name naming a missing .gguf", T("--model_name", "{work}/m.gguf"), 2,
         ("m.gguf", "does not exist")),
    Case("hub_name_offline", "8", "a hub name that is not cached (offline)", T("--model_name", "nosuchorg/nosuchmodel"),
         2, ("nosuchorg/nosuchmodel", "could not be loaded")),
    Case("args_json_model_missing", "8", "args.json's model_name edited to a missing path, then E", E(), 2,
         ("gone_model", "does not exist"), setup=then(copy_run, edit_args(model_name="{work}/gone_model"))),
    Case("adapter_missing", "7", "best/ and final/ removed, then E", E(), 2, ("final",),
         setup=then(copy_run, remove(lambda c: c.run / "best"), remove(lambda c: c.run / "final"))),
    # ---- 9. errors that name their file ---------------------------------------------------------
    Case("args_json_list", "9", "args.json a JSON list, then E", E(), 2, ("args.json", "not a run's arguments"),
         setup=then(copy_run, write("runs/r/args.json", "[1, 2]"))),
    Case("args_json_list_resume", "9", "args.json a JSON list, then --resume", R(), 2, ("args.json", "not a run's arguments"),
         setup=then(copy_run, write("runs/r/args.json", "[1, 2]"))),
    Case("args_json_invalid_eval", "9", "args.json not JSON, then E", E(), 2, ("args.json", "not valid JSON"),
         setup=then(copy_run, write("runs/r/args.json", "{broken"))),
    Case("args_json_invalid_resume", "9", "args.json not JSON, then --resume", R(), 2, ("args.json", "not valid JSON"),
         setup=then(copy_run, write("runs/r/args.json", "{broken"))),
    Case("adapter_config_invalid", "9", "best/<adapter config> not JSON, then E", E(), 2, ("best/", "not valid JSON"),
         setup=then(copy_run, lambda c: adapter_config(c.run).write_text("{"))),
    Case("adapter_config_extra_key", "9", "an extra key in best/<adapter config>, then E", E(), 2,
         ("bogus_key", "best/"),
         setup=then(copy_run, edit_json(lambda c: adapter_config(c.run), lambda d: {**d, "bogus_key": 1}))),
    Case("response_too_long", "9", "a response longer than --cutoff_len (protocol clean)", T("--protocol", "clean"), 2,
         ("boolq/train.json", "record 7", "cutoff_len"), setup=data_copy(long_response)),
    # ---- 10. resume when the newest checkpoint or `latest` is gone --------------------------------
    Case("resume_latest_missing", "10", "checkpoints/latest deleted, then --resume --max_steps 3", R("--max_steps", "3"),
         0, ("using the newest complete one",), strict=False,
         setup=then(copy_run, remove(lambda c: c.run / "checkpoints" / "latest")), check=resumed_run_check(3)),
    Case("resume_newest_dir_missing", "10", "the newest checkpoint folder deleted, then --resume --max_steps 3",
         R("--max_steps", "3"), 0, ("step_000001",), strict=False,
         setup=then(copy_run, remove(ckpt_of(2))), check=resumed_run_check(3)),
    Case("resume_log_cut", "10", "log.jsonl's last line cut by a kill, then --resume --max_steps 3", R("--max_steps", "3"),
         0, ("resumed from",), strict=False, check=resumed_run_check(3),
         setup=then(copy_run, lambda c: open(c.run / "log.jsonl", "a").write('{"step": 3, "loss_ta'))),
    Case("resume_no_checkpoints", "10", "checkpoints/ deleted, then --resume", R(), 0, ("training from step 0",),
         strict=False, check=resumed_run_check(2), setup=then(copy_run, remove(lambda c: c.run / "checkpoints"))),
    # ---- 11. resume with another configuration ---------------------------------------------------
    Case("resume_other_method", "11", "args.json peft_type knowhira -> hira, then --resume", R(), 2,
         ("another configuration", "peft_type 'knowhira' -> 'hira'"), setup=then(copy_run, edit_args(peft_type="hira"))),
    Case("resume_lora", "11", "args.json peft_type knowhira -> lora, then --resume", R(), 2,
         ("another configuration", "peft_type 'knowhira' -> 'lora'"), setup=then(copy_run, edit_args(peft_type="lora"))),
    Case("resume_other_rank", "11", "args.json r_ab 4 -> 8, then --resume", R(), 2,
         ("another configuration", "r_ab 4 -> 8"), setup=then(copy_run, edit_args(r_ab=8))),
    # ---- 12. results.json of the wrong shape -----------------------------------------------------
    Case("results_invalid_json", "12", "results.json not JSON, then E", E(), 2, ("results.json", "not valid JSON"),
         setup=then(copy_run, write("runs/r/results.json", "{"), write("runs/r/eval/boolq.jsonl", "kept\n"))),
    Case("results_list", "12", "results.json [1,2,3], then E", E(), 2, ("results.json",),
         setup=then(copy_run, write("runs/r/results.json", "[1, 2, 3]"), write("runs/r/eval/boolq.jsonl", "kept\n"))),
    Case("results_wrong_shape", "12", 'results.json {"meta": [], "tasks": 5}, then E', E(), 2, ("results.json", "tasks"),
         setup=then(copy_run, write("runs/r/results.json", '{"meta": [], "tasks": 5}'),
                    write("runs/r/eval/boolq.jsonl", "kept\n"))),
    # ---- 13. two launches in one folder ---------------------------------------------------------
    Case("run_locked", "13", "--resume while another process holds RUN/.lock", R(), 2,
         ("another process", ".lock"), setup=then(copy_run, hold_lock)),
    # ---- 14. an existing --run_name; flags with --resume -------------------------------------------
    Case("existing_run_name", "14", "a new training into an existing --run_name", T(), 2,
         ("exists", "--resume", "--run_name"), setup=copy_run_as_new_run_name),
    Case("resume_config_flag", "14", "--resume RUN --lr 1", R("--lr", "1"), 2, ("--lr", "cannot change"),
         setup=copy_run),
    Case("resume_max_steps", "14", "--resume RUN --max_steps 3 (allowed, noted)", R("--max_steps", "3"), 0,
         ("note: resuming with --max_steps 3",), strict=False, setup=copy_run, check=resumed_run_check(3)),
    Case("resume_missing_folder", "14", "--resume of a folder that does not exist", ["--resume", "{work}/nope"], 2,
         ("nope", "args.json")),
    Case("resume_not_a_run", "14", "--resume of a folder without args.json", ["--resume", "{work}/empty"], 2,
         ("args.json", "not a run folder"), setup=mkdir("empty")),
    # ---- 15. Ctrl-C, a full disk, a failing plot -------------------------------------------------
    Case("sigint", "15", "Ctrl-C (SIGINT) after the first step; then --resume", REF(), 130,
         ("interrupted at step", "--resume"), strict=False, interrupt=lambda c: len(log_steps(c.out / "r")) >= 1,
         check=interrupted_check(True)),
    Case("sigterm", "15", "SIGTERM after the fifth step (checkpoints every 2); then --resume",
         REF("--save_steps", "2"), -signal.SIGTERM, (), strict=False, signal=signal.SIGTERM,
         interrupt=lambda c: len(log_steps(c.out / "r")) >= 5, check=interrupted_check(False)),
    Case("sigkill", "15", "SIGKILL after the fifth step (checkpoints every 2); then --resume",
         REF("--save_steps", "2"), -signal.SIGKILL, (), strict=False, signal=signal.SIGKILL,
         interrupt=lambda c: len(log_steps(c.out / "r")) >= 5, check=interrupted_check(False)),
    Case("disk_full", "15", "--output_folder on a full disk", T(), 1, ("out/r/", "No space left on device"),
         strict=False, setup=small_disk, check=full_disk_check, fault="enospc"),
    Case("plot_fails", "15", "loss.png cannot be written (a folder), --resume --max_steps 3", R("--max_steps", "3"), 0,
         ("warning: could not write", "loss.png"), strict=False, setup=then(copy_run, loss_png_is_a_folder),
         check=resumed_run_check(3)),
    # ---- 16. file modes -------------------------------------------------------------------------
    Case("file_modes", "16", "a finished run under umask 022", T(), 0, ("done: 2 steps",), strict=False,
         check=modes_check),
    # ---- issue 32: files the program did not write ---------------------------------------------
    Case("resume_data_changed", "32", "the training file lost 5 records since the checkpoint, then --resume", R(), 2,
         ("boolq/train.json", "records when saved", "--allow_data_change"), strict=False,
         setup=then(copy_run, run_on_changed_data)),
    Case("resume_foreign_args", "32", "args.json with keys no option has, then --resume", R(), 2,
         ("args.json", "unknown key(s) 'epochs'"), setup=then(copy_run, edit_args(epochs=3))),
    Case("eval_foreign_args", "32", "args.json with keys no option has, then E", E(), 2,
         ("args.json", "unknown key(s) 'epochs'"), setup=then(copy_run, edit_args(epochs=3))),
    Case("export_foreign_args", "32", "args.json with keys no option has, then --export peft",
         ["--ckpt", "{run}", "--export", "peft", "--export_dir", "{work}/exported"], 2,
         ("args.json", "unknown key(s) 'epochs'"), setup=then(copy_run, edit_args(epochs=3))),
    Case("resume_never_trained", "32", "a folder holding only a run's args.json, then --resume", R(), 2,
         ("no checkpoints/ and no log.jsonl",),
         setup=then(mkdir("runs/r"), lambda c: shutil.copy(c.base_run / "args.json", c.run / "args.json"))),
    Case("model_safetensors_truncated", "32", "a model folder whose model.safetensors is cut to half",
         T("--model_name", "{work}/m"), 2, ("model.safetensors", "not a complete safetensors file"),
         setup=then(copy_model, lambda c: truncate(lambda c: c.work / "m" / "model.safetensors",
                                                   (c.work / "m" / "model.safetensors").stat().st_size // 2)(c))),
    # ---- evaluation mode ------------------------------------------------------------------------
    Case("ckpt_missing", "old", "--ckpt naming no folder", ["--ckpt", "{work}/nope", "--dataset", "boolq"], 2,
         ("--ckpt", "nope")),
    Case("ckpt_adapter_folder", "old", "--ckpt RUN/best instead of the run", ["--ckpt", "{run}/best", "--dataset", "boolq"],
         2, ("pass the run folder",), setup=copy_run),
    Case("eval_training_flag", "old", "E --lr 1e-3", E("--lr", "1e-3"), 2, ("--lr", "training flag"), setup=copy_run),
    Case("eval_unknown_task", "old", "E --dataset nosuch", E("--dataset", "nosuch"), 2, ("nosuch",), setup=copy_run),
]
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


# ---- running one command -----------------------------------------------------------------------
PROGRESS = re.compile(r"^\s*[\w ]*:?\s*\d+%\|.*\||^\s*$")
NOTE = re.compile(r"^(note|warning):")


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    lines: list = field(default_factory=list)  # the message lines (progress bars and notes dropped if lax)

    @property
    def message(self) -> str:
        return self.lines[-1] if self.lines else ""

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or "Traceback" in self.stdout


def message_lines(stderr: str, strict: bool) -> list:
    """stderr's lines without progress bars (tqdm's, as a terminal shows them; not messages); unless
    `strict`, without note:/warning: lines either."""
    parts = [p for line in stderr.splitlines() for p in line.split("\r") if not PROGRESS.search(p)]
    return parts if strict else [p for p in parts if not NOTE.match(p)]


def child_env(extra=None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def apply_fault(fault: str | None) -> None:
    """In the command's process: a simulated full disk (every atomic write fails as write(2) does)."""
    if fault != "enospc":
        return
    import errno

    import utils.atomic as atomic

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write(2) gives: no file name
    original = atomic.atomic_write_path

    def patched(path, write_to):  # args.json is written; every later atomic write fails
        return original(path, write_to if Path(path).name == "args.json" else full)
    atomic.atomic_write_path = patched


def run_script_here(argv, fault=None) -> int:
    """Run train_knowhira.py as __main__ in this process, as the interpreter would; the exit status."""
    import runpy
    import traceback

    sys.argv = [str(SCRIPT), *argv]  # the project's root is on sys.path already (python -m, or installed)
    try:
        apply_fault(fault)
        runpy.run_path(str(SCRIPT), run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        return 1


class Runner:
    def __init__(self, mode: str):
        self.mode = mode

    def invoke(self, argv, cwd, *, env=None, interrupt=None, sig=signal.SIGINT, fault=None, timeout=TIMEOUT,
               strict=True) -> Result:
        out_file = tempfile.NamedTemporaryFile(prefix="probe_out_", delete=False)
        err_file = tempfile.NamedTemporaryFile(prefix="probe_err_", delete=False)
        start = time.time()
        if self.mode == "fork":
            pid = os.fork()
            if pid == 0:  # the command's process
                code = 1
                try:
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    os.dup2(out_file.fileno(), 1)
                    os.dup2(err_file.fileno(), 2)
                    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8")
                    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8")
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    os.chdir(cwd)
                    os.environ.clear()
                    os.environ.update(env or child_env())
                    code = run_script_here(argv, fault)
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code if isinstance(code, int) and code >= 0 else 128 + (-code))
            proc = None
        else:
            import subprocess

            cmd = [sys.executable, str(SCRIPT), *argv] if not fault else \
                [sys.executable, str(Path(__file__).resolve()), "--child-fault", fault, "--", *argv]
            proc = subprocess.Popen(cmd, cwd=cwd, env=env or child_env(), stdin=subprocess.DEVNULL,
                                    stdout=out_file, stderr=err_file)
            pid = proc.pid
        interrupted, status = False, None
        while True:
            if proc is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
            else:
                status = proc.poll()
            if status is not None:
                break
            if interrupt is not None and not interrupted and interrupt():
                os.kill(pid, sig)
                interrupted = True
            if time.time() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                if proc is None:
                    os.waitpid(pid, 0)
                else:
                    proc.wait()
                status = "timeout"
                break
            time.sleep(0.05)
        seconds = time.time() - start
        texts = []
        for f in (out_file, err_file):
            f.close()
            texts.append(Path(f.name).read_text(errors="replace"))
            os.unlink(f.name)
        if fault is None and self.mode == "fork" and isinstance(status, int) and status > 128:
            pass  # our own _exit(128 + signal) of an uncaught KeyboardInterrupt
        rc = status if isinstance(status, int) else 999
        return Result(rc, texts[0], texts[1], seconds, message_lines(texts[1], strict))


# ---- the scratch folder, snapshots, judging ------------------------------------------------------
class Ctx:
    def __init__(self, runner, work: Path, fixtures: dict, mode_full_disk: str):
        self.runner, self.work = runner, work
        self.model, self.data, self.base_run = (Path(fixtures[k]) for k in ("model", "data", "base_run"))
        self.ref_run = Path(fixtures.get("ref_run", work))
        self.out, self.run = work / "out", work / "runs" / "r"
        self.vars = {"model": str(self.model), "data": str(self.data), "work": str(work), "out": str(self.out),
                     "run": str(self.run)}
        self.mode_full_disk, self.mounted, self.lock, self.diff = mode_full_disk, [], None, []

    def argv(self, templates):
        return [t.format(**self.vars) for t in templates]

    def invoke(self, argv, **kw) -> Result:
        return self.runner.invoke(argv, self.work, **kw)


def snapshot(folder: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), folder) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                out[os.path.relpath(p, folder)] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
            except OSError as e:
                out[os.path.relpath(p, folder)] = f"unreadable {e}"
    return out


def diff(before: dict, after: dict) -> list:
    return sorted([f"+{k}" for k in after.keys() - before.keys()] + [f"-{k}" for k in before.keys() - after.keys()]
                  + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]])


def summarise(changes: list) -> str:
    if not changes:
        return "nothing new"
    groups = {}
    for c in changes:
        parts = c[1:].split("/")
        key = c[0] + "/".join(parts[:2]) + ("/…" if len(parts) > 2 else "")
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" if n > 1 else k for k, n in sorted(groups.items()))


def judge(case: Case, result: Result) -> list:
    problems = []
    if result.rc != case.exit:
        problems.append(f"exit {result.rc}, expected {case.exit}")
    if result.traceback:
        problems.append("a traceback")
    if case.exit < 0:  # killed by a signal: no message of its own
        text = result.stderr
    elif case.exit != 0:
        if len(result.lines) != 1:
            problems.append(f"{len(result.lines)} message lines on stderr, expected 1")
        text = result.message
    else:
        text = result.stdout + "\n" + result.stderr
    problems += [f"the message lacks {w!r}" for w in case.words if w not in text]
    return problems


def shown_message(case: Case, result: Result) -> str:
    if case.exit < 0 and result.rc < 0:
        return f"(killed by {signal.Signals(-result.rc).name}; prints nothing)"
    if case.exit != 0 or result.rc != 0:
        return result.message or (result.stderr.strip().splitlines() or [""])[-1]
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        for part in line.split("\r"):
            if case.words and case.words[0] in part:
                return part.strip()
    return ""


def run_case(case: Case, runner: Runner, root: Path, fixtures: dict, mode_full_disk: str) -> dict:
    work = root / "cases" / case.name
    work.mkdir(parents=True)
    ctx = Ctx(runner, work, fixtures, mode_full_disk)
    outcome = {"name": case.name, "defect": case.defect, "what": case.what, "expected_exit": case.exit}
    try:
        if case.setup:
            case.setup(ctx)
        before = snapshot(work)
        argv = ctx.argv(case.argv)
        outcome["argv"] = argv
        fault = case.fault if case.fault and mode_full_disk == "simulated" else None
        result = ctx.invoke(argv, strict=case.strict, fault=fault,
                            interrupt=(lambda: case.interrupt(ctx)) if case.interrupt else None, sig=case.signal)
        ctx.diff = diff(before, snapshot(work))
        problems = judge(case, result)
        if case.check:
            more, leftovers = case.check(ctx, result)
            problems += more
        else:
            problems += [f"left {c}" for c in ctx.diff[:5]]
            leftovers = summarise(ctx.diff)
        outcome.update(rc=result.rc, message=shown_message(case, result), stderr=result.stderr[-4000:],
                       stdout=result.stdout[-2000:], seconds=round(result.seconds, 1), leftovers=leftovers,
                       changes=ctx.diff[:20], problems=problems, traceback=result.traceback)
    except Exception as e:  # a broken case is reported, not raised
        import traceback

        outcome.update(rc=None, message="", leftovers="", problems=[f"probe error: {e!r}"],
                       traceback=False, stderr=traceback.format_exc()[-3000:], seconds=0)
    finally:
        if ctx.lock is not None:
            ctx.lock.close()
        for disk in ctx.mounted:
            import subprocess

            subprocess.run(["umount", str(disk)], check=False)
    outcome["clear"] = not outcome["problems"]
    return outcome


# ---- fixtures: tiny models, data copies, the shared run -----------------------------------------
def make_data(src: Path, dst: Path) -> None:
    for task in TASKS:
        for split in ("train", "test"):
            records = json.loads((src / task / f"{split}.json").read_text())[:N_RECORDS]
            (dst / task).mkdir(parents=True, exist_ok=True)
            (dst / task / f"{split}.json").write_text(json.dumps(records))


def make_model(dst: Path, tokenizer_dir: Path) -> None:
    """A tiny RANDOMLY INITIALISED Llama (2 layers, hidden 48, 512 positions) with the GPT-2 tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50257, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=50256, eos_token_id=50256)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(dst))


def in_child(fn, *args) -> None:
    """fn(*args) in a forked process (the parent stays free of torch threads and state)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, raw = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(raw) != 0:
        raise RuntimeError(f"{fn.__name__} failed")


def make_fixtures(root: Path, runner: Runner) -> dict:
    data_src = Path(os.environ.get("KNOWHIRA_DATA_DIR", ""))
    tok = Path(os.environ.get("KNOWHIRA_TOKENIZER_DIR", ""))
    for var, path in (("KNOWHIRA_DATA_DIR", data_src), ("KNOWHIRA_TOKENIZER_DIR", tok)):
        if not str(path) or not path.is_dir():
            sys.exit(f"error: {var} must name a folder (the commonsense data / the GPT-2 tokenizer)")
    fixtures = {"data": root / "data", "model": root / "tiny_llama", "base_run": root / "base" / "r",
                "ref_run": root / "ref" / "r"}
    make_data(data_src, fixtures["data"])
    in_child(make_model, fixtures["model"], tok)
    ctx = Ctx(runner, root, {**fixtures, "base_run": root}, "none")
    for out, argv in (("base", T("--save_steps", "1")), ("ref", REF())):
        ctx.vars["out"] = str(root / out)
        result = runner.invoke(ctx.argv(argv), root, strict=False)
        if result.rc != 0:
            sys.exit(f"error: the shared training run {out} failed (exit {result.rc}):\n{result.stderr[-3000:]}")
    return {k: str(v) for k, v in fixtures.items()}


def preimport() -> str:
    """Import what the commands use, once, before forking (stderr of the imports is returned)."""
    err = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(err.fileno(), 2)
    try:
        import accelerate  # noqa: F401
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import peft  # noqa: F401
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
        from transformers.models.llama import modeling_llama  # noqa: F401

        import train_knowhira  # noqa: F401
        import training.recipe  # noqa: F401
        import eval.evaluate  # noqa: F401
        import models.get_models  # noqa: F401
        import numpy  # noqa: F401
        from safetensors.numpy import load_file  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    err.seek(0)
    return err.read().decode(errors="replace")


def can_mount_tmpfs(root: Path) -> bool:
    import subprocess

    target = root / "mount_test"
    target.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(target)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(target)], check=False)
    target.rmdir()
    return ok


# ---- the whole probe ---------------------------------------------------------------------------
def probe(names: list, mode: str = "fork", jobs: int = 2, keep: bool = False, full_disk: str = "auto",
          log=print) -> dict:
    for k, v in child_env().items():
        os.environ.setdefault(k, v)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"
    root = Path(tempfile.mkdtemp(prefix="knowhira_probe_"))
    started = time.time()
    import_noise = preimport() if mode == "fork" else ""
    runner = Runner(mode)
    if full_disk == "auto":
        full_disk = "tmpfs" if can_mount_tmpfs(root) else "simulated"
    log(f"probe: {len(names)} cases, mode {mode}, full disk {full_disk}, scratch {root}")
    try:
        fixtures = make_fixtures(root, runner)
        log(f"probe: fixtures ready in {time.time() - started:.0f} s")
        results_dir = root / "outcomes"
        results_dir.mkdir()
        pending, running, outcomes = list(names), {}, {}
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                pid = os.fork()
                if pid == 0:  # a worker: one case, its outcome as JSON
                    code = 1
                    try:
                        outcome = run_case(BY_NAME[name], runner, root, fixtures, full_disk)
                        (results_dir / f"{name}.json").write_text(json.dumps(outcome))
                        code = 0
                    except BaseException:
                        import traceback

                        traceback.print_exc()
                    finally:
                        os._exit(code)
                running[pid] = name
            pid, raw = os.wait()
            name = running.pop(pid)
            path = results_dir / f"{name}.json"
            outcomes[name] = json.loads(path.read_text()) if path.is_file() else {
                "name": name, "defect": BY_NAME[name].defect, "what": BY_NAME[name].what,
                "expected_exit": BY_NAME[name].exit, "rc": None, "message": "", "leftovers": "",
                "problems": ["the probe's worker died"], "clear": False, "traceback": False, "seconds": 0}
            o = outcomes[name]
            log(f"{'ok  ' if o['clear'] else 'FAIL'} {name:32s} exit {o['rc']} ({o['seconds']} s) {o['message'][:90]}"
                + ("" if o["clear"] else f"\n     problems: {o['problems']}"))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    ordered = [outcomes[n] for n in names]
    return {"mode": mode, "full_disk": full_disk, "seconds": round(time.time() - started, 1),
            "import_stderr": import_noise, "scratch": str(root) if keep else None, "cases": ordered,
            "tried": len(ordered), "clear": sum(o["clear"] for o in ordered),
            "tracebacks": sum(bool(o.get("traceback")) for o in ordered)}


SCRATCH = re.compile(r"/\S*?knowhira_probe_[^/\s]+")


def table(report: dict) -> str:
    def cell(text):  # the scratch folder's path shown as <tmp>
        return SCRATCH.sub("<tmp>", str(text)).replace("|", "\\|").replace("\n", " ")

    rows = ["| case | item | what | exit (expected) | one-line message | leftovers | clear |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in report["cases"]:
        rows.append(f"| {o['name']} | {o['defect']} | {cell(o['what'])} | {o['rc']} ({o['expected_exit']}) | "
                    f"{cell(o['message'])[:240]} | {cell(o['leftovers'])} | "
                    f"{'yes' if o['clear'] else 'NO: ' + cell('; '.join(o['problems']))} |")
    return "\n".join(rows)


def markdown(report: dict) -> str:
    return f"""# What train_knowhira.py does with bad input (probe)

`python -m scripts.probe_bad_inputs{' --mode subprocess' if report['mode'] == 'subprocess' else ''} --out docs/robustness.md`
ran every case of its table ({'a fresh interpreter per command, as a shell starts it' if report['mode'] == 'subprocess'
else 'one forked process per command'}) on tiny RANDOMLY INITIALISED Llama models (2 layers, hidden 48, 512
positions, the GPT-2 tokenizer) and 40-record copies of the real data files; each case in its own scratch
folder. tests/test_robustness.py runs the same table (fork mode).

**{report['tried']} tried, {report['clear']} clear, {report['tracebacks']} tracebacks** ({report['seconds']:.0f} s;
full disk: {'a 24 KiB tmpfs' if report['full_disk'] == 'tmpfs' else 'simulated ENOSPC in the writes of utils/atomic.py'}).

A case is clear when the exit status is the expected one (2 bad input, 3 non-finite training, 130
Ctrl-C, 1 other OS errors such as a full disk, 0 where the run is meant to go on), stderr holds no
traceback and exactly one message line with the case's words (for failures in the middle of training:
one line besides the progress bars), and the scratch folder holds nothing new (every file's bytes
compared before and after) or exactly what the case promises (its check, e.g. a resumed run's log
with each step once). `T`, `E`: the issue's training and evaluation commands (scripts/probe_bad_inputs.py).

Paths under the probe's scratch folder are shown as `<tmp>`; messages longer than 240 characters are cut
here (never in the program).

{table(report)}
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the table as markdown here (e.g. docs/robustness.md)")
    p.add_argument("--json", help="write every outcome as JSON here")
    p.add_argument("--cases", help="comma list of case names (default: all)")
    p.add_argument("--mode", choices=("fork", "subprocess"), default="fork")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--full-disk", choices=("auto", "tmpfs", "simulated"), default="auto",
                   help="how disk_full fills the disk (auto: a tmpfs where this process may mount one)")
    p.add_argument("--child-fault", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_fault:  # --mode subprocess: a command with a simulated fault
        return run_script_here(args.rest, args.child_fault)
    names = list(dict.fromkeys(n.strip() for n in args.cases.split(","))) if args.cases else [c.name for c in CASES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(BY_NAME)}")
    report = probe(names, args.mode, args.jobs, args.keep, args.full_disk)
    print(table(report))
    print(f"\n{report['tried']} tried, {report['clear']} clear, {report['tracebacks']} tracebacks "
          f"({report['seconds']:.0f} s, mode {report['mode']}, full disk {report['full_disk']})")
    if report["import_stderr"].strip():
        print(f"note: importing the libraries printed on stderr:\n{report['import_stderr'][-2000:]}")
    if args.out:
        Path(args.out).write_text(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["clear"] == report["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())

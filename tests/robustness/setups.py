"""The probe's table, part one: the constants, the Case record, the command templates (T, REF, E, R),
the setups that prepare a scratch folder and the checks of what a case may leave on disk (cases.py
holds the table itself; probe.py says how it all runs)."""
import json
import re
import shutil
import signal
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
    fault: str | None = None  # "enospc"/"fsize": simulated full disk (when no tmpfs can be mounted; child.py)
    script: str = "train_knowhira.py"  # the command: a script of the root (.py, or .sh run by bash), or a module
    lines: int = 1  # message lines allowed (a helper script's: its own line, then the tail of the failed log)
    env: dict = field(default_factory=dict)  # environment variables added for the command


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


def data_file_replaced(make):
    """A private copy of the data folder at {work}/data whose boolq/train.json is replaced: make(path)."""
    def d(ctx):
        data_copy(lambda records: "")(ctx)
        path = ctx.work / "data" / "boolq" / "train.json"
        path.unlink()
        make(path)
    return d


def small_gguf(path: Path) -> Path:
    """A whole GGUF file written by gguf's own writer: architecture llama, one 64 x 48 F32 tensor (12,288 bytes
    of data)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((64, 48), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def lora_of_another_width(ctx):
    """{work}/lora: a stock peft LoRA adapter (q_proj, v_proj, r 4) of a tiny RANDOM Llama of hidden size 32,
    not the fixture's 48."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         num_key_value_heads=2, max_position_embeddings=512))
    lora = get_peft_model(other, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    lora.save_pretrained(str(ctx.work / "lora"))


def cut_gguf(ctx):
    """{work}/m.gguf: small_gguf cut 1000 bytes short (in its tensor data)."""
    path = small_gguf(ctx.work / "m.gguf")
    truncate(lambda c: path, path.stat().st_size - 1000)(ctx)


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


def long_cloze_question(records):
    """long_question's padding inside the question (the cloze prompt parses the instruction's prefix)."""
    records, head = records[:4], "with true or false, question: "
    assert head in records[1]["instruction"], records[1]["instruction"][:120]
    records[1] = {**records[1], "instruction": records[1]["instruction"].replace(
        head, head + " ".join(["Is it so?"] * 300) + " ", 1)}
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


def evaluated_once_check(task):
    """An evaluation that names `task` twice: one line of results for it, results.json with it once."""
    def check(ctx, result):
        lines = [line for line in result.stdout.splitlines() if line.split()[:1] == [task]]
        tasks = json.loads((ctx.run / "results.json").read_text())["tasks"] if (ctx.run / "results.json").is_file() else {}
        problems = [] if len(lines) == 1 and list(tasks) == [task] else \
            [f"{len(lines)} result lines for {task}; results.json tasks {list(tasks)}"]
        return problems, f"results.json with {task} once, eval/{task}.jsonl"
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


# issue 32: a pause before a resume, shared results folders, a stale lock, a kill inside a checkpoint write ----
PAUSE = 3600  # seconds between a killed process and its --resume (shifted into the copied log)


def paused_an_hour(ctx):
    """The run copy's log as if its process stopped an hour ago: every record's wall time PAUSE s earlier."""
    path = ctx.run / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    path.write_text("".join(json.dumps({**r, **({"time": r["time"] - PAUSE} if "time" in r else {})}) + "\n"
                            for r in records))


def step_time_check(steps):
    """resumed_run_check(steps), and train_summary.json's median step time is a step's, not the pause: with
    the pause counted, the median of the spans (step 1 -> 2, 2 -> 3 across the pause) is over PAUSE / 2."""
    def check(ctx, result):
        problems, leftovers = resumed_run_check(steps)(ctx, result)
        summary = json.loads((ctx.run / "train_summary.json").read_text())
        median = summary.get("median_step_s")
        if not (isinstance(median, float) and 0 < median < 60):
            problems.append(f"train_summary.json median_step_s {median!r}: not a step's time (pause {PAUSE} s)")
        return problems, f"{leftovers}; train_summary.json median step {median:.3f} s"
    return check


def evaluated(*extra):
    """Setup: E(*extra) run on the run copy first (its results.json then holds that evaluation)."""
    def e(ctx):
        result = ctx.invoke(ctx.argv(E(*extra)), strict=False)
        if result.rc != 0:
            raise RuntimeError(f"the setup's evaluation failed (exit {result.rc}): {result.stderr[-1500:]}")
    return e


def results_tasks(run: Path) -> list:
    path = run / "results.json"
    return sorted(json.loads(path.read_text())["tasks"]) if path.is_file() else []


def concurrent_eval_check(ctx, result):
    """The evaluation started beside the case's own (setup: ctx.start) also ends well, and results.json holds
    both tasks with their rows."""
    (other,) = [ctx.runner.finish(started) for started in ctx.background]
    problems = [] if other.rc == 0 and not other.traceback else \
        [f"the other evaluation: exit {other.rc}: {message_of(other.stderr)}"]
    tasks = results_tasks(ctx.run)
    if tasks != ["boolq", "openbookqa"]:
        problems.append(f"results.json holds {tasks}, expected both ['boolq', 'openbookqa']")
    rows = {t: len((ctx.run / "eval" / f"{t}.jsonl").read_text().splitlines())
            for t in ("boolq", "openbookqa") if (ctx.run / "eval" / f"{t}.jsonl").is_file()}
    if rows != {"boolq": 4, "openbookqa": 4}:
        problems.append(f"rows in eval/: {rows}")
    return problems, f"results.json with {tasks} (the other evaluation: exit {other.rc}), eval/ rows {rows}"


def message_of(stderr: str) -> str:
    return (stderr.strip().splitlines() or [""])[-1][:200]


def stale_lock(ctx):
    """RUN/.lock as a SIGKILLed trainer leaves it: a process took the lock, then was killed (the file stays)."""
    import fcntl
    import os

    pid = os.fork()
    if pid == 0:
        try:
            handle = open(ctx.run / ".lock", "a")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, raw = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(raw) == -signal.SIGKILL and (ctx.run / ".lock").is_file()


def killed_in_save_check(step, keep):
    """SIGKILL inside the write of checkpoint `step` (training/checkpoint.py's fault hook: after
    trainable.safetensors, before state.pt) with --keep_checkpoints `keep`: the half-written step_*.tmp/ is
    there, `latest` names the complete checkpoint before it, no more than `keep` complete ones are left; then
    --resume finishes with the uninterrupted run's losses (interrupted_check)."""
    def check(ctx, result):
        root, problems = ctx.out / "r" / "checkpoints", []
        tmp = root / f"step_{step:06d}.tmp"
        if not ((tmp / "trainable.safetensors").is_file() and not (tmp / "state.pt").exists()):
            problems.append(f"no half-written {tmp.name}/ (the kill was not inside the write)")
        complete = [p.name for p in checkpoints(ctx.out / "r") if p.suffix != ".tmp"]
        if latest_of(ctx.out / "r") != f"step_{step - 1:06d}" or len(complete) > keep:
            problems.append(f"latest {latest_of(ctx.out / 'r')}, complete checkpoints {complete}")
        more, leftovers = interrupted_check(False)(ctx, result)
        return problems + more, f"{tmp.name}/ half-written beside {complete}; {leftovers}"
    return check


def no_code_ran(marker, *words):
    """A helper script given a value with a quote: it ran (its output holds `words`) and the code in the
    value did not (no {work}/`marker`)."""
    def check(ctx, result):
        problems = [f"{marker} exists: code in a value ran"] if (ctx.work / marker).exists() else []
        problems += [f"the output lacks {w!r}" for w in words if w not in result.stdout]
        return problems, f"the sweep's run folder; no {marker}"
    return check

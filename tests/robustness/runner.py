"""Running one command (fork or subprocess), the scratch folder and its snapshots, judging a case,
and the fixtures (tiny models, data copies, the shared runs)."""
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.robustness.child import DISK_FAULTS, ROOT, command, run_script_here
from tests.robustness.setups import N_RECORDS, REF, TASKS, TIMEOUT, Case, T

CHILD = Path(__file__).resolve().parent / "child.py"  # --mode subprocess: a command with a fault runs it


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


@dataclass
class Started:
    """A command started by Runner.start: its process (pid; the Popen in subprocess mode) and output files."""
    pid: int
    proc: object
    out_file: object
    err_file: object
    start: float
    done: bool = False  # finish() has reaped it


class Runner:
    def __init__(self, mode: str):
        self.mode = mode

    def invoke(self, argv, cwd, *, env=None, interrupt=None, sig=signal.SIGINT, fault=None, timeout=TIMEOUT,
               strict=True, script="train_knowhira.py") -> Result:
        return self.finish(self.start(argv, cwd, env=env, fault=fault, script=script), interrupt=interrupt, sig=sig,
                           timeout=timeout, strict=strict)

    def start(self, argv, cwd, *, env=None, fault=None, script="train_knowhira.py") -> "Started":
        """Start the command (not waiting for it): finish() waits and gives its Result. A case may start
        one in its setup to run beside its own command (two evaluations into one results folder)."""
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
                    code = run_script_here(argv, fault, script)
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code if isinstance(code, int) and code >= 0 else 128 + (-code))
            proc = None
        else:
            import subprocess

            cmd = [*command(script, sys.executable), *argv] if not fault else \
                [sys.executable, str(CHILD), "--child-fault", fault, "--script", script, "--", *argv]
            proc = subprocess.Popen(cmd, cwd=cwd, env=env or child_env(), stdin=subprocess.DEVNULL,
                                    stdout=out_file, stderr=err_file)
            pid = proc.pid
        return Started(pid, proc, out_file, err_file, start)

    def finish(self, started: "Started", *, interrupt=None, sig=signal.SIGINT, timeout=TIMEOUT, strict=True) -> Result:
        pid, proc, start = started.pid, started.proc, started.start
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
        seconds, started.done = time.time() - start, True
        texts = []
        for f in (started.out_file, started.err_file):
            f.close()
            texts.append(Path(f.name).read_text(errors="replace"))
            os.unlink(f.name)
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
        self.background = []  # commands a setup started beside the case's own (Started)

    def argv(self, templates):
        return [t.format(**self.vars) for t in templates]

    def invoke(self, argv, **kw) -> Result:
        return self.runner.invoke(argv, self.work, **kw)

    def start(self, templates, fault=None) -> None:
        """Start the command `templates` beside the case's own (its check waits for it: ctx.background)."""
        self.background.append(self.runner.start(self.argv(templates), self.work, fault=fault,
                                                 env=child_env({"PYTHONPATH": str(ROOT)})))


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
        if not 1 <= len(result.lines) <= case.lines:
            problems.append(f"{len(result.lines)} message lines on stderr, expected "
                            f"{1 if case.lines == 1 else f'1 to {case.lines}'}")
        text = result.message if case.lines == 1 else "\n".join(result.lines)
    else:
        text = result.stdout + "\n" + result.stderr
    problems += [f"the message lacks {w!r}" for w in case.words if w not in text]
    return problems


def shown_message(case: Case, result: Result) -> str:
    if case.exit < 0 and result.rc < 0:
        return f"(killed by {signal.Signals(-result.rc).name}; prints nothing)"
    if case.exit != 0 or result.rc != 0:
        shown = " / ".join(result.lines) if case.lines > 1 else result.message
        return shown or (result.stderr.strip().splitlines() or [""])[-1]
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
        fault = case.fault if case.fault and (case.fault not in DISK_FAULTS or mode_full_disk == "simulated") else None
        result = ctx.invoke(argv, strict=case.strict, fault=fault, script=case.script,
                            env=child_env({"PYTHONPATH": str(ROOT),  # the root: for -m modules
                                           **{k: v.format(**ctx.vars) for k, v in case.env.items()}}),
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
        for started in ctx.background:
            if not started.done:  # the case failed before its check waited for it
                os.kill(started.pid, signal.SIGKILL)
                ctx.runner.finish(started)
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

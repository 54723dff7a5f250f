"""Probe train_knowhira.py with bad input, damaged files and failures mid-run; print what a user sees.

    python -m tests.robustness [--out docs/robustness.md] [--cases a,b] [--mode fork|subprocess]

Every case (the CASES table of cases.py: how to set it up, the command line, the exit status and the words
its message must hold, what may be left on disk) runs train_knowhira.py (or the case's other command:
analyze_results.py, analyze_adapter.py, python -m data.download, bash scripts/sweep_lr.sh) as its own process,
in its own scratch folder, on tiny RANDOMLY INITIALISED Llama models and 40-record copies of the real data files
(from $KNOWHIRA_DATA_DIR and the GPT-2 tokenizer in $KNOWHIRA_TOKENIZER_DIR), and is judged:

    exit status   the case's (2 bad input, 3 non-finite training, 130 Ctrl-C, 1 other OS errors, 0 where
                  the case promises the run goes on)
    message       stderr is one line (no "Traceback") holding the case's words (a helper script's: its line
                  and the tail of the failed command's log). Progress bars (tqdm's and transformers', on
                  stderr as a terminal shows them) are not messages; for failures in the middle of
                  training (strict=False) note:/warning: lines are not counted either
    leftovers     the scratch folder's listing (and every file's bytes) before and after: nothing new,
                  or exactly what the case promises (its own check, e.g. a resumed run's log)

A full disk is a 24 KiB tmpfs mounted under the scratch folder when this process may mount one (root),
else a simulated ENOSPC in every atomic write after args.json (utils/atomic.py), or, for writers of other
libraries (--export's save_pretrained), a 24 KiB RLIMIT_FSIZE (child.py); the report says which.

--mode fork (default) imports torch, transformers, ... once and forks one process per command (each
runs the script as __main__ with its own stdin/stdout/stderr, environment and signals; what the
imports print is reported), so the ~130 cases take about a minute or two on 2 cores; --mode
subprocess starts a fresh interpreter per command, exactly as a user's shell does (slower).
tests/test_robustness.py runs this table.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.robustness.cases import BY_NAME, CASES
from tests.robustness.child import run_script_here
from tests.robustness.runner import Runner, can_mount_tmpfs, child_env, make_fixtures, preimport, run_case


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
    return f"""# What train_knowhira.py (and the analysis and download commands) do with bad input (probe)

`python -m tests.robustness{' --mode subprocess' if report['mode'] == 'subprocess' else ''} --out docs/robustness.md`
ran every case of its table ({'a fresh interpreter per command, as a shell starts it' if report['mode'] == 'subprocess'
else 'one forked process per command'}) on tiny RANDOMLY INITIALISED Llama models (2 layers, hidden 48, 512
positions, the GPT-2 tokenizer) and 40-record copies of the real data files; each case in its own scratch
folder. tests/test_robustness.py runs the same table (fork mode).

**{report['tried']} tried, {report['clear']} clear, {report['tracebacks']} tracebacks** ({report['seconds']:.0f} s;
full disk: {'a 24 KiB tmpfs' if report['full_disk'] == 'tmpfs' else 'simulated: ENOSPC in the writes of utils/atomic.py, a 24 KiB RLIMIT_FSIZE for --export'}).

A case is clear when the exit status is the expected one (2 bad input, 3 non-finite training, 130
Ctrl-C, 1 other OS errors such as a full disk, 0 where the run is meant to go on), stderr holds no
traceback and exactly one message line with the case's words (for failures in the middle of training:
one line besides the progress bars), and the scratch folder holds nothing new (every file's bytes
compared before and after) or exactly what the case promises (its check, e.g. a resumed run's log
with each step once). `T`, `E`: the issue's training and evaluation commands (tests/robustness/setups.py);
the cases named analyze_*, download_* and sweep_lr_* run those commands instead (sweep_lr_*: one line
and the end of the failed run's log). eval_two_at_once starts a second evaluation beside its own into the same
folder, each write of results.json made 4 s slow (a fault of tests/robustness/child.py), so the two overlap there.

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

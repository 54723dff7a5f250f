"""The command's own process: train_knowhira.py (or another of the project's commands: a script of the
root, or a module run with -m) run as __main__ here, as the interpreter would, with an optional simulated
fault. runner.py calls run_script_here in a forked process (--mode fork); with --mode subprocess, a
command with a fault runs this file by path:

    python tests/robustness/child.py --child-fault enospc -- ARGS...

It imports nothing of tests/ (the project itself is importable: python -m from the root, or installed)."""
import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


DISK_FAULTS = ("enospc", "fsize")  # a simulated full disk: only where no tmpfs can be mounted


def command(script: str, python: str) -> list:
    """The command line a shell would run for `script`: a file of the root (train_knowhira.py, ...), a shell
    script (scripts/sweep_lr.sh, run by bash) or a module (data.download, run with -m; the child's PYTHONPATH
    names the root)."""
    if script.endswith(".sh"):
        return ["bash", str(ROOT / script)]
    return [python, str(ROOT / script)] if script.endswith(".py") else [python, "-m", script]


def apply_fault(fault: str | None) -> None:
    """In the command's process: a simulated full disk. "enospc": every atomic write fails as write(2)
    does; "fsize": a real failed write past 24 KiB (RLIMIT_FSIZE, EFBIG), also in writers of other
    libraries (safetensors' save_pretrained), without root. "slow_results": every write of a results.json
    waits 4 s first (inside evaluation's read-modify-write of it), so two evaluations into one folder
    overlap there: the window a race needs, made wide."""
    if fault == "slow_results":
        import time

        import eval.evaluate as evaluate

        write = evaluate.atomic_write_bytes

        def slow(path, data):
            if Path(path).name == "results.json":
                time.sleep(4)
            return write(path, data)
        evaluate.atomic_write_bytes = slow
        return
    if fault == "fsize":
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (24 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return
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


def run_script_here(argv, fault=None, script="train_knowhira.py") -> int:
    """Run `script` (train_knowhira.py by default; see command()) as __main__ in this process, as the
    interpreter would; the exit status."""
    import runpy
    import subprocess
    import traceback

    path = ROOT / script
    if script.endswith(".sh"):  # its own process (bash); its environment is this one's
        sys.stdout.flush()
        sys.stderr.flush()
        return subprocess.run(command(script, sys.executable) + list(argv), stdin=subprocess.DEVNULL).returncode
    sys.argv = [str(path) if script.endswith(".py") else script, *argv]  # the root is on sys.path already
    try:
        apply_fault(fault)
        if script.endswith(".py"):
            runpy.run_path(str(path), run_name="__main__")
        else:
            runpy.run_module(script, run_name="__main__", alter_sys=True)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="run train_knowhira.py here with a simulated fault")
    p.add_argument("--child-fault", required=True)
    p.add_argument("--script", default="train_knowhira.py")
    p.add_argument("rest", nargs="*")
    args = p.parse_args(argv)
    return run_script_here(args.rest, args.child_fault, args.script)


if __name__ == "__main__":
    sys.exit(main())

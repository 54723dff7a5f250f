"""The command's own process: train_knowhira.py run as __main__ here, as the interpreter would, with an
optional simulated fault. runner.py calls run_script_here in a forked process (--mode fork); with
--mode subprocess, a command with a fault runs this file by path:

    python tests/robustness/child.py --child-fault enospc -- ARGS...

It imports nothing of tests/ (the project itself is importable: python -m from the root, or installed)."""
import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "train_knowhira.py"


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="run train_knowhira.py here with a simulated fault")
    p.add_argument("--child-fault", required=True)
    p.add_argument("rest", nargs="*")
    args = p.parse_args(argv)
    return run_script_here(args.rest, args.child_fault)


if __name__ == "__main__":
    sys.exit(main())

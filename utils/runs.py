"""Reading a run folder: its args.json and which saved state (best/ or final/) stands for it."""
import json
from pathlib import Path


def read_json(path):
    """The JSON in `path`; ValueError naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def run_args(run_dir, flag: str) -> dict:
    """RUN_DIR/args.json; FileNotFoundError naming `flag` when RUN_DIR is not a run folder."""
    args_file = Path(run_dir) / "args.json"
    if not args_file.is_file():
        raise FileNotFoundError(f"{flag} {run_dir}: no args.json there (not a run folder)")
    return read_json(args_file)


def saved_dir_of(run_dir) -> Path:
    """best/ if the run kept one, else final/."""
    run_dir = Path(run_dir)
    return run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "final"

"""Reading a run folder: its args.json and which saved state (best/ or final/) stands for it."""
import json
from pathlib import Path

from utils.errors import BadInput


def read_json(path, holds: str | None = None):
    """The JSON in `path` (the one reader of the files the program reads back); ValueError naming the file
    when it is not valid JSON, or, with `holds` (what the file should hold), not a JSON object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not valid JSON ({e})") from None
    if holds is not None and not isinstance(value, dict):
        raise BadInput(f"{path}: expected a JSON object of {holds}, got {type(value).__name__}")
    return value


# what every run's args.json has held since runs were written (resume needs the training ones as well)
REQUIRED = ("model_name", "peft_type")
RESUME_REQUIRED = ("dataset", "data_dir", "lr", "seed", "batch", "max_steps")


def run_args(run_dir, flag: str, required=REQUIRED, known: set[str] | None = None) -> dict:
    """RUN_DIR/args.json; FileNotFoundError naming `flag` when RUN_DIR is not a run folder, BadInput when
    its args.json is not a run's of this program (not an object, a key not in `known` (every key a run's
    args.json may hold: training/recipe.py `args_json_keys`, passed by the command line), a `required` key
    missing, or a model_name/peft_type that is not a string)."""
    args_file = Path(run_dir) / "args.json"
    if not args_file.is_file():
        raise BadInput(f"{flag} {run_dir}: no args.json there (not a run folder)")
    saved = read_json(args_file)
    if not isinstance(saved, dict) or not isinstance(saved.get("model_name"), str):
        raise BadInput(f"{args_file}: not a run's arguments (expected a JSON object with model_name, "
                       f"peft_type and the other options; got {type(saved).__name__}"
                       f"{'' if not isinstance(saved, dict) else ' without model_name'})")
    foreign = sorted(saved.keys() - known) if known is not None else []
    missing = [k for k in required if k not in saved]
    if foreign or missing:
        what = "; ".join(([f"unknown key(s) {', '.join(map(repr, foreign[:5]))}"
                           f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}"] if foreign else [])
                         + ([f"missing {', '.join(map(repr, missing))}"] if missing else []))
        raise BadInput(f"{flag} {run_dir}: {args_file} is not the arguments of a run of this program ({what}); "
                       "a folder made by another program is not read or changed")
    if not isinstance(saved["peft_type"], str):
        raise BadInput(f"{args_file}: peft_type must be a method name (a string), got "
                       f"{type(saved['peft_type']).__name__} {saved['peft_type']!r}")
    return saved


def saved_dir_of(run_dir) -> Path:
    """best/ if the run kept one, else final/."""
    run_dir = Path(run_dir)
    return run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "final"


class RunLock:
    """An exclusive lock on a run folder (RUN_DIR/.lock, fcntl.flock) held while a process trains in
    it, so a second launch into the same folder is refused with one line instead of interleaving
    its logs. Only the writing process (rank 0) locks. `remove_on_release` marks the folder for
    removal when the lock is released (a new run that failed before its first checkpoint), with the
    parent folders this lock created for it (e.g. a new --output_folder) when they are empty."""

    _remove: set = set()

    def __init__(self, run_dir, active: bool = True):
        self.run_dir, self.active, self.handle = Path(run_dir), active, None
        self.created = []  # the folders mkdir made, the run folder first

    def __enter__(self):
        if self.active:
            import fcntl

            self.created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.run_dir / ".lock", "a")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.close()
                raise BadInput(f"another process is training in {self.run_dir} (it holds "
                               f"{self.run_dir / '.lock'}); wait for it or pick another --run_name") from None
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()  # releases the lock
            if self.run_dir in RunLock._remove:
                import shutil

                RunLock._remove.discard(self.run_dir)
                shutil.rmtree(self.run_dir, ignore_errors=True)
                for parent in self.created[1:]:
                    try:
                        parent.rmdir()  # only if empty
                    except OSError:
                        break
        return False

    @classmethod
    def remove_on_release(cls, run_dir) -> None:
        cls._remove.add(Path(run_dir))

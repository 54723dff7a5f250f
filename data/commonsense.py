"""Loading the LLM-Adapters commonsense files and holding out a validation set.

Layout of a data folder (as in the LLM-Adapters repository, see data/download.py):

    <data_dir>/commonsense_170k.json          the full training mix (170,420 records)
    <data_dir>/<task>/train.json              per-task training split (where published)
    <data_dir>/<task>/test.json               per-task test split (evaluation only)

Each file is a JSON list of records {"instruction", "input", "output", "answer"}, where
"output" reads e.g. "the correct answer is answer2" and "answer" is the bare answer word.

Every bad input raises DataError with a message naming the file (and the record index and
field where relevant), so a broken download is found before any training starts.
"""
import json
import os
import random
from pathlib import Path

from data import hub
from data.tasks import TASKS, resolve_task
from utils.errors import BadInput

SPLITS = ("train", "test")
COMMON_170K = "common_170k"
VAL_SEED = 42  # the validation split is fixed whatever --seed is
COMMON_170K_FILE = "commonsense_170k.json"
DATASET_FORMS = (
    f"'{COMMON_170K}' (<data_dir>/{COMMON_170K_FILE}), "
    "'mix:TASK,TASK,...' (those tasks' train.json, concatenated in order), "
    f"a single task name (its train.json), or 'hf:<repo>[:<config>]' (a Hub dataset's train split, data/hub.py); "
    f"known tasks: {', '.join(TASKS)}"
)


class DataError(BadInput):
    """A data file or data argument is missing or malformed (bad input: one line, exit 2)."""


def load_records(path) -> list[dict]:
    """Read and validate one LLM-Adapters JSON file; returns a list of records.

    Each returned record is a new dict with string "instruction" (non-empty), "input" (a missing
    or null input becomes "") and "output"; other keys ("answer", ...) are kept as they are.
    """
    path = Path(path)
    check_file(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes; expected a JSON list of records)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    return check_records(data, path)


def check_records(data, source) -> list[dict]:
    """The records of `data` (a file's JSON, or a Hub split's rows) checked and normalised as load_records
    says; DataError naming `source` (a file path, or data/hub.py's 'hf:<repo>:<config> <split>')."""
    if not isinstance(data, list):
        raise DataError(f"{source}: top level is a JSON {type(data).__name__}, expected a list of records")
    if not data:
        raise DataError(f"{source}: contains no records (empty list)")

    records = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{source}: record {i} is a {type(rec).__name__}, expected an object")
        instruction = rec.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{source}: record {i} has no non-empty string field 'instruction'")
        if not isinstance(rec.get("output"), str):
            raise DataError(f"{source}: record {i} has no string field 'output'")
        inp = rec.get("input")
        if inp is None:
            inp = ""
        if not isinstance(inp, str):
            raise DataError(f"{source}: record {i} field 'input' is a {type(inp).__name__}, expected a string")
        records.append({**rec, "input": inp})
    return records


def load_hub_records(repo: str, config: str | None, split: str) -> list[dict]:
    """A Hub split's records (data/hub.py), checked as a file's are; DataError (one line) if it cannot be loaded."""
    where = hub.source(repo, config, split)
    if not repo:
        raise DataError(f"{hub.PREFIX}: no dataset repository named; expected {hub.PREFIX}<repo>[:<config>]")
    try:
        rows = hub.hub_rows(repo, config, split)
    except Exception as e:  # not found, offline, no such config or split: datasets raises many kinds
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{where}: cannot be loaded ({type(e).__name__}: {first})") from None
    return check_records(rows, where)


def check_file(path: Path, missing: str) -> None:
    """DataError naming `path` unless it is a file: a folder, a symbolic link that leads nowhere (a loop, a
    missing target) and a missing file each say so (`missing`: what a missing file means)."""
    if path.is_file():
        return
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file")
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as e:  # ELOOP, or ENOENT for a link to a missing target
            raise DataError(f"{path}: a symbolic link that leads to no file ({e.strerror})") from None
    raise DataError(f"{path}: {missing}")


def _check_data_dir(data_dir) -> Path:
    """`data_dir` as a Path; DataError if it is not an existing folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist (download it with `python -m data.download`)")
    return data_dir


def task_file(data_dir, task: str, split: str) -> Path:
    """Path of `<data_dir>/<canonical task>/<split>.json` (the file need not exist).

    DataError (a BadInput) for an unknown task, listing the known tasks, or an unknown split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(data_dir) / canonical_task(task) / f"{split}.json"


def canonical_task(task: str) -> str:
    """The task's canonical name; DataError (a BadInput) for an unknown task, listing the known tasks."""
    try:
        return resolve_task(task)
    except BadInput as e:
        raise DataError(str(e)) from e


def load_task_split(data_dir, task: str, split: str) -> list[dict]:
    """Records of one task's split, each tagged with "task" = the canonical task name. A data_dir
    'hf:<repo>' reads the repo's config named as the task (data/hub.py)."""
    if hub.is_hub(data_dir):
        canonical = canonical_task(task)
        return [{**rec, "task": canonical} for rec in load_hub_records(hub.parse(data_dir)[0], canonical, split)]
    path = task_file(_check_data_dir(data_dir), task, split)
    check_file(path, f"{split} split of task {path.parent.name!r} not found")
    canonical = path.parent.name
    return [{**rec, "task": canonical} for rec in load_records(path)]


def _parse_mix(spec: str) -> list[str]:
    """Canonical task names of 'mix:a,b,c'; DataError for an empty list or a repeated task."""
    names = [name.strip() for name in spec[len("mix:"):].split(",")]
    if not all(names):
        raise DataError(f"dataset {spec!r}: empty task name in the mix; expected 'mix:TASK,TASK,...'")
    tasks = []
    for name in names:
        try:
            canonical = resolve_task(name)
        except BadInput as e:
            raise DataError(f"dataset {spec!r}: {e}") from e
        if canonical in tasks:
            raise DataError(f"dataset {spec!r}: task {canonical!r} appears more than once in the mix")
        tasks.append(canonical)
    return tasks


def load_train_data(data_dir, dataset: str) -> list[dict]:
    """Training records for `dataset`: 'common_170k', 'mix:TASK,TASK,...' or one task name.

    'common_170k' reads <data_dir>/commonsense_170k.json (records are not tagged with a task);
    mix and single-task forms read the tasks' train.json and tag each record with "task";
    'hf:<repo>[:<config>]' reads that Hub split (untagged), and so does common_170k with a data_dir
    'hf:<repo>' (its default config). Task names with such a data_dir read the tasks' configs.
    """
    spec = dataset.strip()
    if hub.is_hub(spec):
        return load_hub_records(*hub.parse(spec), "train")
    if hub.is_hub(data_dir):
        if spec == COMMON_170K:
            return load_hub_records(hub.parse(data_dir)[0], None, "train")
    else:
        data_dir = _check_data_dir(data_dir)
    if spec == COMMON_170K:
        return load_records(data_dir / COMMON_170K_FILE)
    if spec.startswith("mix:"):
        records = []
        for task in _parse_mix(spec):
            records += load_task_split(data_dir, task, "train")
        return records
    try:
        task = resolve_task(spec)
    except BadInput:
        raise DataError(f"unknown dataset {dataset!r}; accepted forms: {DATASET_FORMS}") from None
    return load_task_split(data_dir, task, "train")


def record_place(data_dir, dataset: str, records: list, record: dict) -> str:
    """Where `record` (one of the `records` load_train_data(data_dir, dataset) returned, the same
    object) comes from: "<file> record <index in that file>", for messages about a record."""
    spec = dataset.strip()
    if spec == COMMON_170K or hub.is_hub(spec):
        path, mine = train_files(data_dir, spec)[0], records
    else:  # one task, or a mix: each task's records in file order
        path = _train_source(data_dir, record.get("task", spec))
        mine = [r for r in records if r.get("task") == record.get("task")]
    index = next((i for i, r in enumerate(mine) if r is record), None)
    return f"{path} record {index}" if index is not None else str(path)


def train_files(data_dir, dataset: str) -> list:
    """The files load_train_data(data_dir, dataset) reads, in order (for messages): Paths, or for
    the Hub data/hub.py's 'hf:<repo>:<config> train'."""
    spec = dataset.strip()
    if hub.is_hub(spec):
        return [hub.source(*hub.parse(spec), "train")]
    if spec == COMMON_170K:
        return [hub.source(hub.parse(data_dir)[0], None, "train") if hub.is_hub(data_dir)
                else Path(data_dir) / COMMON_170K_FILE]
    tasks = _parse_mix(spec) if spec.startswith("mix:") else [spec]
    return [_train_source(data_dir, t) for t in tasks]


def _train_source(data_dir, task: str):
    """Where a task's training records come from: its train.json, or its config of a Hub data_dir."""
    if hub.is_hub(data_dir):
        return hub.source(hub.parse(data_dir)[0], canonical_task(task), "train")
    return task_file(data_dir, task, "train")


def has_split(data_dir, task: str, split: str) -> bool:
    """Whether the task's split exists: its <split>.json, or its config in a Hub data_dir."""
    if hub.is_hub(data_dir):
        return canonical_task(task) in hub.hub_configs(hub.parse(data_dir)[0])
    return task_file(data_dir, task, split).is_file()


def fingerprint(records: list) -> dict:
    """What identifies the training records as loaded: their count and a sha256 over them (each record's
    JSON with sorted keys, one per line). A run records it with each checkpoint; --resume compares."""
    import hashlib

    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return {"records": len(records), "sha256": digest.hexdigest()}


def split_validation(records: list, n_val: int, seed: int = VAL_SEED) -> tuple[list, list]:
    """Deterministically hold out `n_val` records for validation; returns (train, val).

    The validation set is carved out of the TRAINING records passed in (never from a test
    split): random.Random(seed) shuffles the indices, the first `n_val` shuffled indices are
    validation and the rest training. Both lists keep the records' original order.
    n_val=0 gives an empty validation set; n_val >= len(records) is an error.
    """
    if n_val < 0:
        raise DataError(f"n_val must be >= 0, got {n_val}")
    if n_val >= len(records):
        raise DataError(f"n_val={n_val} (--val_size) leaves no training records: there are only "
                        f"{len(records)} records")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [rec for i, rec in enumerate(records) if i not in val_idx]
    val = [rec for i, rec in enumerate(records) if i in val_idx]
    return train, val

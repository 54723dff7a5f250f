"""Download the LLM-Adapters commonsense files (needs internet; run once).

    python -m data.download --out data/commonsense [--tasks boolq piqa ...] [--no-170k]

Fetches, from the public AGI-Edgerunners/LLM-Adapters GitHub repository (Apache-2.0):
    dataset/<task>/test.json    -> <out>/<task>/test.json
    dataset/<task>/train.json   -> <out>/<task>/train.json   (skipped where not published)
    ft-training_set/commonsense_170k.json -> <out>/commonsense_170k.json

Each file is streamed into a temporary file next to its destination, validated with
data.commonsense.load_records, and only then renamed into place (os.replace), so an
interrupted or corrupt download never leaves a half-written file that looks valid.
This module is a command-line tool only; no other project code imports it.
"""
import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from data.commonsense import COMMON_170K_FILE, DataError, load_records
from data.tasks import TASKS, resolve_task
from utils.errors import BadInput

BASE_URL = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched (offline, HTTP error) or was not a valid data file."""


def fetch(url: str, timeout: float = 60.0):
    """Open `url` for reading (a file-like response); separate so tests can replace it."""
    return urllib.request.urlopen(url, timeout=timeout)


def download_file(url: str, dest, opener=None) -> int:
    """Stream `url` into `dest` atomically after validating it; returns the number of records.

    The bytes go to a temporary file in dest's folder; load_records checks it; os.replace then
    moves it into place. On any failure the temporary file is removed, `dest` is untouched and the
    folders this call made for it are removed again if empty.
    `opener` defaults to this module's `fetch`, looked up at call time so tests can replace it.
    """
    opener = opener or fetch
    dest = Path(dest)
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # folders this call creates
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    done = False
    try:
        with os.fdopen(fd, "wb") as out, opener(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, dest.name) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        try:
            n = len(load_records(tmp))
        except DataError as e:
            raise DownloadError(f"{url} is not a valid LLM-Adapters data file: {e}") from e
        os.replace(tmp, dest)
        done = True
        return n
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        for folder in made if not done else ():  # deepest first; an offline run leaves no empty folders
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _progress(total, desc):
    """A tqdm bar if tqdm is installed, else a do-nothing stand-in."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)
    except ImportError:
        class _NoBar:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n):
                pass

        return _NoBar()


def plan(out: Path, tasks: list[str], with_170k: bool) -> list[tuple[str, Path, bool]]:
    """(url, destination, required) for every file to fetch; train splits are optional."""
    jobs = []
    for task in tasks:
        jobs.append((f"{BASE_URL}/dataset/{task}/test.json", out / task / "test.json", True))
        jobs.append((f"{BASE_URL}/dataset/{task}/train.json", out / task / "train.json", False))
    if with_170k:
        jobs.append((f"{BASE_URL}/ft-training_set/{COMMON_170K_FILE}", out / COMMON_170K_FILE, True))
    return jobs


def main(argv=None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/commonsense"), help="destination folder")
    parser.add_argument("--tasks", nargs="+", default=TASKS, help=f"tasks to fetch (default: all {len(TASKS)})")
    parser.add_argument("--no-170k", action="store_true", help=f"skip {COMMON_170K_FILE} (the large 170k-record training mix)")
    args = parser.parse_args(argv)
    try:
        tasks = [resolve_task(t) for t in args.tasks]
    except BadInput as e:
        parser.error(str(e))

    for url, dest, required in plan(args.out, tasks, not args.no_170k):
        try:
            n = download_file(url, dest)
        except urllib.error.HTTPError as e:
            if e.code == 404 and not required:
                print(f"skip {dest}: not published upstream ({url})")
                continue
            print(f"error: {url}: HTTP {e.code} {e.reason}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as e:
            print(f"error: could not download {url} ({e}); are you offline? "
                  "Copy the LLM-Adapters files into --out by hand instead.", file=sys.stderr)
            return 1
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {dest} ({n} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

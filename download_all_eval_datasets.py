"""Download the commonsense evaluation datasets (the original KnowHiRA command; needs internet).

    python download_all_eval_datasets.py --datasets all
    python download_all_eval_datasets.py --datasets boolq piqa siqa [--out data/commonsense] [--with-170k]

Names: boolq, piqa, siqa, hellas, winog, arce, arcc, obqa (or the canonical names, any case); "all"
is all eight. Each task's test.json, and its train.json where published, goes to <out>/<task>/.
data.download does the fetching and validation; this is only the original command line.
"""
import argparse
import sys

from data import download
from data.tasks import TASKS, resolve_task
from utils.errors import BadInput


def main(argv=None) -> int:
    """Command-line entry point; returns the process exit status (2: an unknown dataset name)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["all"], metavar="NAME",
                        help="tasks to fetch, or 'all' (default)")
    parser.add_argument("--out", default="data/commonsense", help="destination folder")
    parser.add_argument("--with-170k", action="store_true",
                        help="also fetch commonsense_170k.json, the training mix (--dataset common_170k)")
    args = parser.parse_args(argv)
    try:
        tasks = TASKS if "all" in args.datasets else [resolve_task(t) for t in args.datasets]
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return download.main(["--out", args.out, "--tasks", *tasks, *([] if args.with_170k else ["--no-170k"])])


if __name__ == "__main__":
    sys.exit(main())

"""Summarise evaluation runs: a markdown/CSV table and one bar chart per task; paired tests.

    python analyze_results.py [RESULTS_DIR ...] [--out DIR] [--baseline RUN_OR_LABEL]
                              [--compare A B] [--no_seed_groups]       (defaults: runs, <first RESULTS_DIR>/summary)

Every results.json under the given folders (searched recursively) is one run. A run's
description comes from args.json beside results.json (every training flag plus trainable_params,
n_train, n_val; absent for zero-shot runs) updated by the results.json "meta" block that evaluation
writes: method ("method" from meta, else args.json's "peft_type"), model (model_name), the key
hyperparameters (r_ab, lr, knowledge_alpha, epoch, max_steps; max_steps -1 means --epoch decides)
and trainable_params.

Runs that differ only in their training seed (results.json meta equal except "seed" and "adapter",
the same evaluated examples: analysis/paired.py says exactly) form ONE row, labelled with the common
folder name without the seed part; its cells read "mean ± std (k seeds)" (sample std over seeds) and
the CSV carries every seed's value. --no_seed_groups keeps one row per run. Every other row is one
run, labelled with its folder name; its cells read "acc ± h (n)" in percent, where h is half the
width of the 95% Wilson interval.
The average column is the unweighted mean over the tasks that EVERY row has (named in its
header), so rows stay comparable; a row lacking a task shows "—" there. Two baseline rows
follow the runs: chance (uniform guessing among the offered choices) and majority (always the
most frequent gold answer); for each task they are taken from the run that evaluated the most
examples of it (subsets of the test file can differ slightly).

--baseline RUN_OR_LABEL (a run folder, or a row's label, e.g. the zero-shot run): a second table
of every row's paired difference to it per task on the SAME examples (eval/<task>.jsonl, paired
by example id): Δ accuracy, its 95% interval and the exact McNemar p-value (sign-flip test for
seed groups); columns <task>_delta/_delta_lo/_delta_hi/_p/... in summary.csv.
--compare A B (repeatable): DIR/compare_<A>_vs_<B>.md/.csv, A − B per task with the same numbers;
when A and B are both seed groups, also with the seeds as the sample (Welch's t-test on the per-seed
accuracies: 95% interval and p; CSV columns seeds_delta_lo/_hi, seeds_p, seeds_df).
Runs that did not evaluate the same examples are refused. The formulas: analysis/paired.py, analysis/welch.py.

Writes DIR/summary.md, DIR/summary.csv and DIR/<task>.png (bars with their 95% intervals, seed
values as dots, chance/majority/zero-shot lines), and prints the markdown table(s).
A missing folder, no usable results or runs that cannot be paired is a one-line error with exit
status 2.
"""
import argparse
import sys
from pathlib import Path

from analysis.report import summarize
from analysis.runs import METRICS
from utils.errors import BadInput


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dirs", nargs="*", default=["runs"], metavar="RESULTS_DIR",
                        help="folders searched recursively for results.json (default: runs)")
    parser.add_argument("--out", help="folder for summary.md/.csv and PNGs (default: the first RESULTS_DIR/summary)")
    parser.add_argument("--baseline", metavar="RUN_OR_LABEL",
                        help="add every row's paired difference to this run folder or row label (e.g. the "
                             "zero-shot run): Δ accuracy, 95%% interval, exact McNemar p, on the same examples")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="write compare_<A>_vs_<B>.md/.csv: A − B per task with paired intervals and "
                             "p-values (A, B: run folders or row labels; repeatable)")
    parser.add_argument("--no_seed_groups", action="store_true",
                        help="one row per run, also for runs that differ only in their seed")
    parser.add_argument("--mixed_protocols", action="store_true",
                        help="allow runs evaluated under different protocols (or modes) in one table")
    parser.add_argument("--metric", choices=tuple(METRICS), default="acc",
                        help="acc (the argmax of the summed scores), or acc_norm (of the scores divided by "
                             "the option's length in characters; cloze and text-format loglik evaluations)")
    args = parser.parse_args(argv)
    try:
        first = Path(args.results_dirs[0])  # a folder, or a results.json file inside one
        table = summarize(args.results_dirs, args.out or (first if first.is_dir() else first.parent) / "summary",
                          baseline=args.baseline, compares=args.compare, group_seeds=not args.no_seed_groups,
                          mixed_protocols=args.mixed_protocols, metric=args.metric)
    except BadInput as err:  # ResultsError and the readers' own (anything else is a bug: traceback)
        print(f"analyze_results: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

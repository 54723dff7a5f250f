"""The knowledge experiment's pre-registered rules (docs/experiments/knowledge_20261205/README.md), as code.

    python -m scripts.knowledge_rules format FOLDER/pilot     # which answer format the grid uses
    python -m scripts.knowledge_rules target FOLDER/<format>  # does a method meet the target in every seed

A task PASSES for a run when, on the format's fixed metric (text: acc, the summed score; cloze:
acc_norm, the score per character), the run beats zero-shot on the same questions with exact McNemar
p < 0.01 AND its accuracy is above the task's majority baseline (always the most frequent gold answer).

format: FOLDER/text/<run>/ and FOLDER/cloze/<run>/ hold one trained pilot each beside zeroshot/; the
        format with MORE passing knowledge tasks (ARC-Easy, ARC-Challenge, openbookqa) is chosen, a tie
        going to the larger mean Δ over the three. Writes FOLDER/choice.md; the last line printed is the format.
target: per method (the <method>_s<seed> runs of FOLDER), the tasks that pass in EVERY seed; the target
        is met when some method passes all three knowledge tasks. Writes FOLDER/../target_<format>.md.
"""
import argparse
import json
import re
import sys
from pathlib import Path

from analysis.paired import format_p, load_predictions, paired_difference

KNOWLEDGE = ("ARC-Easy", "ARC-Challenge", "openbookqa")
METRIC = {"text": "acc", "cloze": "acc_norm"}  # fixed before any result (issue 27)
ALPHA = 0.01


def verdict(run: Path, zeroshot: Path, task: str, fmt: str) -> dict:
    """Δ vs zero-shot, exact McNemar p, accuracy, majority and pass/fail of `run` on `task`."""
    suffix = "_norm" if METRIC[fmt] == "acc_norm" else ""
    result = json.loads((run / "results.json").read_text())["tasks"][task]
    base = json.loads((zeroshot / "results.json").read_text())["tasks"][task]
    d = paired_difference([load_predictions(run, task, result, suffix)],
                          [load_predictions(zeroshot, task, base, suffix)])
    majority = result["majority_accuracy"]
    return {"task": task, "n": d.n, "zero": d.acc_b, "acc": d.acc_a, "delta": d.delta, "low": d.low,
            "high": d.high, "p": d.p, "majority": majority,
            "passes": d.delta > 0 and d.p < ALPHA and d.acc_a > majority}


def row(name: str, v: dict) -> str:
    return (f"| {name} | {v['task']} | {v['n']} | {100 * v['zero']:.1f} | {100 * v['acc']:.1f} | "
            f"{100 * v['delta']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}] | {format_p(v['p'])} | "
            f"{100 * v['majority']:.1f} | {'**yes**' if v['passes'] else 'no'} |")


HEAD = ("| run | task | n | zero-shot | trained | Δ [95% CI] | exact McNemar p | majority | passes |\n"
        "|---|---|---|---|---|---|---|---|---|")


def trained_run(folder: Path) -> Path:
    runs = [p for p in sorted(folder.iterdir())
            if p.is_dir() and p.name != "zeroshot" and (p / "results.json").is_file()]
    if len(runs) != 1:
        raise SystemExit(f"error: {folder}: expected one trained pilot beside zeroshot/, found {len(runs)}")
    return runs[0]


def choose_format(folder: Path) -> int:
    lines, score = [f"Pre-registered rule: the format with more knowledge tasks passing (Δ > 0, exact McNemar "
                    f"p < {ALPHA}, above majority; text on acc, cloze on acc_norm); tie: larger mean Δ.", "", HEAD], {}
    for fmt in METRIC:
        run = trained_run(folder / fmt)
        vs = [verdict(run, folder / fmt / "zeroshot", t, fmt) for t in KNOWLEDGE]
        lines += [row(f"{run.name} ({fmt}, {METRIC[fmt]})", v) for v in vs]
        score[fmt] = (sum(v["passes"] for v in vs), sum(v["delta"] for v in vs) / len(vs))
    chosen = max(score, key=lambda f: score[f])
    lines += ["", *[f"- {f}: {n} task(s) pass, mean Δ {100 * m:+.2f} points" for f, (n, m) in score.items()],
              "", f"**Chosen: {chosen}** (metric {METRIC[chosen]})"]
    (folder / "choice.md").write_text("\n".join(lines) + "\n")
    (folder / "format").write_text(chosen + "\n")  # what scripts/knowledge.sh reads
    print("\n".join(lines))
    return 0


def check_target(folder: Path) -> int:
    fmt = folder.name
    if fmt not in METRIC:
        raise SystemExit(f"error: {folder}: the folder's name must be the format ({', '.join(METRIC)})")
    runs: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        m = re.fullmatch(r"(.+)_s(\d+)", p.name)
        if m and (p / "results.json").is_file():
            runs.setdefault(m[1], []).append(p)
    lines, met, reached = [f"Target (metric {METRIC[fmt]}): a task passes for a method when EVERY seed beats "
                           f"zero-shot with exact McNemar p < {ALPHA} and is above majority.", "",
                           HEAD], [], False
    for method, paths in runs.items():
        passing = []
        for task in KNOWLEDGE:
            vs = [verdict(p, folder / "zeroshot", task, fmt) for p in paths
                  if task in json.loads((p / "results.json").read_text())["tasks"]]
            lines += [row(p.name, v) for p, v in zip(paths, vs)]
            if len(vs) == len(paths) and all(v["passes"] for v in vs):
                passing.append(task)
        met.append(f"- {method} ({len(paths)} seeds): passes in every seed on {', '.join(passing) or 'no task'}")
        reached = reached or len(passing) == len(KNOWLEDGE)
    lines += ["", *met, "", f"**Target {'met' if reached else 'not met'}**"]
    (folder.parent / f"target_{fmt}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rule", choices=("format", "target"))
    p.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    if not a.folder.is_dir():
        print(f"error: {a.folder}: no such folder", file=sys.stderr)
        return 2
    return choose_format(a.folder) if a.rule == "format" else check_target(a.folder)
if __name__ == "__main__":
    sys.exit(main())

"""The learning curves of scripts/showcase.sh as tables and figures: the learning-rate sweep, or the main runs.

    python -m scripts.sweep_table docs/experiments/NAME --out docs/experiments/NAME/sweep.md
    python -m scripts.sweep_table docs/experiments/NAME --main --out docs/experiments/NAME/main_curves.md

Sweep (default): every <folder>/sweep_<method>_lr<rate>/ (args.json, log.jsonl); a Markdown table (per
method and rate: validation accuracy at each validation step, the best one, the last validation loss,
the median step time) with each method's chosen rate marked (highest best validation accuracy, lower
last validation loss on a tie), and <out stem>.png (validation accuracy against step, one panel per
method). Prints the table and one `LR_<method>=<rate>` line per method (for scripts/showcase.sh main).

--main: every other <folder>/<config>_s<seed>/ with a train_summary.json (a finished run), grouped by
<config>; per configuration the validation accuracy at each validation step as mean ± sample std over
its seeds, the best step's, the median step time, and the wall-clock hours of training (summed over
consecutive logged steps and over seeds) and of evaluation (the "seconds" of every task in
<folder>/{text,cloze,label}/<run>/results.json); a last row sums the hours. <out stem>.png: mean
validation accuracy against step per configuration, its seeds as thin lines; runs that log per-task
validation accuracy (val_acc/<task>) add one panel per task. Runs named pilot_* are not main runs.
"""
import argparse
import json
import re
import statistics
import sys
from functools import partial
from pathlib import Path

from analysis.paired import mean_std


def read_run(run: Path) -> dict:
    """A run folder's validation curve, best validation accuracy, last validation loss, median step time
    and wall-clock seconds of training (the sum over consecutive logged steps; the first step logged after a
    resume is marked "resumed" and its span, which holds the pause, is left out)."""
    args = json.loads((run / "args.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in log if "val_acc" in r]
    timed = [r for r in log if "time" in r]
    spans = [(b["step"] - a["step"], b["time"] - a["time"]) for a, b in zip(timed, timed[1:])
             if b["step"] > a["step"] and not b.get("resumed")]  # the pause of a kill and resume is no step
    tasks = sorted({k[len("val_acc/"):] for r in vals for k in r if k.startswith("val_acc/")})
    return {"method": args["peft_type"], "lr": args["lr"], "seed": args.get("seed"), "run": run.name,
            "curve": [(r["step"], r["val_acc"]) for r in vals],
            "task_curves": {t: [(r["step"], r[f"val_acc/{t}"]) for r in vals if f"val_acc/{t}" in r] for t in tasks},
            "best": max((r["val_acc"] for r in vals), default=None),
            "last_loss": vals[-1]["val_loss"] if vals else None,
            "step_s": statistics.median(t / n for n, t in spans) if spans else None,
            "train_s": sum(t for _, t in spans),
            "finished": (run / "train_summary.json").is_file()}


def runs_in(folder: Path, pattern: str) -> list[Path]:
    return [r for r in sorted(folder.glob(pattern)) if (r / "args.json").is_file() and (r / "log.jsonl").is_file()]


def load(folder: Path) -> list[dict]:
    return [read_run(r) for r in runs_in(folder, "sweep_*_lr*")]


def choose(runs: list[dict]) -> dict[str, dict]:
    """Per method, the run with the highest best validation accuracy (lower last loss on a tie)."""
    best = {}
    for r in runs:
        if r["best"] is None or not r["finished"]:
            continue
        key = (r["best"], -r["last_loss"])
        if r["method"] not in best or key > best[r["method"]][0]:
            best[r["method"]] = (key, r)
    return {m: r for m, (_, r) in best.items()}


def table(runs: list[dict], chosen: dict) -> str:
    steps = sorted({s for r in runs for s, _ in r["curve"]})
    head = ["method", "lr", *[f"val acc @{s}" for s in steps], "best", "last val loss", "s/step", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=lambda r: (r["method"], r["lr"])):
        at = dict(r["curve"])
        cells = [r["method"], f"{r['lr']:g}", *[f"{100 * at[s]:.1f}" if s in at else "—" for s in steps],
                 f"{100 * r['best']:.1f}" if r["best"] is not None else "—",
                 f"{r['last_loss']:.4f}" if r["last_loss"] is not None else "—",
                 f"{r['step_s']:.2f}" if r["step_s"] else "—",
                 "**chosen**" if chosen.get(r["method"]) is r else ("" if r["finished"] else "(unfinished)")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(runs: list[dict], chosen: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in runs})
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        for r in sorted((r for r in runs if r["method"] == m), key=lambda r: r["lr"]):
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(xs, [100 * y for y in ys], "o-", lw=2.5 if chosen.get(m) is r else 1, label=f"lr {r['lr']:g}")
        ax.set(title=m, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


EVAL_KINDS = ("text", "cloze", "label")
MAIN_RUN = re.compile(r"^(?!sweep_|pilot_)(?P<config>.+)_s(?P<seed>\d+)$")


def eval_seconds(folder: Path, run: str) -> float:
    """Seconds of every task evaluated for `run` under <folder>/{text,cloze,label}/<run>/results.json."""
    total = 0.0
    for kind in EVAL_KINDS:
        path = folder / kind / run / "results.json"
        if path.is_file():
            total += sum(t.get("seconds") or 0.0 for t in json.loads(path.read_text())["tasks"].values())
    return total


def load_main(folder: Path) -> dict[str, list[dict]]:
    """Finished main runs, grouped by configuration (the folder name without _s<seed>), seeds in order."""
    groups: dict[str, list[dict]] = {}
    for path in runs_in(folder, "*_s*"):
        match = MAIN_RUN.match(path.name)
        if match and (path / "train_summary.json").is_file():
            run = read_run(path)
            run["eval_s"] = eval_seconds(folder, path.name)
            groups.setdefault(match["config"], []).append(run)
    return {c: sorted(rs, key=lambda r: r["seed"]) for c, rs in sorted(groups.items())}


def pct_mean_std(values: list[float]) -> str:
    """"mean ± sample std" in %, or the single value."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def main_table(folder: Path, groups: dict[str, list[dict]]) -> str:
    steps = sorted({s for rs in groups.values() for r in rs for s, _ in r["curve"]})
    head = ["configuration", "method", "lr", "seeds", *[f"val acc @{s}" for s in steps], "best",
            "s/step", "train h", "eval h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    train_h = eval_h = 0.0
    for config, rs in groups.items():
        curves = [dict(r["curve"]) for r in rs]
        at = [pct_mean_std([c[s] for c in curves]) if all(s in c for c in curves) else "—" for s in steps]
        t, e = sum(r["train_s"] for r in rs) / 3600, sum(r["eval_s"] for r in rs) / 3600
        train_h, eval_h = train_h + t, eval_h + e
        lines.append("| " + " | ".join([config, rs[0]["method"], f"{rs[0]['lr']:g}", ",".join(str(r["seed"]) for r in rs),
                                        *at, pct_mean_std([r["best"] for r in rs]),
                                        f"{statistics.median(r['step_s'] for r in rs):.2f}", f"{t:.2f}", f"{e:.2f}"]) + " |")
    zero = eval_seconds(folder, "zeroshot") / 3600
    if zero:
        eval_h += zero
        lines.append("| zeroshot | — | — | — | " + " | ".join("—" for _ in steps) + f" | — | — | — | {zero:.2f} |")
    lines.append("| **total** | | | | " + " | ".join("" for _ in steps) + f" | | | **{train_h:.2f}** | **{eval_h:.2f}** |")
    return "\n".join(lines) + "\n"


def main_figure(groups: dict[str, list[dict]], out: Path) -> None:
    """Validation accuracy against step: all records, then (runs that log val_acc/<task>) one panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for rs in groups.values() for r in rs for t in r["task_curves"]})
    panels = [("all validation records", lambda r: r["curve"])] + \
        [(t, lambda r, t=t: r["task_curves"].get(t, [])) for t in tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 + 4.5 * (len(panels) - 1), 4), squeeze=False)
    for ax, (title, curve_of) in zip(axes[0], panels):
        for i, (config, rs) in enumerate(groups.items()):
            color, curves = f"C{i}", [curve_of(r) for r in rs]
            if not all(curves):
                continue
            for c in curves:
                xs, ys = zip(*c)
                ax.plot(xs, [100 * y for y in ys], "-", color=color, lw=0.7, alpha=0.5)
            steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
            mean = [100 * statistics.mean(dict(c)[s] for c in curves) for s in steps]
            seeds = f"{len(rs)} seed{'s' if len(rs) > 1 else ''}"
            ax.plot(steps, mean, "o-", color=color, lw=2, label=f"{config} ({seeds})")
        ax.set(xlabel="optimizer step", ylabel="validation accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("main runs: mean over seeds (thick), single seeds (thin)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the Markdown file (the PNG goes beside it)")
    p.add_argument("--main", action="store_true", help="the main runs (<config>_s<seed>), not the sweep")
    a = p.parse_args(argv)
    if a.main:
        groups = load_main(a.folder)
        if not groups:
            print(f"error: no finished <config>_s<seed> runs with args.json and log.jsonl in {a.folder}",
                  file=sys.stderr)
            return 2
        text = main_table(a.folder, groups)
        draw = partial(main_figure, groups)
    else:
        runs = load(a.folder)
        if not runs:
            print(f"error: no sweep_<method>_lr<rate> runs with args.json and log.jsonl in {a.folder}",
                  file=sys.stderr)
            return 2
        chosen = choose(runs)
        text = table(runs, chosen)
        draw = partial(figure, runs, chosen)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    draw(a.out.with_suffix(".png"))
    print(text)
    if not a.main:
        for m, r in sorted(chosen.items()):
            print(f"LR_{m}={r['lr']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

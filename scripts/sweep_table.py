"""The learning-rate sweep of scripts/showcase.sh as a table and a figure.

    python scripts/sweep_table.py docs/experiments/NAME --out docs/experiments/NAME/sweep.md

Reads every <folder>/sweep_<method>_lr<rate>/ (args.json, log.jsonl), writes a Markdown table (per
method and rate: validation accuracy at each validation step, the best one, the last validation loss,
the median step time) with each method's chosen rate marked (highest best validation accuracy, lower
last validation loss on a tie), and <out stem>.png (validation accuracy against step, one panel per
method). Prints the table and one `LR_<method>=<rate>` line per method (for scripts/showcase.sh main).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path


def load(folder: Path) -> list[dict]:
    runs = []
    for run in sorted(folder.glob("sweep_*_lr*")):
        if not (run / "args.json").is_file() or not (run / "log.jsonl").is_file():
            continue
        args = json.loads((run / "args.json").read_text())
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        vals = [r for r in log if "val_acc" in r]
        times = [(r["step"], r["time"]) for r in log if "time" in r]
        steps = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times, times[1:]) if s1 > s0]
        runs.append({"method": args["peft_type"], "lr": args["lr"], "run": run.name,
                     "curve": [(r["step"], r["val_acc"]) for r in vals],
                     "best": max((r["val_acc"] for r in vals), default=None),
                     "last_loss": vals[-1]["val_loss"] if vals else None,
                     "step_s": statistics.median(steps) if steps else None,
                     "finished": (run / "train_summary.json").is_file()})
    return runs


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the Markdown file (the PNG goes beside it)")
    a = p.parse_args(argv)
    runs = load(a.folder)
    if not runs:
        print(f"error: no sweep_<method>_lr<rate> runs with args.json and log.jsonl in {a.folder}", file=sys.stderr)
        return 2
    chosen = choose(runs)
    text = table(runs, chosen)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    figure(runs, chosen, a.out.with_suffix(".png"))
    print(text)
    for m, r in sorted(chosen.items()):
        print(f"LR_{m}={r['lr']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

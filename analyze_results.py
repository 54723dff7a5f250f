"""Summarise evaluation runs: a markdown/CSV table and one bar chart per task.

    python analyze_results.py [RESULTS_DIR ...] [--out DIR]     (defaults: runs, <first RESULTS_DIR>/summary)

Every results.json under the given folders (searched recursively) is one run (one row). A run's
description comes from args.json beside results.json (every training flag plus trainable_params,
n_train, n_val; absent for zero-shot runs) updated by the results.json "meta" block that evaluation
writes: method ("method" from meta, else args.json's "peft_type"), model (model_name), the key
hyperparameters (r_ab, lr, knowledge_alpha, epoch, max_steps; max_steps -1 means --epoch decides)
and trainable_params.

Cells read "acc ± h (n)" in percent, where h is half the width of the 95% Wilson interval.
The average column is the unweighted mean over the tasks that EVERY run has (named in its
header), so rows stay comparable; a run lacking a task shows "—" there. Two baseline rows
follow the runs: chance (uniform guessing among the offered choices) and majority (always the
most frequent gold answer); for each task they are taken from the run that evaluated the most
examples of it (subsets of the test file can differ slightly).

Writes DIR/summary.md, DIR/summary.csv and DIR/<task>.png, and prints the markdown table.
A missing folder or no usable results is a one-line error with exit status 2.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from analysis.tables import write_csv  # noqa: E402
from data.tasks import TASKS  # noqa: E402
from utils.options import defaults_of  # noqa: E402

DASH = "—"
HYPERPARAM_KEYS = ("r_ab", "lr", "knowledge_alpha", "epoch", "max_steps")
COMMON_HPARAMS = ("lr", "epoch", "max_steps")  # the rest are shown only for methods whose config has them


def run_hparams(method: str, meta: dict) -> dict:
    """The hyperparameters shown for a run: HYPERPARAM_KEYS that mean something for `method` (its
    config's fields and the common ones), then its other config fields where they differ from the
    method's defaults (e.g. an ablation's --adaptive_gating false)."""
    from models.methods import REGISTRY

    impl = REGISTRY.get(method)  # None for the zero-shot rows
    own = {f.name for f in impl.config_cls.option_fields()} if impl else set()
    shown = {k: meta[k] for k in HYPERPARAM_KEYS if meta.get(k) is not None and (k in own or k in COMMON_HPARAMS)}
    defaults = defaults_of(impl.config_cls) if impl else {}
    shown.update({k: meta[k] for k in own - shown.keys() - {"target_modules"}
                  if k in meta and meta[k] != defaults.get(k)})
    return shown


class ResultsError(Exception):
    """A missing folder or no usable results (reported as a one-line message, exit status 2)."""


# ---------------------------------------------------------------------------------- loading

def find_results(folders: list[str]) -> list[Path]:
    """Every results.json under `folders` (recursively), sorted, without duplicates."""
    found = set()
    for folder in folders:
        path = Path(folder)
        if not path.exists():
            raise ResultsError(f"{folder}: no such file or folder")
        if path.is_file():
            if path.name == "results.json":
                found.add(path.resolve())
            continue
        found.update(p.resolve() for p in path.rglob("results.json"))
    return sorted(found)


def _short_model(name) -> str:
    """Hub ids stay as they are ("EleutherAI/gpt-neo-125M"); local paths show their last part."""
    if name is None:
        return "?"
    text = str(name).rstrip("/")
    return Path(text).name if text.startswith(("/", ".", "~")) else text


def load_run(path: Path) -> dict:
    """One run: {"path", "name", "method", "model", "hparams", "trainable", "tasks"}."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path}: cannot read results ({err})") from err
    if not isinstance(results, dict) or not isinstance(results.get("tasks", {}), dict):
        raise ResultsError(f"{path}: expected {{'meta': {{...}}, 'tasks': {{...}}}}")
    meta = {}
    args_path = path.parent / "args.json"
    if args_path.exists():
        try:
            args = json.loads(args_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ResultsError(f"{args_path}: cannot read ({err})") from err
        if isinstance(args, dict):
            meta.update(args)
    meta.update(results.get("meta") or {})
    val_loss = None  # best validation loss (response tokens), from the training run's summary
    summary_path = path.parent / "train_summary.json"
    if summary_path.exists():
        try:
            val_loss = json.loads(summary_path.read_text(encoding="utf-8")).get("best_val_loss")
        except (OSError, json.JSONDecodeError) as err:
            raise ResultsError(f"{summary_path}: cannot read ({err})") from err
    tasks = {}
    for task, result in results.get("tasks", {}).items():
        try:
            tasks[task] = {key: float(result[key]) for key in ("accuracy", "ci95_low", "ci95_high")}
            tasks[task]["n"] = int(result["n"])
            for key in ("chance_accuracy", "majority_accuracy"):
                tasks[task][key] = float(result[key]) if result.get(key) is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsError(f"{path}: task {task!r} lacks a numeric {err}") from err
    method = str(meta.get("method") or meta.get("peft_type") or "?")
    return {
        "path": path,
        "name": path.parent.name,
        "method": method,
        "model": _short_model(meta.get("model_name")),
        "hparams": run_hparams(method, meta),
        "trainable": meta.get("trainable_params"),
        "val_loss": None if val_loss is None else float(val_loss),
        "tasks": tasks,
    }


# ----------------------------------------------------------------------------------- tables

def ordered_tasks(runs: list[dict]) -> list[str]:
    """Tasks present in any run: the project's task order first, then others alphabetically."""
    present = {task for run in runs for task in run["tasks"]}
    return [t for t in TASKS if t in present] + sorted(present - set(TASKS))


def common_tasks(runs: list[dict], tasks: list[str]) -> list[str]:
    return [t for t in tasks if all(t in run["tasks"] for run in runs)]


def baselines(runs: list[dict], tasks: list[str]) -> dict[str, dict[str, float | None]]:
    """task -> {"chance", "majority"} from the run that evaluated the most examples of it."""
    out = {}
    for task in tasks:
        best = max((run["tasks"][task] for run in runs if task in run["tasks"]),
                   key=lambda result: result["n"])
        out[task] = {"chance": best["chance_accuracy"], "majority": best["majority_accuracy"]}
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f}"


def _format_count(n) -> str:
    if n is None:
        return DASH
    n = float(n)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def _format_hparams(hparams: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in hparams.items()) or DASH


def _cell(result: dict | None) -> str:
    if result is None:
        return DASH
    half = (result["ci95_high"] - result["ci95_low"]) / 2
    return f"{_pct(result['accuracy'])} ± {_pct(half)} ({result['n']})"


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def average_header(common: list[str]) -> str:
    if not common:
        return "avg (no task common to all runs)"
    plural = "task" if len(common) == 1 else "tasks"
    return f"avg ({', '.join(common)}; {len(common)} {plural})"


def build_tables(runs: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """(markdown header, markdown rows, csv rows) for the runs plus the chance/majority rows."""
    tasks = ordered_tasks(runs)
    common = common_tasks(runs, tasks)
    base = baselines(runs, tasks)
    header = ["run", "method", "model", "hyperparameters", "trainable params", "best val loss",
              *tasks, average_header(common)]
    hparam_keys = list(dict.fromkeys(k for run in runs for k in run["hparams"]))

    md_rows, csv_rows = [], []
    for run in runs:
        avg = _mean([run["tasks"][t]["accuracy"] for t in common])
        md_rows.append([run["name"], run["method"], run["model"], _format_hparams(run["hparams"]),
                        _format_count(run["trainable"]),
                        DASH if run["val_loss"] is None else f"{run['val_loss']:.3f}",
                        *[_cell(run["tasks"].get(t)) for t in tasks], _pct(avg)])
        row = {"run": str(run["path"].parent), "method": run["method"], "model": run["model"],
               **{k: run["hparams"].get(k, "") for k in hparam_keys},
               "trainable_params": "" if run["trainable"] is None else run["trainable"],
               "best_val_loss": "" if run["val_loss"] is None else run["val_loss"]}
        for t in tasks:
            result = run["tasks"].get(t)
            for key in ("accuracy", "ci95_low", "ci95_high", "n"):
                row[f"{t}_{key}"] = "" if result is None else result[key]
        row["avg_common"] = "" if avg is None else avg
        csv_rows.append(row)

    for label in ("chance", "majority"):
        avg = _mean([base[t][label] for t in common])
        md_rows.append([label, label, DASH, DASH, DASH, DASH,
                        *[_pct(base[t][label]) for t in tasks], _pct(avg)])
        row = {"run": label, "method": label, "model": "",
               **{k: "" for k in hparam_keys}, "trainable_params": "", "best_val_loss": ""}
        for t in tasks:
            value = base[t][label]
            row.update({f"{t}_accuracy": "" if value is None else value,
                        f"{t}_ci95_low": "", f"{t}_ci95_high": "", f"{t}_n": ""})
        row["avg_common"] = "" if avg is None else avg
        csv_rows.append(row)
    return header, md_rows, csv_rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


# ------------------------------------------------------------------------------------ plots

def _bar_labels(runs: list[dict]) -> list[str]:
    labels = [f"{run['method']}\n{run['model']}" + (f"\n{_format_hparams(run['hparams'])}"
                                                     if run["hparams"] else "") for run in runs]
    if len(set(labels)) < len(labels):  # same method/model/hparams: tell runs apart by folder
        labels = [f"{label}\n[{run['name']}]" for label, run in zip(labels, runs)]
    return labels


def plot_task(task: str, runs: list[dict], base: dict, out_path: Path) -> None:
    """Bar chart of every run's accuracy on `task` with 95% CI whiskers and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [run for run in runs if task in run["tasks"]]
    results = [run["tasks"][task] for run in shown]
    acc = [100 * r["accuracy"] for r in results]
    err = [[100 * (r["accuracy"] - r["ci95_low"]) for r in results],
           [100 * (r["ci95_high"] - r["accuracy"]) for r in results]]
    labels = _bar_labels(shown)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shown) + 2.5), 5.0))
    x = list(range(len(shown)))
    bars = ax.bar(x, acc, yerr=err, capsize=6, color="tab:blue", alpha=0.85,
                  error_kw={"elinewidth": 1.2, "ecolor": "black"}, label="accuracy (95% CI)")
    for bar, value, high in zip(bars, acc, err[1]):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value + high),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    if base["chance"] is not None:
        ax.axhline(100 * base["chance"], color="tab:red", linestyle="--", linewidth=1.5,
                   label=f"chance ({100 * base['chance']:.1f}%)")
    if base["majority"] is not None:
        ax.axhline(100 * base["majority"], color="tab:green", linestyle=":", linewidth=2,
                   label=f"majority ({100 * base['majority']:.1f}%)")
    ns = sorted({r["n"] for r in results})
    ax.set_title(f"{task}  (n = {', '.join(map(str, ns))})", fontsize=12)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------- main

def summarize(folders: list[str], out_dir) -> str:
    """Write summary.md, summary.csv and <task>.png into out_dir; return the markdown table."""
    paths = find_results(folders)
    if not paths:
        raise ResultsError(f"no results.json found under {', '.join(folders)}")
    runs = [load_run(p) for p in paths]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    header, md_rows, csv_rows = build_tables(runs)
    table = to_markdown(header, md_rows)
    note = ("\nCells: accuracy ± half-width of the 95% Wilson interval (n examples), in %. "
            "The average is the unweighted mean over the tasks in its header.\n")
    (out / "summary.md").write_text("# Results\n\n" + table + note, encoding="utf-8")
    write_csv(out / "summary.csv", csv_rows)
    tasks = ordered_tasks(runs)
    base = baselines(runs, tasks)
    for task in tasks:
        plot_task(task, runs, base[task], out / f"{task}.png")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dirs", nargs="*", default=["runs"], metavar="RESULTS_DIR",
                        help="folders searched recursively for results.json (default: runs)")
    parser.add_argument("--out", help="folder for summary.md/.csv and PNGs (default: the first RESULTS_DIR/summary)")
    args = parser.parse_args(argv)
    try:
        first = Path(args.results_dirs[0])  # a folder, or a results.json file inside one
        table = summarize(args.results_dirs, args.out or (first if first.is_dir() else first.parent) / "summary")
    except ResultsError as err:
        print(f"analyze_results: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

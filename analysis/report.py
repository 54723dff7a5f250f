"""The tables and figures of analyze_results.py: paired differences against a baseline and between two
rows, the main table, summary.md/.csv and one bar chart per task (summarize)."""
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from analysis.paired import PairedDiff, average_difference, format_p, mean_std
from analysis.runs import (DASH, METRIC_NOTE, ResultsError, Row, TaskResult, _run_file, compare_rows, find_results,
                           find_row, load_run, make_rows)
from analysis.tables import write_csv
from analysis.welch import welch_difference
from data.tasks import TASKS


@dataclass(frozen=True)
class RowDelta:
    """One row's paired differences to the baseline row: per task, and averaged over the common tasks."""
    tasks: dict[str, PairedDiff]
    avg: tuple[float, float, float] | None  # (Δ, low, high) of analysis.paired.average_difference


@dataclass(frozen=True)
class TrivialBaselines:
    """One task's chance (uniform guessing among the offered choices) and majority (always the most frequent
    gold answer) accuracies, from the run that evaluated the most examples of it."""
    chance: float | None
    majority: float | None


def _seeds_note(row: Row) -> str:
    k = len(row.runs)
    return f" ({k} seeds)" if k > 1 else ""


def _delta(x: float) -> str:
    return f"{100 * x:+.1f}"


def _delta_cell(diff) -> str:
    if diff is None:
        return DASH
    return (f"{_delta(diff.delta)} [{_delta(diff.low)}, {_delta(diff.high)}] "
            f"(p={format_p(diff.p, diff.p_test)})")


def _avg_delta_cell(avg) -> str:
    return DASH if avg is None else f"{_delta(avg[0])} [{_delta(avg[1])}, {_delta(avg[2])}]"


def baseline_deltas(rows: list[Row], base: Row, tasks: list[str], common: list[str]) -> list[RowDelta | None]:
    """Per row, its RowDelta to `base` (None for the baseline itself)."""
    out = []
    for row in rows:
        if row is base:
            out.append(None)
            continue
        diffs = {t: compare_rows(row, base, t) for t in tasks if t in row.tasks and t in base.tasks}
        avg = average_difference([diffs[t] for t in common]) if common else None
        out.append(RowDelta(diffs, avg))
    return out


def delta_caption(base: Row, common: list[str], number: int = 2) -> str:
    return (f"Table {number}. Paired difference of each row to {base.label}{_seeds_note(base)} on the same "
            f"test examples (matched by example id), in percentage points: Δ = accuracy(row) − "
            f"accuracy({base.label}) [its 95% Agresti–Min interval] (p: two-sided exact McNemar test on "
            f"the examples exactly one of the two got right; where a seed group is involved, each example's "
            f"correctness is averaged over its seeds and p is the exact sign-flip permutation test on the "
            f"per-example differences; \", MC\" marks a Monte Carlo p). {average_header(common, 'avg Δ')}: "
            f"mean of the per-task Δ, its interval from the per-task standard errors, no p-value. "
            f"\"baseline\": the baseline's own row; {DASH}: the row or the baseline lacks the task. "
            f"Formulas: analysis/paired.py.")


def delta_table(rows: list[Row], base: Row, deltas: list[RowDelta | None], tasks: list[str], common: list[str]) -> str:
    header = ["run", *tasks, average_header(common, "avg Δ")]
    md_rows = []
    for row, delta in zip(rows, deltas):
        if delta is None:
            md_rows.append([row.label, *["baseline"] * (len(tasks) + 1)])
        else:
            md_rows.append([row.label, *[_delta_cell(delta.tasks.get(t)) for t in tasks],
                            _avg_delta_cell(delta.avg)])
    return to_markdown(header, md_rows)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "row"


def compare(a: Row, b: Row, tasks: list[str]) -> tuple[str, str, list[dict]]:
    """(caption, markdown table, csv rows) of a − b per task and over the shared tasks."""
    shared = [t for t in tasks if t in a.tasks and t in b.tasks]
    if not shared:
        raise ResultsError(f"--compare {a.label} {b.label}: no task in common")
    diffs = {t: compare_rows(a, b, t) for t in shared}
    over_seeds = {t: welch_difference(list(a.tasks[t].per_seed or ()), list(b.tasks[t].per_seed or ()))
                  for t in shared}  # None unless both rows are seed groups (analysis/welch.py)
    seed_columns = len(a.runs) > 1 and len(b.runs) > 1
    header = ["task", "n (paired)", f"A: {a.label}{_seeds_note(a)}", f"B: {b.label}{_seeds_note(b)}",
              "Δ A − B", "95% interval", "p", "test", "examples A > B", "examples B > A"]
    header += ["over seeds: 95% interval", "p (Welch)"] * seed_columns
    md_rows, csv_rows = [], []
    for t, d in diffs.items():
        w = over_seeds[t]
        md_rows.append([t, d.n, _pct(d.acc_a), _pct(d.acc_b), _delta(d.delta),
                        f"[{_delta(d.low)}, {_delta(d.high)}]", format_p(d.p, d.p_test), d.p_test,
                        d.a_better, d.b_better]
                       + ([DASH, DASH] if w is None else [f"[{_delta(w.low)}, {_delta(w.high)}]", format_p(w.p)])
                       * seed_columns)
        csv_rows.append({"task": t, "n": d.n, "a": a.label, "b": b.label, "a_seeds": d.seeds_a,
                         "b_seeds": d.seeds_b, "a_accuracy": d.acc_a, "b_accuracy": d.acc_b, "delta": d.delta,
                         "delta_lo": d.low, "delta_hi": d.high, "p": d.p, "p_test": d.p_test,
                         "a_better": d.a_better, "b_better": d.b_better,
                         "seeds_delta_lo": "" if w is None else w.low, "seeds_delta_hi": "" if w is None else w.high,
                         "seeds_p": "" if w is None else w.p, "seeds_df": "" if w is None else w.df})
    mean_delta, low, high = average_difference(list(diffs.values()))
    acc_a = _mean([d.acc_a for d in diffs.values()])
    acc_b = _mean([d.acc_b for d in diffs.values()])
    md_rows.append([average_header(shared, "avg"), DASH, _pct(acc_a), _pct(acc_b), _delta(mean_delta),
                    f"[{_delta(low)}, {_delta(high)}]", DASH, DASH, DASH, DASH] + [DASH, DASH] * seed_columns)
    csv_rows.append({"task": "avg", "n": "", "a": a.label, "b": b.label, "a_seeds": len(a.runs),
                     "b_seeds": len(b.runs), "a_accuracy": acc_a, "b_accuracy": acc_b, "delta": mean_delta,
                     "delta_lo": low, "delta_hi": high, "p": "", "p_test": "", "a_better": "", "b_better": "",
                     "seeds_delta_lo": "", "seeds_delta_hi": "", "seeds_p": "", "seeds_df": ""})
    caption = ("A − B per task on the same test examples (matched by example id). A and B accuracy in %"
               " (seed groups: mean over seeds); Δ and its 95% Agresti–Min interval in percentage points; "
               "p: two-sided, by the test named (exact McNemar for two single runs, else the exact sign-flip "
               "permutation test on the seed-averaged per-example differences; MC: Monte Carlo); examples "
               "A > B / B > A: examples whose (seed-averaged) correctness is higher for A / for B (for two "
               "single runs: A right and B wrong / the reverse). The last row: unweighted mean over the "
               "tasks, interval from the per-task standard errors, no p-value. Formulas: analysis/paired.py."
               + (" Over seeds (both rows seed groups): the seeds are the sample instead of the examples, Welch's "
                  "t-test on the per-seed accuracies (95% interval in points, two-sided p; — where neither row "
                  "varies between its seeds); formulas: analysis/welch.py." if seed_columns else ""))
    return caption, to_markdown(header, md_rows), csv_rows


# ----------------------------------------------------------------------------------- tables

def ordered_tasks(runs: list[Row]) -> list[str]:
    """Tasks present in any run: the project's task order first, then others alphabetically."""
    present = {task for run in runs for task in run.tasks}
    return [t for t in TASKS if t in present] + sorted(present - set(TASKS))


def common_tasks(runs: list[Row], tasks: list[str]) -> list[str]:
    return [t for t in tasks if all(t in run.tasks for run in runs)]


def baselines(runs: list[Row], tasks: list[str]) -> dict[str, TrivialBaselines]:
    """task -> its chance and majority accuracies, from the run that evaluated the most examples of it."""
    out = {}
    for task in tasks:
        best = max((run.tasks[task] for run in runs if task in run.tasks),
                   key=lambda result: result.n)
        out[task] = TrivialBaselines(best.chance_accuracy, best.majority_accuracy)
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


def _cell(result: TaskResult | None, seeds: int = 1) -> str:
    if result is None:
        return DASH
    if seeds > 1:
        return f"{_pct(result.accuracy)} ± {_pct(result.std)} ({seeds} seeds)"
    half = (result.ci95_high - result.ci95_low) / 2
    return f"{_pct(result.accuracy)} ± {_pct(half)} ({result.n})"


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def average_header(common: list[str], name: str = "avg") -> str:
    if not common:
        return f"{name} (no task common to all runs)"
    plural = "task" if len(common) == 1 else "tasks"
    return f"{name} ({', '.join(common)}; {len(common)} {plural})"


def row_average(row: Row, common: list[str]) -> tuple[float | None, float | None, list[float] | None]:
    """(mean, sample std over seeds, per-seed values) of the unweighted average over `common`;
    std and per-seed values are None for a single run."""
    if not common:
        return None, None, None
    if len(row.runs) == 1:
        return _mean([row.tasks[t].accuracy for t in common]), None, None
    per_seed = [_mean([row.tasks[t].per_seed[i] for t in common]) for i in range(len(row.runs))]
    mean, std = mean_std(per_seed)
    return mean, std, per_seed


def _joined(values) -> str:
    return ";".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def main_caption(common: list[str]) -> str:
    return ("Table 1. One row per run, or per seed group (runs that differ only in their training seed and "
            "evaluated the same examples; analysis/paired.py). Columns: run: the folder name, or the seed "
            "group's label; method; model; hyperparameters: the key ones and those that differ from the "
            "method's defaults; trainable params; best val loss: the lowest validation loss of training "
            "(seed groups: mean ± sample std over seeds); one column per task, in %: for a run, accuracy ± "
            "half-width of its 95% Wilson interval (n evaluated examples), for a seed group, mean accuracy ± "
            f"sample std over its k seeds (k seeds); {average_header(common)}: the unweighted mean over those "
            "tasks (seed groups: mean ± std of the per-seed averages). The last two rows: chance (uniform "
            "guessing among the offered choices) and majority (always the most frequent gold answer of the "
            "evaluated examples).")


FILES_NOTE = (
    "Charts <task>.png: bars = the table's accuracy, whiskers = its 95% interval (Wilson for a run; for a "
    "seed group, over examples of the seed-averaged correctness), dots = the single seeds, horizontal lines = "
    "chance, majority and every zero-shot run. summary.csv: <task>_accuracy, _ci95_low/_high (those "
    "intervals), _n; for seed groups also <task>_std (sample std over seeds) and _per_seed (one value per "
    "seed, in the order of the seeds column; avg_common likewise); with --baseline <task>_delta, "
    "_delta_lo/_delta_hi, _p, _p_test, _n_paired and avg_delta (fractions, not %).")


def build_tables(rows: list[Row], deltas: list[RowDelta | None] | None = None,
                 base: Row | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """(markdown header, markdown rows, csv rows) for the rows plus the chance/majority rows; with
    `deltas` (baseline_deltas) the CSV gains each task's paired difference to `base`."""
    tasks = ordered_tasks(rows)
    common = common_tasks(rows, tasks)
    base_acc = baselines(rows, tasks)
    header = ["run", "method", "protocol", "model", "hyperparameters", "trainable params", "best val loss",
              *tasks, average_header(common)]
    hparam_keys = list(dict.fromkeys(k for row in rows for k in row.hparams))
    any_group = any(len(row.runs) > 1 for row in rows)

    md_rows, csv_rows = [], []
    for i, row in enumerate(rows):
        k = len(row.runs)
        avg, avg_std, avg_seeds = row_average(row, common)
        loss = DASH if row.val_loss is None else f"{row.val_loss:.3f}"
        if row.val_loss_std is not None:
            loss += f" ± {row.val_loss_std:.3f}"
        avg_cell = _pct(avg) if k == 1 or avg is None else f"{_pct(avg)} ± {_pct(avg_std)} ({k} seeds)"
        md_rows.append([row.label, row.method, row.protocol, row.model, _format_hparams(row.hparams),
                        _format_count(row.trainable), loss,
                        *[_cell(row.tasks.get(t), k) for t in tasks], avg_cell])
        out = {"run": ";".join(str(run.dir) for run in row.runs), "label": row.label,
               "method": row.method, "protocol": row.protocol, "model": row.model,
               **{key: row.hparams.get(key, "") for key in hparam_keys},
               "trainable_params": "" if row.trainable is None else row.trainable,
               "best_val_loss": "" if row.val_loss is None else row.val_loss}
        if any_group:
            out["best_val_loss_std"] = "" if row.val_loss_std is None else row.val_loss_std
        out["n_seeds"] = k
        out["seeds"] = _joined(row.seeds)
        delta = deltas[i] if deltas is not None else None
        for t in tasks:
            result = row.tasks.get(t)
            for key in ("accuracy", "ci95_low", "ci95_high", "n"):
                out[f"{t}_{key}"] = "" if result is None else getattr(result, key)
            if any_group:
                grouped = result is not None and k > 1
                out[f"{t}_std"] = result.std if grouped else ""
                out[f"{t}_per_seed"] = _joined(result.per_seed) if grouped else ""
            if deltas is not None:
                d = delta.tasks.get(t) if delta else None
                out.update({f"{t}_delta": "" if d is None else d.delta, f"{t}_delta_lo": "" if d is None else d.low,
                            f"{t}_delta_hi": "" if d is None else d.high, f"{t}_p": "" if d is None else d.p,
                            f"{t}_p_test": "" if d is None else d.p_test,
                            f"{t}_n_paired": "" if d is None else d.n})
        out["avg_common"] = "" if avg is None else avg
        if any_group:
            out["avg_common_std"] = "" if avg_std is None else avg_std
            out["avg_common_per_seed"] = "" if avg_seeds is None else _joined(avg_seeds)
        if deltas is not None:
            avg_delta = delta.avg if delta else None
            out.update({f"avg_delta{suffix}": "" if avg_delta is None else avg_delta[j]
                        for j, suffix in enumerate(("", "_lo", "_hi"))})
            out["baseline"] = base.label
        csv_rows.append(out)

    for label in ("chance", "majority"):
        avg = _mean([getattr(base_acc[t], label) for t in common])
        md_rows.append([label, label, DASH, DASH, DASH, DASH, DASH,
                        *[_pct(getattr(base_acc[t], label)) for t in tasks], _pct(avg)])
        out = {key: "" for key in csv_rows[0]}
        out.update({"run": label, "method": label, "label": label})
        for t in tasks:
            value = getattr(base_acc[t], label)
            out[f"{t}_accuracy"] = "" if value is None else value
        out["avg_common"] = "" if avg is None else avg
        csv_rows.append(out)
    return header, md_rows, csv_rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


# ------------------------------------------------------------------------------------ plots

def _bar_labels(rows: list[Row]) -> list[str]:
    """One x label per bar: the method; the model's file or folder name only where the bars' models
    differ; the hyperparameters one per line (side by side they run into the next bar's label); the
    number of seeds of a group."""
    show_model = len({row.model for row in rows}) > 1
    labels = []
    for row in rows:
        parts = [row.method]
        if show_model:
            parts.append(Path(str(row.model).rstrip("/")).name or str(row.model))
        parts += _format_hparams(row.hparams).split(", ") if row.hparams else []
        if len(row.runs) > 1:
            parts.append(f"({len(row.runs)} seeds)")
        labels.append("\n".join(parts))
    if len(set(labels)) < len(labels):  # same method/model/hparams: tell rows apart by label
        labels = [f"{label}\n[{row.label}]" for label, row in zip(labels, rows)]
    return labels


ZERO_SHOT_STYLES = (("tab:gray", "-."), ("tab:purple", "-."), ("tab:brown", "-."), ("tab:olive", "-."))


def plot_task(task: str, rows: list[Row], base: TrivialBaselines, out_path: Path, metric: str = "acc") -> None:
    """Bar chart of every row's accuracy on `task` with its 95% interval (Wilson for a run; over
    examples for a seed group, whose seeds are dots), and chance/majority/zero-shot lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if task in row.tasks]
    results = [row.tasks[task] for row in shown]
    acc = [100 * r.accuracy for r in results]
    err = [[100 * max(0.0, r.accuracy - r.ci95_low) for r in results],
           [100 * max(0.0, r.ci95_high - r.accuracy) for r in results]]
    labels = _bar_labels(shown)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shown) + 2.5), 5.5))
    x = list(range(len(shown)))
    bars = ax.bar(x, acc, yerr=err, capsize=6, color="tab:blue", alpha=0.85,
                  error_kw={"elinewidth": 1.2, "ecolor": "black"},
                  label=f"{'accuracy' if metric == 'acc' else metric} (95% interval)")
    seeds_labelled, tops = False, [value + high for value, high in zip(acc, err[1])]
    for i, (bar, result) in enumerate(zip(bars, results)):
        if result.per_seed:  # beside the whisker, not on it
            values = [100 * v for v in result.per_seed]
            ax.scatter([bar.get_x() + 0.78 * bar.get_width()] * len(values), values, s=14, color="black",
                       zorder=3, label=None if seeds_labelled else "single seeds")
            seeds_labelled, tops[i] = True, max(tops[i], *values)
    for bar, value, top in zip(bars, acc, tops):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    if base.chance is not None:
        ax.axhline(100 * base.chance, color="tab:red", linestyle="--", linewidth=1.5,
                   label=f"chance ({100 * base.chance:.1f}%)")
    if base.majority is not None:
        ax.axhline(100 * base.majority, color="tab:green", linestyle=":", linewidth=2,
                   label=f"majority ({100 * base.majority:.1f}%)")
    zero_shot = [row for row in shown if row.method == "zero-shot"]
    for row, (color, style) in zip(zero_shot, ZERO_SHOT_STYLES * len(zero_shot)):
        value = 100 * row.tasks[task].accuracy
        ax.axhline(value, color=color, linestyle=style, linewidth=1.5,
                   label=f"zero-shot{'' if 'zero' in row.label else ' ' + row.label} ({value:.1f}%)")
    ns = sorted({r.n for r in results})
    ax.set_title(f"{task}  (n = {', '.join(map(str, ns))}{'; ' + metric if metric != 'acc' else ''})", fontsize=12)
    ax.set_ylabel("accuracy (%)" if metric == "acc" else f"{metric} (%)")
    ax.set_ylim(0, 105)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------- main

def summarize(folders: list[str], out_dir, baseline: str | None = None, compares=(),
              group_seeds: bool = True, mixed_protocols: bool = False, metric: str = "acc") -> str:
    """Write summary.md, summary.csv, <task>.png (and compare_<A>_vs_<B>.md/.csv) into out_dir;
    return the markdown table(s). Everything is computed before anything is written."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ResultsError(f"--out {out_dir} is a file, not a folder (summary.md, summary.csv and the figures go "
                           "into a folder)")
    specs = [s for s in (baseline, *(s for pair in compares for s in pair)) if s]
    extra = [str(f) for f in map(_run_file, specs) if f is not None]  # run folders outside `folders`
    paths = find_results(list(folders) + extra)
    if not paths:
        raise ResultsError(f"no results.json found under {', '.join(folders)}")
    runs = [load_run(p, metric) for p in paths]
    protocols = sorted({run.protocol for run in runs})
    if len(protocols) > 1 and not mixed_protocols:
        raise ResultsError(f"runs evaluated under different protocols ({', '.join(protocols)}) do not belong "
                           "in one comparison; pass --mixed_protocols to tabulate them anyway")
    notes = []
    rows = make_rows(runs, group_seeds, notes)
    for note in notes:
        print(f"analyze_results: note: {note}", file=sys.stderr)
    tasks = ordered_tasks(rows)
    common = common_tasks(rows, tasks)

    base = find_row(baseline, rows, "--baseline") if baseline else None
    deltas = baseline_deltas(rows, base, tasks, common) if base else None
    comparisons = []
    for spec_a, spec_b in compares:
        a, b = find_row(spec_a, rows, "--compare"), find_row(spec_b, rows, "--compare")
        if a is b:
            raise ResultsError(f"--compare {spec_a} {spec_b}: both name the row {a.label}")
        comparisons.append((a, b, *compare(a, b, tasks)))

    header, md_rows, csv_rows = build_tables(rows, deltas, base)
    table = to_markdown(header, md_rows)
    note = [METRIC_NOTE[metric], ""] if METRIC_NOTE[metric] else []
    doc = ["# Results", "", *note, main_caption(common), "", table, FILES_NOTE, ""]
    groups = [row for row in rows if len(row.runs) > 1]
    if groups:
        doc += ["Seed groups:", ""] + [
            f"- {row.label}: seeds {', '.join(map(str, row.seeds))} "
            f"({', '.join(run.name for run in row.runs)})" for row in groups] + [""]
    printed = table
    if base is not None:
        extra_table = delta_table(rows, base, deltas, tasks, common)
        doc += [f"## Paired differences vs {base.label}", "", delta_caption(base, common), "", extra_table]
        printed += f"\nΔ vs {base.label} (percentage points [95% interval] (p)):\n\n" + extra_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(doc), encoding="utf-8")
    write_csv(out / "summary.csv", csv_rows)
    base_acc = baselines(rows, tasks)
    for task in tasks:
        plot_task(task, rows, base_acc[task], out / f"{task}.png", metric)
    for a, b, caption, md, csv_rows in comparisons:
        stem = f"compare_{_safe(a.label)}_vs_{_safe(b.label)}"
        title = f"# {a.label} vs {b.label}"
        (out / f"{stem}.md").write_text("\n".join([title, "", *note, caption, "", md]), encoding="utf-8")
        write_csv(out / f"{stem}.csv", csv_rows)
        printed += f"\n{a.label} − {b.label} ({out / stem}.md):\n\n" + md
    return printed

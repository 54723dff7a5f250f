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
--compare A B (repeatable): DIR/compare_<A>_vs_<B>.md/.csv, A − B per task with the same numbers.
Runs that did not evaluate the same examples are refused. The formulas: analysis/paired.py.

Writes DIR/summary.md, DIR/summary.csv and DIR/<task>.png (bars with their 95% intervals, seed
values as dots, chance/majority/zero-shot lines), and prints the markdown table(s).
A missing folder, no usable results or runs that cannot be paired is a one-line error with exit
status 2.
"""
import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from analysis.paired import (PairingError, average_difference, format_p, group_key,  # noqa: E402
                             load_predictions, mean_interval, mean_std, paired_difference,
                             same_examples_problem, seedless_name)
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


def protocol_label(meta: dict, tasks: dict) -> str:
    """How a run was evaluated: its protocol (results.json meta; runs made before protocols existed
    used `clean`), with the evaluation mode when it is not generation and the answer format when it
    is not the published label one (e.g. "clean (loglik, text)"). Cloze evaluations use lm-eval's requests,
    not a protocol's prompt: they read "cloze (lm-eval style)" whatever protocol their meta names."""
    rows = [t for t in tasks.values() if isinstance(t, dict)]
    if rows and all(t.get("mode") == "cloze" for t in rows):
        return str(rows[0].get("protocol") or "cloze (lm-eval style)")
    modes = sorted({str(t["mode"]) for t in rows if t.get("mode") and t["mode"] != "generate"})
    formats = sorted({str(t["answer_format"]) for t in rows if t.get("answer_format") not in (None, "label")})
    how = ", ".join(["/".join(modes)] * bool(modes) + ["/".join(formats)] * bool(formats))
    return f"{meta.get('protocol') or 'clean'}" + (f" ({how})" if how else "")


METRICS = {"acc": "", "acc_norm": "_norm"}  # --metric -> the suffix of its results.json / eval/*.jsonl keys
METRIC_NOTE = {"acc": "", "acc_norm": "Metric: acc_norm — every accuracy, interval and paired test here is of the "
               "argmax of score / option length in characters, not of the summed score (acc)."}


def load_run(path: Path, metric: str = "acc") -> dict:
    """One run: {"path", "name", "method", "model", "hparams", "trainable", "tasks"}; `metric` acc_norm
    reads accuracy_norm and its interval (cloze and text-format loglik evaluations have it)."""
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
    tasks, suffix = {}, METRICS[metric]
    for task, result in results.get("tasks", {}).items():
        if isinstance(result, dict) and f"accuracy{suffix}" not in result:
            raise ResultsError(f"{path}: task {task!r} has no {metric} (only cloze and text-format loglik "
                               "evaluations report acc_norm)")
        try:
            tasks[task] = {key: float(result[key + suffix]) for key in ("accuracy", "ci95_low", "ci95_high")}
            tasks[task]["n"] = int(result["n"])
            for key in ("chance_accuracy", "majority_accuracy"):
                tasks[task][key] = float(result[key]) if result.get(key) is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsError(f"{path}: task {task!r} lacks a numeric {err}") from err
    method = str(meta.get("method") or meta.get("peft_type") or "?")
    results_meta = results.get("meta") or {}
    return {
        "path": path,
        "dir": path.parent,
        "name": path.parent.name,
        "results_meta": results_meta,  # what evaluation wrote: the seed-group key
        "seed": results_meta.get("seed"),
        "raw_tasks": results.get("tasks", {}),  # the full per-task entries (predictions_file, mode, ...)
        "method": method,
        "protocol": protocol_label(results_meta, results.get("tasks", {})),
        "model": _short_model(meta.get("model_name")),
        "hparams": run_hparams(method, meta),
        "trainable": meta.get("trainable_params"),
        "val_loss": None if val_loss is None else float(val_loss),
        "tasks": tasks,
        "metric": metric,
    }


# --------------------------------------------------------------------- rows: runs and seed groups

def run_predictions(run: dict, task: str):
    """The run's eval/<task>.jsonl as analysis.paired.Predictions (read once, cached on the run)."""
    cache = run.setdefault("predictions", {})
    if task not in cache:
        try:
            cache[task] = load_predictions(run["dir"], task, run["raw_tasks"].get(task), METRICS[run["metric"]])
        except PairingError as err:
            raise ResultsError(str(err)) from err
    return cache[task]


def _seed_order(seed):
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0, seed, "") if number else (1, 0, str(seed))


def _group_problem(members: list[dict]) -> str | None:
    """Why runs with equal meta (but for the seed) cannot form one row, or None."""
    seeds = [str(m["seed"]) for m in members]
    if len(set(seeds)) < len(seeds):
        return "some share a seed"
    for task in members[0]["tasks"]:
        try:
            named = [(m["name"], run_predictions(m, task)) for m in members]
        except ResultsError as err:
            return str(err)
        first_name, first = named[0]
        for name, preds in named[1:]:
            problem = same_examples_problem(task, first_name, first, name, preds)
            if problem:
                return problem
    return None


def single_row(run: dict) -> dict:
    return {"runs": [run], "label": run["name"], "method": run["method"], "protocol": run["protocol"],
            "model": run["model"],
            "hparams": run["hparams"], "trainable": run["trainable"],
            "val_loss": run["val_loss"], "val_loss_std": None,
            "seeds": [] if run["seed"] is None else [run["seed"]],
            "tasks": {t: {**r, "std": None, "per_seed": None} for t, r in run["tasks"].items()}}


def group_row(members: list[dict]) -> dict:
    """One row for the seeds of one configuration: per task the mean and sample std over seeds,
    and the 95% interval over examples of the seed-averaged correctness (analysis/paired.py)."""
    members = sorted(members, key=lambda m: _seed_order(m["seed"]))
    first = members[0]
    tasks = {}
    for task, result in first["tasks"].items():
        accs = [m["tasks"][task]["accuracy"] for m in members]
        mean, std = mean_std(accs)
        preds = [run_predictions(m, task) for m in members]
        per_example = [sum(p.correct[i] for p in preds) / len(preds) for i in sorted(preds[0].ids)]
        low, high = mean_interval(per_example)
        tasks[task] = {"accuracy": mean, "std": std, "per_seed": accs, "ci95_low": low, "ci95_high": high,
                       "n": result["n"], "chance_accuracy": result["chance_accuracy"],
                       "majority_accuracy": result["majority_accuracy"]}
    losses = [m["val_loss"] for m in members]
    loss, loss_std = mean_std(losses) if all(v is not None for v in losses) else (None, None)
    names = {seedless_name(m["name"], m["seed"]) for m in members}
    label = names.pop() if len(names) == 1 and "" not in names else "_".join(
        [first["method"], first["model"], *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in first["hparams"].items())])
    return {"runs": members, "label": label, "method": first["method"], "protocol": first["protocol"],
            "model": first["model"],
            "hparams": first["hparams"], "trainable": first["trainable"],
            "val_loss": loss, "val_loss_std": loss_std, "seeds": [m["seed"] for m in members], "tasks": tasks}


def _assign_unique_labels(rows: list[dict]) -> None:
    """A folder name used twice gets its parent folder in front; a label still taken gets #2, #3."""
    counts = Counter(row["label"] for row in rows)
    for row in rows:
        if counts[row["label"]] > 1 and len(row["runs"]) == 1:
            row["label"] = f"{row['runs'][0]['dir'].parent.name}/{row['label']}"
    seen = Counter()
    for row in rows:
        seen[row["label"]] += 1
        if seen[row["label"]] > 1:
            row["label"] = f"{row['label']}#{seen[row['label']]}"


def make_rows(runs: list[dict], group_seeds: bool = True, notes: list[str] | None = None) -> list[dict]:
    """The table's rows, in run order: one per run, or one per seed group (at its first member)."""
    notes = [] if notes is None else notes
    candidates = {}
    if group_seeds:
        for run in runs:
            if run["seed"] is not None:
                candidates.setdefault(group_key(run["results_meta"], run["raw_tasks"]), []).append(run)
    grouped = {}
    for members in candidates.values():
        if len(members) < 2:
            continue
        problem = _group_problem(members)
        if problem:
            notes.append(f"{', '.join(m['name'] for m in members)} differ only in their seed but stay "
                         f"separate rows: {problem}")
            continue
        grouped.update({id(m): members for m in members})
    rows, emitted = [], set()
    for run in runs:
        members = grouped.get(id(run))
        if members is None:
            rows.append(single_row(run))
        elif id(members[0]) not in emitted:
            emitted.add(id(members[0]))
            rows.append(group_row(members))
    _assign_unique_labels(rows)
    return rows


def _run_file(spec: str) -> Path | None:
    """results.json of a run folder (or the file itself) named by `spec`, else None."""
    path = Path(spec)
    if path.is_file() and path.name == "results.json":
        return path.resolve()
    if path.is_dir() and (path / "results.json").is_file():
        return (path / "results.json").resolve()
    return None


def find_row(spec: str, rows: list[dict], flag: str) -> dict:
    """The row that --baseline/--compare names: by run folder (its seed group's row, if grouped),
    else by label, else by a member's folder name."""
    file = _run_file(spec)
    if file is not None:
        for row in rows:
            if any(run["path"] == file for run in row["runs"]):
                return row
    matches = ([row for row in rows if row["label"] == spec]
               or [row for row in rows if any(run["name"] == spec for run in row["runs"])])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ResultsError(f"{flag} {spec}: names several rows ({', '.join(r['label'] for r in matches)}); "
                           f"give the run folder")
    raise ResultsError(f"{flag} {spec}: not a run folder with results.json nor a row label "
                       f"(labels: {', '.join(r['label'] for r in rows)})")


# ---------------------------------------------------------------------------------- paired tests

def compare_rows(a: dict, b: dict, task: str):
    """analysis.paired.PairedDiff of row a − row b on `task`; ResultsError when they did not
    evaluate the same examples."""
    preds_a = [run_predictions(run, task) for run in a["runs"]]
    preds_b = [run_predictions(run, task) for run in b["runs"]]
    problem = same_examples_problem(task, a["label"], preds_a[0], b["label"], preds_b[0])
    if problem:
        raise ResultsError(problem)
    return paired_difference(preds_a, preds_b)


def _seeds_note(row: dict) -> str:
    k = len(row["runs"])
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


def baseline_deltas(rows: list[dict], base: dict, tasks: list[str], common: list[str]) -> list[dict | None]:
    """Per row (None for the baseline itself): {"tasks": {task: PairedDiff}, "avg": (Δ, lo, hi) or None}."""
    out = []
    for row in rows:
        if row is base:
            out.append(None)
            continue
        diffs = {t: compare_rows(row, base, t) for t in tasks if t in row["tasks"] and t in base["tasks"]}
        avg = average_difference([diffs[t] for t in common]) if common else None
        out.append({"tasks": diffs, "avg": avg})
    return out


def delta_caption(base: dict, common: list[str], number: int = 2) -> str:
    return (f"Table {number}. Paired difference of each row to {base['label']}{_seeds_note(base)} on the same "
            f"test examples (matched by example id), in percentage points: Δ = accuracy(row) − "
            f"accuracy({base['label']}) [its 95% Agresti–Min interval] (p: two-sided exact McNemar test on "
            f"the examples exactly one of the two got right; where a seed group is involved, each example's "
            f"correctness is averaged over its seeds and p is the exact sign-flip permutation test on the "
            f"per-example differences; \", MC\" marks a Monte Carlo p). {average_header(common, 'avg Δ')}: "
            f"mean of the per-task Δ, its interval from the per-task standard errors, no p-value. "
            f"\"baseline\": the baseline's own row; {DASH}: the row or the baseline lacks the task. "
            f"Formulas: analysis/paired.py.")


def delta_table(rows: list[dict], base: dict, deltas: list, tasks: list[str], common: list[str]) -> str:
    header = ["run", *tasks, average_header(common, "avg Δ")]
    md_rows = []
    for row, delta in zip(rows, deltas):
        if delta is None:
            md_rows.append([row["label"], *["baseline"] * (len(tasks) + 1)])
        else:
            md_rows.append([row["label"], *[_delta_cell(delta["tasks"].get(t)) for t in tasks],
                            _avg_delta_cell(delta["avg"])])
    return to_markdown(header, md_rows)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "row"


def compare(a: dict, b: dict, tasks: list[str]) -> tuple[str, str, list[dict]]:
    """(caption, markdown table, csv rows) of a − b per task and over the shared tasks."""
    shared = [t for t in tasks if t in a["tasks"] and t in b["tasks"]]
    if not shared:
        raise ResultsError(f"--compare {a['label']} {b['label']}: no task in common")
    diffs = {t: compare_rows(a, b, t) for t in shared}
    header = ["task", "n (paired)", f"A: {a['label']}{_seeds_note(a)}", f"B: {b['label']}{_seeds_note(b)}",
              "Δ A − B", "95% interval", "p", "test", "examples A > B", "examples B > A"]
    md_rows, csv_rows = [], []
    for t, d in diffs.items():
        md_rows.append([t, d.n, _pct(d.acc_a), _pct(d.acc_b), _delta(d.delta),
                        f"[{_delta(d.low)}, {_delta(d.high)}]", format_p(d.p, d.p_test), d.p_test,
                        d.a_better, d.b_better])
        csv_rows.append({"task": t, "n": d.n, "a": a["label"], "b": b["label"], "a_seeds": d.seeds_a,
                         "b_seeds": d.seeds_b, "a_accuracy": d.acc_a, "b_accuracy": d.acc_b, "delta": d.delta,
                         "delta_lo": d.low, "delta_hi": d.high, "p": d.p, "p_test": d.p_test,
                         "a_better": d.a_better, "b_better": d.b_better})
    mean_delta, low, high = average_difference(list(diffs.values()))
    acc_a = _mean([d.acc_a for d in diffs.values()])
    acc_b = _mean([d.acc_b for d in diffs.values()])
    md_rows.append([average_header(shared, "avg"), DASH, _pct(acc_a), _pct(acc_b), _delta(mean_delta),
                    f"[{_delta(low)}, {_delta(high)}]", DASH, DASH, DASH, DASH])
    csv_rows.append({"task": "avg", "n": "", "a": a["label"], "b": b["label"], "a_seeds": len(a["runs"]),
                     "b_seeds": len(b["runs"]), "a_accuracy": acc_a, "b_accuracy": acc_b, "delta": mean_delta,
                     "delta_lo": low, "delta_hi": high, "p": "", "p_test": "", "a_better": "", "b_better": ""})
    caption = ("A − B per task on the same test examples (matched by example id). A and B accuracy in %"
               " (seed groups: mean over seeds); Δ and its 95% Agresti–Min interval in percentage points; "
               "p: two-sided, by the test named (exact McNemar for two single runs, else the exact sign-flip "
               "permutation test on the seed-averaged per-example differences; MC: Monte Carlo); examples "
               "A > B / B > A: examples whose (seed-averaged) correctness is higher for A / for B (for two "
               "single runs: A right and B wrong / the reverse). The last row: unweighted mean over the "
               "tasks, interval from the per-task standard errors, no p-value. Formulas: analysis/paired.py.")
    return caption, to_markdown(header, md_rows), csv_rows


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


def _cell(result: dict | None, seeds: int = 1) -> str:
    if result is None:
        return DASH
    if seeds > 1:
        return f"{_pct(result['accuracy'])} ± {_pct(result['std'])} ({seeds} seeds)"
    half = (result["ci95_high"] - result["ci95_low"]) / 2
    return f"{_pct(result['accuracy'])} ± {_pct(half)} ({result['n']})"


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def average_header(common: list[str], name: str = "avg") -> str:
    if not common:
        return f"{name} (no task common to all runs)"
    plural = "task" if len(common) == 1 else "tasks"
    return f"{name} ({', '.join(common)}; {len(common)} {plural})"


def row_average(row: dict, common: list[str]) -> tuple[float | None, float | None, list[float] | None]:
    """(mean, sample std over seeds, per-seed values) of the unweighted average over `common`;
    std and per-seed values are None for a single run."""
    if not common:
        return None, None, None
    if len(row["runs"]) == 1:
        return _mean([row["tasks"][t]["accuracy"] for t in common]), None, None
    per_seed = [_mean([row["tasks"][t]["per_seed"][i] for t in common]) for i in range(len(row["runs"]))]
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


def build_tables(rows: list[dict], deltas: list | None = None,
                 base: dict | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """(markdown header, markdown rows, csv rows) for the rows plus the chance/majority rows; with
    `deltas` (baseline_deltas) the CSV gains each task's paired difference to `base`."""
    tasks = ordered_tasks(rows)
    common = common_tasks(rows, tasks)
    base_acc = baselines(rows, tasks)
    header = ["run", "method", "protocol", "model", "hyperparameters", "trainable params", "best val loss",
              *tasks, average_header(common)]
    hparam_keys = list(dict.fromkeys(k for row in rows for k in row["hparams"]))
    any_group = any(len(row["runs"]) > 1 for row in rows)

    md_rows, csv_rows = [], []
    for i, row in enumerate(rows):
        k = len(row["runs"])
        avg, avg_std, avg_seeds = row_average(row, common)
        loss = DASH if row["val_loss"] is None else f"{row['val_loss']:.3f}"
        if row["val_loss_std"] is not None:
            loss += f" ± {row['val_loss_std']:.3f}"
        avg_cell = _pct(avg) if k == 1 or avg is None else f"{_pct(avg)} ± {_pct(avg_std)} ({k} seeds)"
        md_rows.append([row["label"], row["method"], row["protocol"], row["model"], _format_hparams(row["hparams"]),
                        _format_count(row["trainable"]), loss,
                        *[_cell(row["tasks"].get(t), k) for t in tasks], avg_cell])
        out = {"run": ";".join(str(run["dir"]) for run in row["runs"]), "label": row["label"],
               "method": row["method"], "protocol": row["protocol"], "model": row["model"],
               **{key: row["hparams"].get(key, "") for key in hparam_keys},
               "trainable_params": "" if row["trainable"] is None else row["trainable"],
               "best_val_loss": "" if row["val_loss"] is None else row["val_loss"]}
        if any_group:
            out["best_val_loss_std"] = "" if row["val_loss_std"] is None else row["val_loss_std"]
        out["n_seeds"] = k
        out["seeds"] = _joined(row["seeds"])
        delta = deltas[i] if deltas is not None else None
        for t in tasks:
            result = row["tasks"].get(t)
            for key in ("accuracy", "ci95_low", "ci95_high", "n"):
                out[f"{t}_{key}"] = "" if result is None else result[key]
            if any_group:
                grouped = result is not None and k > 1
                out[f"{t}_std"] = result["std"] if grouped else ""
                out[f"{t}_per_seed"] = _joined(result["per_seed"]) if grouped else ""
            if deltas is not None:
                d = delta["tasks"].get(t) if delta else None
                out.update({f"{t}_delta": "" if d is None else d.delta, f"{t}_delta_lo": "" if d is None else d.low,
                            f"{t}_delta_hi": "" if d is None else d.high, f"{t}_p": "" if d is None else d.p,
                            f"{t}_p_test": "" if d is None else d.p_test,
                            f"{t}_n_paired": "" if d is None else d.n})
        out["avg_common"] = "" if avg is None else avg
        if any_group:
            out["avg_common_std"] = "" if avg_std is None else avg_std
            out["avg_common_per_seed"] = "" if avg_seeds is None else _joined(avg_seeds)
        if deltas is not None:
            avg_delta = delta["avg"] if delta else None
            out.update({f"avg_delta{suffix}": "" if avg_delta is None else avg_delta[j]
                        for j, suffix in enumerate(("", "_lo", "_hi"))})
            out["baseline"] = base["label"]
        csv_rows.append(out)

    for label in ("chance", "majority"):
        avg = _mean([base_acc[t][label] for t in common])
        md_rows.append([label, label, DASH, DASH, DASH, DASH, DASH,
                        *[_pct(base_acc[t][label]) for t in tasks], _pct(avg)])
        out = {key: "" for key in csv_rows[0]}
        out.update({"run": label, "method": label, "label": label})
        for t in tasks:
            value = base_acc[t][label]
            out[f"{t}_accuracy"] = "" if value is None else value
        out["avg_common"] = "" if avg is None else avg
        csv_rows.append(out)
    return header, md_rows, csv_rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


# ------------------------------------------------------------------------------------ plots

def _bar_labels(rows: list[dict]) -> list[str]:
    """One x label per bar: the method; the model's file or folder name only where the bars' models
    differ; the hyperparameters one per line (side by side they run into the next bar's label); the
    number of seeds of a group."""
    show_model = len({row["model"] for row in rows}) > 1
    labels = []
    for row in rows:
        parts = [row["method"]]
        if show_model:
            parts.append(Path(str(row["model"]).rstrip("/")).name or str(row["model"]))
        parts += _format_hparams(row["hparams"]).split(", ") if row["hparams"] else []
        if len(row["runs"]) > 1:
            parts.append(f"({len(row['runs'])} seeds)")
        labels.append("\n".join(parts))
    if len(set(labels)) < len(labels):  # same method/model/hparams: tell rows apart by label
        labels = [f"{label}\n[{row['label']}]" for label, row in zip(labels, rows)]
    return labels


ZERO_SHOT_STYLES = (("tab:gray", "-."), ("tab:purple", "-."), ("tab:brown", "-."), ("tab:olive", "-."))


def plot_task(task: str, rows: list[dict], base: dict, out_path: Path, metric: str = "acc") -> None:
    """Bar chart of every row's accuracy on `task` with its 95% interval (Wilson for a run; over
    examples for a seed group, whose seeds are dots), and chance/majority/zero-shot lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if task in row["tasks"]]
    results = [row["tasks"][task] for row in shown]
    acc = [100 * r["accuracy"] for r in results]
    err = [[100 * max(0.0, r["accuracy"] - r["ci95_low"]) for r in results],
           [100 * max(0.0, r["ci95_high"] - r["accuracy"]) for r in results]]
    labels = _bar_labels(shown)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shown) + 2.5), 5.5))
    x = list(range(len(shown)))
    bars = ax.bar(x, acc, yerr=err, capsize=6, color="tab:blue", alpha=0.85,
                  error_kw={"elinewidth": 1.2, "ecolor": "black"},
                  label=f"{'accuracy' if metric == 'acc' else metric} (95% interval)")
    seeds_labelled, tops = False, [value + high for value, high in zip(acc, err[1])]
    for i, (bar, result) in enumerate(zip(bars, results)):
        if result.get("per_seed"):  # beside the whisker, not on it
            values = [100 * v for v in result["per_seed"]]
            ax.scatter([bar.get_x() + 0.78 * bar.get_width()] * len(values), values, s=14, color="black",
                       zorder=3, label=None if seeds_labelled else "single seeds")
            seeds_labelled, tops[i] = True, max(tops[i], *values)
    for bar, value, top in zip(bars, acc, tops):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    if base["chance"] is not None:
        ax.axhline(100 * base["chance"], color="tab:red", linestyle="--", linewidth=1.5,
                   label=f"chance ({100 * base['chance']:.1f}%)")
    if base["majority"] is not None:
        ax.axhline(100 * base["majority"], color="tab:green", linestyle=":", linewidth=2,
                   label=f"majority ({100 * base['majority']:.1f}%)")
    zero_shot = [row for row in shown if row["method"] == "zero-shot"]
    for row, (color, style) in zip(zero_shot, ZERO_SHOT_STYLES * len(zero_shot)):
        value = 100 * row["tasks"][task]["accuracy"]
        ax.axhline(value, color=color, linestyle=style, linewidth=1.5,
                   label=f"zero-shot{'' if 'zero' in row['label'] else ' ' + row['label']} ({value:.1f}%)")
    ns = sorted({r["n"] for r in results})
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
    specs = [s for s in (baseline, *(s for pair in compares for s in pair)) if s]
    extra = [str(f) for f in map(_run_file, specs) if f is not None]  # run folders outside `folders`
    paths = find_results(list(folders) + extra)
    if not paths:
        raise ResultsError(f"no results.json found under {', '.join(folders)}")
    runs = [load_run(p, metric) for p in paths]
    protocols = sorted({run["protocol"] for run in runs})
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
            raise ResultsError(f"--compare {spec_a} {spec_b}: both name the row {a['label']}")
        comparisons.append((a, b, *compare(a, b, tasks)))

    header, md_rows, csv_rows = build_tables(rows, deltas, base)
    table = to_markdown(header, md_rows)
    note = [METRIC_NOTE[metric], ""] if METRIC_NOTE[metric] else []
    doc = ["# Results", "", *note, main_caption(common), "", table, FILES_NOTE, ""]
    groups = [row for row in rows if len(row["runs"]) > 1]
    if groups:
        doc += ["Seed groups:", ""] + [
            f"- {row['label']}: seeds {', '.join(map(str, row['seeds']))} "
            f"({', '.join(run['name'] for run in row['runs'])})" for row in groups] + [""]
    printed = table
    if base is not None:
        extra_table = delta_table(rows, base, deltas, tasks, common)
        doc += [f"## Paired differences vs {base['label']}", "", delta_caption(base, common), "", extra_table]
        printed += f"\nΔ vs {base['label']} (percentage points [95% interval] (p)):\n\n" + extra_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(doc), encoding="utf-8")
    write_csv(out / "summary.csv", csv_rows)
    base_acc = baselines(rows, tasks)
    for task in tasks:
        plot_task(task, rows, base_acc[task], out / f"{task}.png", metric)
    for a, b, caption, md, csv_rows in comparisons:
        stem = f"compare_{_safe(a['label'])}_vs_{_safe(b['label'])}"
        title = f"# {a['label']} vs {b['label']}"
        (out / f"{stem}.md").write_text("\n".join([title, "", *note, caption, "", md]), encoding="utf-8")
        write_csv(out / f"{stem}.csv", csv_rows)
        printed += f"\n{a['label']} − {b['label']} ({out / stem}.md):\n\n" + md
    return printed


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
    except ResultsError as err:
        print(f"analyze_results: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The runs analyze_results.py reads: results.json (+ args.json) found under folders, loaded, and grouped
into rows (seed groups: runs that differ only in their seed, on the same examples). The command line and
the meaning of every column: analyze_results.py. The records: TaskResult (one task's accuracy of a run or
a row), Run (one results.json), Row (one line of the table: a run, or a seed group)."""
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from analysis.paired import (PairingError, group_key, load_predictions, mean_interval, mean_std, paired_difference,
                             same_examples_problem, seedless_name)
from utils.errors import BadInput
from utils.options import defaults_of
from utils.runs import read_json

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


class ResultsError(BadInput):
    """A missing folder or no usable results (reported as a one-line message, exit status 2)."""


@dataclass(frozen=True)
class TaskResult:
    """One task's numbers of a run (from results.json) or of a row. For a run: its accuracy and 95% Wilson
    interval; for a seed group: the mean over seeds, the interval over examples of the seed-averaged
    correctness, the sample std over seeds and every seed's accuracy (in seed order)."""
    accuracy: float
    ci95_low: float
    ci95_high: float
    n: int  # evaluated examples
    chance_accuracy: float | None
    majority_accuracy: float | None
    std: float | None = None  # seed groups only
    per_seed: tuple[float, ...] | None = None  # seed groups only


@dataclass(frozen=True, eq=False)
class Run:
    """One run: a results.json, with args.json (when there is one) for its description."""
    path: Path  # its results.json
    name: str  # its folder's name
    results_meta: dict  # what evaluation wrote: the seed-group key
    raw_tasks: dict  # the full per-task entries of results.json (predictions_file, mode, ...)
    method: str
    protocol: str  # protocol_label
    model: str
    hparams: dict  # run_hparams
    trainable: int | None
    val_loss: float | None  # best validation loss of training (train_summary.json)
    tasks: dict[str, TaskResult]
    metric: str  # a key of METRICS
    predictions: dict = field(default_factory=dict, init=False, repr=False)  # task -> Predictions (run_predictions)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def seed(self):
        """results_meta's seed (None for zero-shot runs)."""
        return self.results_meta.get("seed")


@dataclass(frozen=True, eq=False)
class Row:
    """One row of the table: one run, or the runs of one seed group (in seed order)."""
    runs: tuple[Run, ...]
    label: str
    method: str
    protocol: str
    model: str
    hparams: dict
    trainable: int | None
    val_loss: float | None  # seed groups: the mean over seeds (None when a member has none)
    val_loss_std: float | None  # seed groups only
    seeds: tuple
    tasks: dict[str, TaskResult]


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


def load_run(path: Path, metric: str = "acc") -> Run:
    """The run of results.json `path`; `metric` acc_norm reads accuracy_norm and its interval (cloze and
    text-format loglik evaluations have it)."""
    try:
        results = read_json(path)
    except (OSError, BadInput) as err:
        raise ResultsError(f"cannot read results: {err}") from err
    if not isinstance(results, dict) or not isinstance(results.get("tasks", {}), dict):
        raise ResultsError(f"{path}: expected {{'meta': {{...}}, 'tasks': {{...}}}}")
    meta = {}
    args_path = path.parent / "args.json"
    if args_path.exists():
        try:
            args = read_json(args_path)
        except (OSError, BadInput) as err:
            raise ResultsError(f"cannot read {err}") from err
        if isinstance(args, dict):
            meta.update(args)
    if not isinstance(results.get("meta") or {}, dict):
        raise ResultsError(f"{path}: 'meta' is a JSON {type(results['meta']).__name__}, not an object "
                           "(expected {'meta': {...}, 'tasks': {...}})")
    meta.update(results.get("meta") or {})
    val_loss = None  # best validation loss (response tokens), from the training run's summary
    summary_path = path.parent / "train_summary.json"
    if summary_path.exists():
        try:
            val_loss = read_json(summary_path, "training numbers").get("best_val_loss")
        except (OSError, BadInput) as err:
            raise ResultsError(f"cannot read {err}") from err
    tasks, suffix = {}, METRICS[metric]
    for task, result in results.get("tasks", {}).items():
        if isinstance(result, dict) and f"accuracy{suffix}" not in result:
            raise ResultsError(f"{path}: task {task!r} has no {metric} (only cloze and text-format loglik "
                               "evaluations report acc_norm)")
        try:
            t = TaskResult(*(float(result[key + suffix]) for key in ("accuracy", "ci95_low", "ci95_high")),
                           n=int(result["n"]),
                           **{key: float(result[key]) if result.get(key) is not None else None
                              for key in ("chance_accuracy", "majority_accuracy")})
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsError(f"{path}: task {task!r} lacks a numeric {err}") from err
        correct = result.get(f"correct{suffix}")
        numbers_ok = t.n > 0 and all(0.0 <= x <= 1.0 for x in (t.accuracy, t.ci95_low, t.ci95_high))
        if not numbers_ok or (correct is not None and abs(t.accuracy - correct / t.n) > 1e-9):
            raise ResultsError(f"{path}: task {task!r}: {metric} {result.get('accuracy' + suffix)!r} with n "
                               f"{t.n} and correct{suffix} {correct!r} is no accuracy (a fraction in [0, 1] "
                               f"equal to correct / n); an edited or damaged results.json?")
        tasks[task] = t
    method = str(meta.get("method") or meta.get("peft_type") or "?")
    results_meta = results.get("meta") or {}
    return Run(path=path, name=path.parent.name, results_meta=results_meta,
               raw_tasks=results.get("tasks", {}), method=method,
               protocol=protocol_label(results_meta, results.get("tasks", {})),
               model=_short_model(meta.get("model_name")), hparams=run_hparams(method, meta),
               trainable=meta.get("trainable_params"), val_loss=None if val_loss is None else float(val_loss),
               tasks=tasks, metric=metric)


# --------------------------------------------------------------------- rows: runs and seed groups

def run_predictions(run: Run, task: str):
    """The run's eval/<task>.jsonl as analysis.paired.Predictions (read once, cached on the run)."""
    cache = run.predictions
    if task not in cache:
        try:
            cache[task] = load_predictions(run.dir, task, run.raw_tasks.get(task), METRICS[run.metric])
        except PairingError as err:
            raise ResultsError(str(err)) from err
    return cache[task]


def _seed_order(seed):
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0, seed, "") if number else (1, 0, str(seed))


def _group_problem(members: list[Run]) -> str | None:
    """Why runs with equal meta (but for the seed) cannot form one row, or None."""
    seeds = [str(m.seed) for m in members]
    if len(set(seeds)) < len(seeds):
        return "some share a seed"
    for task in members[0].tasks:
        try:
            named = [(m.name, run_predictions(m, task)) for m in members]
        except ResultsError as err:
            return str(err)
        first_name, first = named[0]
        for name, preds in named[1:]:
            problem = same_examples_problem(task, first_name, first, name, preds)
            if problem:
                return problem
    return None


def single_row(run: Run) -> Row:
    return Row(runs=(run,), label=run.name, method=run.method, protocol=run.protocol, model=run.model,
               hparams=run.hparams, trainable=run.trainable, val_loss=run.val_loss, val_loss_std=None,
               seeds=() if run.seed is None else (run.seed,), tasks=run.tasks)


def group_row(members: list[Run]) -> Row:
    """One row for the seeds of one configuration: per task the mean and sample std over seeds,
    and the 95% interval over examples of the seed-averaged correctness (analysis/paired.py)."""
    members = sorted(members, key=lambda m: _seed_order(m.seed))
    first = members[0]
    tasks = {}
    for task, result in first.tasks.items():
        accs = [m.tasks[task].accuracy for m in members]
        mean, std = mean_std(accs)
        preds = [run_predictions(m, task) for m in members]
        per_example = [sum(p.correct[i] for p in preds) / len(preds) for i in sorted(preds[0].ids)]
        low, high = mean_interval(per_example)
        tasks[task] = TaskResult(mean, low, high, result.n, result.chance_accuracy, result.majority_accuracy,
                                 std=std, per_seed=tuple(accs))
    losses = [m.val_loss for m in members]
    loss, loss_std = mean_std(losses) if all(v is not None for v in losses) else (None, None)
    names = {seedless_name(m.name, m.seed) for m in members}
    label = names.pop() if len(names) == 1 and "" not in names else "_".join(
        [first.method, first.model, *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in first.hparams.items())])
    return Row(runs=tuple(members), label=label, method=first.method, protocol=first.protocol, model=first.model,
               hparams=first.hparams, trainable=first.trainable, val_loss=loss, val_loss_std=loss_std,
               seeds=tuple(m.seed for m in members), tasks=tasks)


def _unique_labels(rows: list[Row]) -> list[Row]:
    """A folder name used twice gets its parent folder in front; a label still taken gets #2, #3."""
    counts = Counter(row.label for row in rows)
    labels = [f"{row.runs[0].dir.parent.name}/{row.label}" if counts[row.label] > 1 and len(row.runs) == 1
              else row.label for row in rows]
    seen, out = Counter(), []
    for row, label in zip(rows, labels):
        seen[label] += 1
        out.append(replace(row, label=label if seen[label] == 1 else f"{label}#{seen[label]}"))
    return out


def make_rows(runs: list[Run], group_seeds: bool = True, notes: list[str] | None = None) -> list[Row]:
    """The table's rows, in run order: one per run, or one per seed group (at its first member)."""
    notes = [] if notes is None else notes
    candidates = {}
    if group_seeds:
        for run in runs:
            if run.seed is not None:
                candidates.setdefault(group_key(run.results_meta, run.raw_tasks), []).append(run)
    grouped = {}
    for members in candidates.values():
        if len(members) < 2:
            continue
        problem = _group_problem(members)
        if problem:
            notes.append(f"{', '.join(m.name for m in members)} differ only in their seed but stay "
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
    return _unique_labels(rows)


def _run_file(spec: str) -> Path | None:
    """results.json of a run folder (or the file itself) named by `spec`, else None."""
    path = Path(spec)
    if path.is_file() and path.name == "results.json":
        return path.resolve()
    if path.is_dir() and (path / "results.json").is_file():
        return (path / "results.json").resolve()
    return None


def find_row(spec: str, rows: list[Row], flag: str) -> Row:
    """The row that --baseline/--compare names: by run folder (its seed group's row, if grouped),
    else by label, else by a member's folder name."""
    file = _run_file(spec)
    if file is not None:
        for row in rows:
            if any(run.path == file for run in row.runs):
                return row
    matches = ([row for row in rows if row.label == spec]
               or [row for row in rows if any(run.name == spec for run in row.runs)])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ResultsError(f"{flag} {spec}: names several rows ({', '.join(r.label for r in matches)}); "
                           f"give the run folder")
    raise ResultsError(f"{flag} {spec}: not a run folder with results.json nor a row label "
                       f"(labels: {', '.join(r.label for r in rows)})")


# ---------------------------------------------------------------------------------- paired tests

def compare_rows(a: Row, b: Row, task: str):
    """analysis.paired.PairedDiff of row a − row b on `task`; ResultsError when they did not
    evaluate the same examples."""
    preds_a = [run_predictions(run, task) for run in a.runs]
    preds_b = [run_predictions(run, task) for run in b.runs]
    problem = same_examples_problem(task, a.label, preds_a[0], b.label, preds_b[0])
    if problem:
        raise ResultsError(problem)
    return paired_difference(preds_a, preds_b)

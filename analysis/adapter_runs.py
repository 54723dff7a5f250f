"""The records of analyze_adapter.py: the run folder it reads (RunFolder), what it measured of one run
(AdapterRun) and that run's line of adapter_summary.md/.csv (AdapterSummary, summary_row). The per-layer
and per-rank rows (layers.csv, gates.csv) stay dicts: their columns are layer_stats' numbers plus
whatever extras the method reports (analysis/deltas.py). The command line: analyze_adapter.py."""
import math
from dataclasses import dataclass, fields
from pathlib import Path

from utils.errors import BadInput
from utils.runs import read_json, saved_dir_of


@dataclass(frozen=True)
class RunFolder:
    """A training run of train_knowhira.py as analyze_adapter.py reads it."""
    args: dict  # args.json
    method: str  # args.json's peft_type
    trained: Path  # best/ or final/
    accs: dict[str, float]  # task -> accuracy from results.json (empty without one)


@dataclass(frozen=True)
class AdapterRun:
    """What analyze_adapter.py measured of one run."""
    label: str
    run: str  # the run folder
    method: str
    model: str  # the base model's file or folder name
    accs: dict[str, float]
    layers: list[dict]  # layers.csv rows: layer_stats' numbers and the method's extras, per layer
    gates: list[dict]  # gates.csv rows (KnowHiRA): one per layer and rank index
    spectra: dict  # layer -> singular values of ΔW, descending (numpy)
    shapes: dict[str, tuple[int, int]]  # layer -> (out, in)
    base_loss: float | None = None  # forgetting (None when skipped): LM loss of the base model,
    adapted_loss: float | None = None  # of the adapted one,
    forgetting_dloss: float | None = None  # adapted − base,
    forgetting_tokens: int | None = None  # over this many scored tokens


@dataclass(frozen=True)
class AdapterSummary:
    """One run's line of adapter_summary.csv (the columns, in this order) and adapter_summary.md: means
    (and medians) over its analysed layers; NaN where no layer has the number."""
    label: str
    run: str  # the run folder's name
    method: str
    model: str
    r: object  # the layers' r; "mixed" when they differ, None when they have none
    n_layers: int
    effective_rank_mean: float
    effective_rank_median: float
    numerical_rank_mean: float
    rank_bound_mean: float
    rank_over_bound_mean: float
    min_dim_mean: float
    share_left_mean: float
    share_left_random: float
    share_right_mean: float
    share_right_random: float
    share_both_mean: float
    share_both_random: float
    rel_update_mean: float
    rel_update_median: float
    gate_mean: float
    core_mean: float
    kasa_dropped_rel_mean: float
    rel_update_vs_pretrained_mean: float
    base_loss: float | None
    adapted_loss: float | None
    forgetting_dloss: float | None
    forgetting_tokens: int | None
    acc_avg: float | None  # unweighted mean accuracy over the run's tasks
    n_tasks: int


SUMMARY_FIELDS = tuple(f.name for f in fields(AdapterSummary))


def read_run(run_dir: Path, results_root: str | None = None) -> RunFolder:
    """args.json, the method, the adapter folder and the evaluation accuracies of a run (from
    RUN_DIR/results.json, or results_root/<run folder name>/results.json; none when absent)."""
    args_path = run_dir / "args.json"
    if not args_path.is_file():
        raise BadInput(f"{run_dir}: no args.json (not a run folder)")
    saved = read_json(args_path, "a run's arguments")
    if not isinstance(saved.get("model_name"), str):
        raise BadInput(f"{args_path}: no model_name (not a run's arguments)")
    trained = saved_dir_of(run_dir)
    if not trained.is_dir():
        raise BadInput(f"{run_dir}: no trained adapter (best/ or final/)")
    accs = {}
    results = (Path(results_root) / run_dir.name if results_root else run_dir) / "results.json"
    if results.is_file():
        data = read_json(results, "evaluation results")
        if not isinstance(data.get("tasks") or {}, dict):
            raise BadInput(f"{results}: 'tasks' is a JSON {type(data['tasks']).__name__}, not an object of tasks")
        try:
            accs = {t: float(v["accuracy"]) for t, v in (data.get("tasks") or {}).items()
                    if isinstance(v, dict) and v.get("accuracy") is not None}
        except (AttributeError, TypeError, ValueError) as e:
            raise BadInput(f"{results}: an accuracy that is no number ({e})") from None
    return RunFolder(args=saved, method=saved.get("peft_type", "?"), trained=trained, accs=accs)


def _stat(rows: list[dict], key: str, how: str = "mean") -> float:
    import numpy as np

    vals = [r[key] for r in rows if r.get(key) is not None and isinstance(r[key], (int, float))
            and math.isfinite(r[key])]
    if not vals:
        return math.nan
    return float(np.median(vals) if how == "median" else np.mean(vals))


def summary_row(res: AdapterRun) -> AdapterSummary:
    rows = res.layers
    rs = {r["r"] for r in rows if r.get("r") is not None}
    row = {"label": res.label, "run": Path(res.run).name, "method": res.method,
           "model": res.model, "r": rs.pop() if len(rs) == 1 else (None if not rs else "mixed"),
           "n_layers": len(rows)}
    for key in ("effective_rank", "numerical_rank", "rank_bound", "rank_over_bound", "min_dim",
                "share_left", "share_right", "share_both", "rel_update"):
        row[f"{key}_mean"] = _stat(rows, key)
    row["effective_rank_median"] = _stat(rows, "effective_rank", "median")
    row["rel_update_median"] = _stat(rows, "rel_update", "median")
    for key in ("share_left_random", "share_right_random", "share_both_random"):
        row[key] = _stat(rows, key)
    row["gate_mean"] = _stat(rows, "gate_mean")
    row["core_mean"] = _stat(rows, "core_mean")
    row["kasa_dropped_rel_mean"] = _stat(rows, "kasa_dropped_rel")
    row["rel_update_vs_pretrained_mean"] = _stat(rows, "rel_update_vs_pretrained")
    for key in ("base_loss", "adapted_loss", "forgetting_dloss", "forgetting_tokens"):
        row[key] = getattr(res, key)
    accs = res.accs
    row["acc_avg"] = sum(accs.values()) / len(accs) if accs else None
    row["n_tasks"] = len(accs)
    return AdapterSummary(**row)

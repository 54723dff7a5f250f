"""What did the adapter learn? Rank, knowledge-subspace alignment, size and forgetting of ΔW per layer.

    python analyze_adapter.py RUN_DIR [RUN_DIR ...] --out DIR [--results DIR] [--max_layers N]
                              [--forgetting_texts N]

Each RUN_DIR is a training run of train_knowhira.py (args.json + best/ or final/; results.json after
evaluation, or RESULTS/<run folder name>/results.json with --results RESULTS when the evaluations were
written elsewhere). For every adapted layer the update ΔW (out x in) is rebuilt in float32
(analysis/deltas.py): our methods via delta_weight(), LoRA as scaling·B A, DoRA/IA3 as W_merged − W0 from
a float64 merge of that layer, fft as W_trained − W0 on the default (or args.json) target layers. Per layer:

- numerical rank: #σ_i > max(out, in)·eps_float32·σ_1 (numpy/torch matrix_rank's default tolerance),
  next to an upper bound (rank_bound): r for LoRA/KaSA; min(rank(W0)·r, min(out, in)) for the Hadamard
  family (rank(W0 ⊙ BMA) <= rank(W0)·r); min(rank(W0) + r, min(out, in)) for DoRA (its magnitude
  rescaling of W0's rows is full rank); rank(W0) for IA3; min(out, in) for fft. min_dim is reported too.
- effective rank: exp(entropy of p_i = σ_i/Σσ) (Roy & Vetterli 2007), σ_i below the tolerance as zeros.
- knowledge-subspace shares: with U_k, V_k the top-k singular vectors of the PRETRAINED W0 (KaSA: the
  truncated W0' plus its dropped components), k = models.spectrum.top_k(r, svd_rank_ratio, min(out, in))
  (ratio 0.5 when the run has none; fft uses the run's r_ab): share_left = ‖U_kᵀΔW‖²/‖ΔW‖²,
  share_right = ‖ΔW V_k‖²/‖ΔW‖², share_both = ‖U_kᵀΔW V_k‖²/‖ΔW‖², next to what an isotropic Gaussian
  matrix gives: k/out, k/in, k²/(out·in).
- relative update ‖ΔW‖_F/‖W_base‖_F with W_base = W0 (KaSA: the truncated W0' the update is added to;
  KaSA rows also give ‖dropped‖/‖W0‖ and the total change ‖W0' + ΔW − W0‖/‖W0‖).
- KnowHiRA: sigmoid(g) per layer next to σ_norm and the core m = (1 − α) + α σ_norm ⊙ sigmoid(g).

Forgetting (analysis/forgetting.py): LM loss (nats/token) of the base and of the adapted model on N
questions (template and answers stripped) of a task's TEST file, a stand-in for general text.

Writes DIR/adapter_summary.md, DIR/adapter_summary.csv (one row per run), DIR/layers.csv (one row per
layer), DIR/gates.csv (KnowHiRA: one row per layer and rank index), and the figures
effective_rank.png, spectra.png, gates.png (KnowHiRA runs only), forgetting_vs_accuracy.png.
Layers are processed one at a time; only their singular values are kept.
"""
import argparse
import gc
import math
import sys
from pathlib import Path

from analysis.adapter_runs import SUMMARY_FIELDS, AdapterRun, AdapterSummary, read_run, summary_row
from analysis.tables import finite, write_csv
from data.options import DEFAULT_DATA_DIR
from utils.errors import BadInput
from utils.options import argtype, non_negative, positive

ROOT = Path(__file__).resolve().parent
LAYER_FIRST = ("label", "run", "method", "layer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_layers", type=argtype(positive), default=None,
                   help="analyse N adapted layers per run, evenly spaced in model order (default: all)")
    p.add_argument("--forgetting_texts", type=argtype(non_negative), default=200,
                   help="N held-out questions for the forgetting LM loss (0 = skip)")
    p.add_argument("--forgetting_task", default="piqa",
                   help="task whose TEST questions are the stand-in text (default piqa)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder with <task>/test.json (env KNOWHIRA_DATA_DIR)")
    p.add_argument("--max_len", type=argtype(positive), default=128, help="tokens per forgetting text")
    p.add_argument("--batch", type=argtype(positive), default=8, help="batch size of the forgetting pass")
    p.add_argument("--results", default=None, metavar="RESULTS",
                   help="read each run's accuracies from RESULTS/<run folder name>/results.json "
                        "(an evaluation's --results_dir root) instead of RUN_DIR/results.json")
    p.add_argument("--model_name", default=None,
                   help="override every run's base model (e.g. when args.json has a stale path)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no_figures", action="store_true", help="write the tables only")
    return p


# ---- one run -----------------------------------------------------------------------------------
def _resolve_model(name: str) -> str:
    """A relative local path from args.json is tried from here and from the repository root."""
    if name and not Path(name).exists() and (ROOT / name).exists():
        return str(ROOT / name)
    return name


def analyze_run(run_dir: Path, label: str, opts, texts: list[str] | None, device: str) -> AdapterRun:
    """Per-layer rows, KnowHiRA gate rows, ΔW spectra and the forgetting numbers of one run."""
    import torch

    from analysis.adapter_stats import layer_stats
    from analysis.deltas import analysable, iter_deltas, layer_modules, select_layers
    from analysis.forgetting import lm_loss
    from models.get_models import load_base_model
    from models.targets import default_targets

    info = read_run(run_dir, opts.results)
    saved, method = info.args, info.method
    impl = analysable(method)
    model_name = _resolve_model(opts.model_name or saved["model_name"])
    model, tokenizer = load_base_model(model_name, **{k: saved[k] for k in ("gguf_file", "load_bit") if k in saved})
    model.to(device).eval()
    layers, gates, spectra, shapes = [], [], {}, {}
    base_loss = adapted_loss = tokens = None
    if texts:
        base_loss, tokens = lm_loss(model, tokenizer, texts, opts.batch, opts.max_len)

    def run_layers(modules, names):
        for d in iter_deltas(modules, method, names, info.trained):
            row, s = layer_stats(d.dw.to(device), d.w0.to(device), rank_bound=impl.rank_bound, r=d.r,
                                 svd_rank_ratio=saved.get("svd_rank_ratio"), base=d.base.to(device),
                                 align_r=d.r or saved.get("r_ab"))
            layers.append({"label": label, "run": run_dir.name, "method": method, "layer": d.name, **row, **d.extra})
            spectra[d.name], shapes[d.name] = s, (row["out"], row["in"])
            for i in range(len(d.vectors.get("core", []))):
                gates.append({"label": label, "run": run_dir.name, "layer": d.name, "i": i,
                              **{k: float(v[i]) for k, v in d.vectors.items()}})
            del d, row, s

    with torch.no_grad():
        if impl.saves == "merged":  # compare the base weights with the saved trained ones, then load them
            targets = saved.get("target_modules") or default_targets(model.config.model_type)
            modules = layer_modules(model, method, targets)
            run_layers(modules, select_layers(list(modules), opts.max_layers))
            model = impl.load(model, info.trained)
        else:
            model = impl.load(model, info.trained)
            modules = layer_modules(model, method)
            run_layers(modules, select_layers(list(modules), opts.max_layers))
        model.eval()
        if texts:
            adapted_loss, _ = lm_loss(model, tokenizer, texts, opts.batch, opts.max_len)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return AdapterRun(label=label, run=str(run_dir), method=method, model=Path(str(model_name)).name,
                      accs=info.accs, layers=layers, gates=gates, spectra=spectra, shapes=shapes,
                      base_loss=base_loss, adapted_loss=adapted_loss, forgetting_tokens=tokens,
                      forgetting_dloss=None if adapted_loss is None else adapted_loss - base_loss)


# ---- output ------------------------------------------------------------------------------------
def _fmt(v, digits=3, pct=False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if pct:
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown(summary: list[AdapterSummary], opts, n_texts: int, notes: list[str]) -> str:
    lines = ["# Adapter analysis", "",
             "| label | method | r | layers | eff. rank mean / median | num. rank / bound (min dim) "
             "| share left (random) | share right (random) | share both (random) | ‖ΔW‖/‖W0‖ mean "
             "| LM loss base → adapted (Δ) | acc avg % (tasks) |",
             "|" + "---|" * 12]
    for r in summary:
        loss = (f"{_fmt(r.base_loss, 4)} → {_fmt(r.adapted_loss, 4)} "
                f"({'+' if (r.forgetting_dloss or 0) >= 0 else ''}{_fmt(r.forgetting_dloss, 3)})"
                if r.forgetting_dloss is not None else "—")
        lines.append(
            f"| {r.label} | {r.method} | {_fmt(r.r)} | {r.n_layers} "
            f"| {_fmt(r.effective_rank_mean)} / {_fmt(r.effective_rank_median)} "
            f"| {_fmt(r.numerical_rank_mean)} / {_fmt(r.rank_bound_mean)} ({_fmt(r.min_dim_mean)}) "
            f"| {_fmt(r.share_left_mean)} ({_fmt(r.share_left_random)}) "
            f"| {_fmt(r.share_right_mean)} ({_fmt(r.share_right_random)}) "
            f"| {_fmt(r.share_both_mean)} ({_fmt(r.share_both_random)}) "
            f"| {_fmt(r.rel_update_mean)} | {loss} "
            f"| {_fmt(r.acc_avg, pct=True)} ({r.n_tasks}) |")
    lines += ["", "Runs: " + "; ".join(f"**{r.label}** = `{r.run}` ({r.model})"
                                       for r in summary), ""]
    know = [r for r in summary if finite(r.gate_mean) or finite(r.core_mean)]
    if know:
        lines += ["KnowHiRA: " + "; ".join(f"{r.label}: mean sigmoid(g) {_fmt(r.gate_mean)}, "
                                           f"mean core m {_fmt(r.core_mean)}" for r in know)
                  + " (per layer and rank index: gates.csv, gates.png).", ""]
    kasa = [r for r in summary if finite(r.kasa_dropped_rel_mean)]
    if kasa:
        lines += ["KaSA: ΔW and ‖ΔW‖/‖W0'‖ are relative to the TRUNCATED base W0' (the r smallest "
                  "singular components of W0 removed); " + "; ".join(
                      f"{r.label}: mean ‖dropped‖/‖W0‖ {_fmt(r.kasa_dropped_rel_mean)}, "
                      f"mean total change ‖W0' + ΔW − W0‖/‖W0‖ {_fmt(r.rel_update_vs_pretrained_mean)}"
                      for r in kasa) + ".", ""]
    lines += [
        "## Definitions", "",
        "- **numerical rank**: number of singular values of ΔW (float32) above tol = max(out, in) · "
        "eps_float32 · σ_1, eps_float32 = 2⁻²³ ≈ 1.19e-7 (the default tolerance of numpy/torch "
        "`matrix_rank`). **bound**: r for LoRA/KaSA; min(rank(W0)·r, min(out, in)) for "
        "HiRA/KnowHiRA/HiRA-SB (rank(W0 ⊙ BMA) <= rank(W0)·rank(BMA)); min(rank(W0) + r, min(out, in)) "
        "for DoRA (the magnitude rescaling of W0's rows is full rank); rank(W0) for IA3; min(out, in) for "
        "fft. rank(W0) is W0's numerical rank. Means over layers.",
        "- **effective rank**: exp(−Σ p_i log p_i), p_i = σ_i/Σσ_j (Roy & Vetterli 2007); singular values "
        "below the tolerance count as zeros.",
        "- **shares**: fraction of ‖ΔW‖_F² inside the span of the top-k left (U_k) / right (V_k) / both "
        "singular vectors of the PRETRAINED W0 (KaSA: truncated + dropped parts), k = max(r, "
        "round(svd_rank_ratio · min(out, in))) (ratio 0.5 when a run has none). In brackets: the "
        "expectation for an isotropic Gaussian matrix of the same shape, k/out, k/in, k²/(out·in).",
        "- **‖ΔW‖/‖W0‖**: Frobenius norms; W0 is the weight the update is added to (KaSA: W0').",
        f"- **forgetting**: LM loss (mean next-token NLL, nats/token) of the base and the adapted model on "
        f"{n_texts} questions from the `{opts.forgetting_task}` TEST file (instruction template and "
        f"answers stripped; at most {opts.max_len} tokens each) — a stand-in for general pretraining "
        "text, which is not available offline. Δ > 0 means the adapted model fits that text worse.",
        "- **acc avg**: unweighted mean accuracy over the tasks in the run's results.json"
        + (f" (under {opts.results})." if opts.results else "."),
        "",
        "Files: adapter_summary.csv (this table, all columns), layers.csv (per layer), gates.csv "
        "(KnowHiRA per rank index), effective_rank.png, spectra.png (ΔW spectra of one layer every run "
        "has), gates.png (KnowHiRA runs only), forgetting_vs_accuracy.png.",
    ]
    if opts.max_layers:
        lines += ["", f"Only {opts.max_layers} layers per run were analysed (evenly spaced in model order)."]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def labels_for(methods: list[str]) -> list[str]:
    """The method name, numbered (#1, #2, ...) where several runs share a method."""
    counts = {m: methods.count(m) for m in methods}
    seen, labels = {}, []
    for m in methods:
        seen[m] = seen.get(m, 0) + 1
        labels.append(m if counts[m] == 1 else f"{m}#{seen[m]}")
    return labels


def representative_layer(results: list[AdapterRun]) -> dict[str, str]:
    """The middle layer (in model order) of the layers every run has; else each run's own middle one."""
    common = [n for n in results[0].spectra if all(n in r.spectra for r in results)]
    if common:
        return {r.label: common[len(common) // 2] for r in results}
    return {r.label: list(r.spectra)[len(r.spectra) // 2] for r in results if r.spectra}


def write_outputs(results: list[AdapterRun], out_dir: Path, opts, n_texts: int,
                  notes: list[str]) -> list[AdapterSummary]:
    import numpy as np

    from analysis import figures
    from analysis.adapter_stats import FLOAT32_EPS

    summary = [summary_row(r) for r in results]
    write_csv(out_dir / "adapter_summary.csv", summary, SUMMARY_FIELDS)
    write_csv(out_dir / "layers.csv", [row for r in results for row in r.layers], LAYER_FIRST)
    gate_rows = [row for r in results for row in r.gates]
    write_csv(out_dir / "gates.csv", gate_rows, ("label", "run", "layer", "i"))
    (out_dir / "adapter_summary.md").write_text(markdown(summary, opts, n_texts, notes))

    if opts.no_figures:
        return summary
    labels = [r.label for r in results]
    layer_rows = [row for r in results for row in r.layers]
    if layer_rows:
        figures.effective_rank_figure(layer_rows, labels, out_dir / "effective_rank.png")
        rep = representative_layer(results)
        shown = [r for r in results if r.label in rep]
        figures.spectra_figure({r.label: r.spectra[rep[r.label]] for r in shown}, rep,
                               {r.label: r.shapes[rep[r.label]] for r in shown},
                               out_dir / "spectra.png", FLOAT32_EPS)
    gates = {}
    for r in results:
        if not any("gate" in g for g in r.gates):
            continue
        names = list(dict.fromkeys(g["layer"] for g in r.gates))
        mats = {key: np.array([[g[key] for g in r.gates if g["layer"] == n] for n in names])
                for key in ("gate", "sigma_norm")}
        gates[r.label] = {"layers": names, **mats}
    if gates:
        figures.gate_figure(gates, out_dir / "gates.png")
    figures.forgetting_figure(summary, out_dir / "forgetting_vs_accuracy.png")
    return summary


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    out_dir = Path(opts.out)
    try:
        import torch

        from analysis.deltas import analysable
        from analysis.forgetting import forgetting_texts

        device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        run_dirs = [Path(r) for r in opts.runs]
        if out_dir.exists() and not out_dir.is_dir():
            raise BadInput(f"--out {out_dir} is a file, not a folder")
        if opts.results and not Path(opts.results).is_dir():
            raise BadInput(f"--results {opts.results}: no such folder")
        methods = [read_run(r, opts.results).method for r in run_dirs]  # fails early on a bad folder
        texts = (forgetting_texts(opts.data_dir, opts.forgetting_task, opts.forgetting_texts)
                 if opts.forgetting_texts > 0 else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        results, notes = [], []
        for run_dir, label in zip(run_dirs, labels_for(methods)):
            print(f"[{label}] {run_dir}", flush=True)
            res = analyze_run(run_dir, label, opts, texts, device)
            note = analysable(res.method).analysis_note
            if note:
                notes.append(f"{label}: {note}")
            results.append(res)
        summary = write_outputs(results, out_dir, opts, len(texts or []), notes)
    except BadInput as e:  # bad input: one line, exit 2 (anything else is a bug: traceback)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in summary:
        print(f"{r.label:>12s}: layers {r.n_layers}, eff. rank {_fmt(r.effective_rank_mean)}, "
              f"num. rank {_fmt(r.numerical_rank_mean)}/{_fmt(r.rank_bound_mean)}, "
              f"share left {_fmt(r.share_left_mean)} (random {_fmt(r.share_left_random)}), "
              f"‖ΔW‖/‖W0‖ {_fmt(r.rel_update_mean)}, Δloss {_fmt(r.forgetting_dloss)}")
    print(f"wrote {out_dir}/adapter_summary.md, adapter_summary.csv, layers.csv and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())

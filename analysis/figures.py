"""The PNG figures of analyze_adapter.py (matplotlib, Agg backend)."""
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from analysis.adapter_runs import AdapterSummary  # noqa: E402
from analysis.tables import finite  # noqa: E402

BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def split_name(name: str) -> tuple[int, str]:
    """'model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj'); no block index -> (-1, name)."""
    m = BLOCK.match(name)
    return (int(m.group(2)), m.group(3)) if m else (-1, name)


def short_name(name: str) -> str:
    block, kind = split_name(name)
    return f"{block}.{kind}" if block >= 0 else name


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _readable_log_axis(ax) -> None:
    """Log y axis labelled 1, 2, 3, 5, 10, 20, ... instead of 2×10^1."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def effective_rank_figure(layer_rows: list[dict], labels: list[str], path) -> None:
    """One panel per module kind: effective rank of ΔW against block index, one line per run."""
    kinds = []
    for row in layer_rows:
        kind = split_name(row["layer"])[1]
        if kind not in kinds:
            kinds.append(kind)
    ncols = min(3, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 1.0), squeeze=False,
                             layout="constrained")
    colors = dict(zip(labels, _colors(len(labels))))
    for ax, kind in zip(axes.flat, kinds):
        drawn = False
        for label in labels:
            pts = sorted((split_name(r["layer"])[0], r["effective_rank"]) for r in layer_rows
                         if r["label"] == label and split_name(r["layer"])[1] == kind
                         and r["effective_rank"] > 0)  # ΔW = 0 (effective rank 0) has no log point
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, lw=1.5,
                        color=colors[label], label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "ΔW = 0 in every analysed layer", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        _readable_log_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(kind, fontsize=11)
        ax.set_xlabel("block")
        ax.set_ylabel("effective rank of ΔW")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(n, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=min(5, len(handles)), fontsize=9, frameon=False)
    fig.suptitle("Effective rank exp(H(σ/Σσ)) of ΔW per layer (log scale)", fontsize=12)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spectra_figure(spectra: dict[str, np.ndarray], layer_of: dict[str, str], shape_of: dict,
                   path, eps: float) -> None:
    """Singular values of ΔW (absolute, and relative to σ_1) for one representative layer per run."""
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(12, 5.0), layout="constrained")
    colors = dict(zip(spectra, _colors(len(spectra))))
    floor = None
    for label, s in spectra.items():
        s = np.asarray(s, dtype=float)
        if s.size == 0 or s[0] <= 0:
            continue
        idx = np.arange(1, s.size + 1)
        keep = s > s[0] * 1e-12
        ax_abs.plot(idx[keep], s[keep], lw=1.6, color=colors[label], label=label)
        ax_rel.plot(idx[keep], s[keep] / s[0], lw=1.6, color=colors[label], label=label)
        floor = max(shape_of[label]) * eps if floor is None else max(floor, max(shape_of[label]) * eps)
    if floor is not None:
        ax_rel.axhline(floor, color="grey", ls="--", lw=1)
        ax_rel.text(0.99, floor * 1.6, "numerical-rank tolerance max(out,in)·eps", color="grey",
                    fontsize=8, ha="right", transform=ax_rel.get_yaxis_transform())
    layers = sorted(set(layer_of.values()))
    where = layers[0] if len(layers) == 1 else "middle layer of each run"
    ax_abs.set_title(f"σ_i(ΔW), layer {where}", fontsize=10)
    ax_rel.set_title("σ_i(ΔW) / σ_1(ΔW)", fontsize=10)
    for ax in (ax_abs, ax_rel):
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.grid(True, which="both", alpha=0.3)
    handles, names = ax_abs.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(6, len(names)), fontsize=9,
                   frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gate_figure(gates: dict[str, dict], path) -> None:
    """Per KnowHiRA run: heatmaps (layers x r) of sigmoid(g) (colour range = the run's own range, so
    small learned differences show; see the colour bar) and of σ_norm (0..1)."""
    runs = list(gates)
    n_layers = max(len(g["layers"]) for g in gates.values())
    height = min(14.0, max(3.2, 0.16 * n_layers + 1.6))
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, height * len(runs)), squeeze=False)
    for row, label in enumerate(runs):
        g = gates[label]
        names = [short_name(n) for n in g["layers"]]
        step = max(1, math.ceil(len(names) / 40))
        for col, (key, title) in enumerate((("gate", "sigmoid(g)"), ("sigma_norm", "σ_norm"))):
            ax = axes[row, col]
            data = np.asarray(g[key], dtype=float)
            lo, hi = 0.0, 1.0
            if key == "gate" and data.size and data.max() - data.min() > 1e-6:
                lo, hi = float(data.min()), float(data.max())
            elif key == "gate" and data.size:  # constant gates: centre them on their value
                lo, hi = max(0.0, float(data.min()) - 0.05), min(1.0, float(data.max()) + 0.05)
            im = ax.imshow(data, aspect="auto", vmin=lo, vmax=hi, cmap="viridis",
                           interpolation="nearest")
            scale = "colour range 0..1" if (lo, hi) == (0.0, 1.0) else f"colour range {lo:.4g}..{hi:.4g}"
            ax.set_title(f"{label}: {title} ({scale})", fontsize=10)
            ax.set_xlabel("rank index i (of r)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_yticks(range(0, len(names), step))
            ax.set_yticklabels(names[::step], fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def forgetting_figure(summary_rows: list[AdapterSummary], path) -> None:
    """Forgetting (Δ LM loss, adapted − base) against the mean task accuracy, one point per run."""
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    pts = [(r.label, r.forgetting_dloss, r.acc_avg) for r in summary_rows
           if finite(r.forgetting_dloss) and finite(r.acc_avg)]
    colors = _colors(len(pts))
    for (label, x, y), c in zip(pts, colors):
        ax.scatter([x], [100 * y], s=50, color=c, zorder=3)
        ax.annotate(label, (x, 100 * y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    if not pts:
        ax.text(0.5, 0.5, "no run has both a forgetting measurement\nand task accuracies "
                          "(results.json)", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        xs = [p[1] for p in pts]
        pad = max(1e-3, 0.15 * (max(xs) - min(xs)))
        ax.set_xlim(min(min(xs), 0.0) - pad, max(max(xs), 0.0) + 3 * pad)
    ax.set_xlabel("forgetting: LM loss adapted − base (nats/token)")
    ax.set_ylabel("mean task accuracy (%)")
    ax.set_title("Forgetting vs task accuracy", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


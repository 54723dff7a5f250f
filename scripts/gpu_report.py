"""The tables of scripts/gpu_check.sh: reads its folder, writes precision.json, dist.json and README.md.

    python scripts/gpu_report.py docs/gpu/<device>_<date>

precision.json: the task loss of every step of runs/fp32, runs/bf16 and runs/bf16_compiled (log.jsonl), the
largest relative difference of bf16 to fp32 and of compiled to eager bf16, and each run's median step time
(the median gap of log.jsonl "time" over the second half of the steps: the compiled run compiles in
its first ones), against TOLERANCE (bf16 keeps 8 bits of mantissa: about 4e-3 per rounding, compounded over
30 layers and the steps). dist.json: each torchrun run's exit code (ddp.rc, fsdp.rc) and its largest relative
loss difference to the single process (runs/single) at world size 1. Exit status 1 when a part failed.
"""
import json
import sys
from pathlib import Path

TOLERANCE = 5e-2


def losses(run: Path) -> list[float]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [r["loss_task"] for r in map(json.loads, path.read_text().splitlines()) if "loss_task" in r]


def median_step_s(run: Path) -> float | None:
    """The median seconds per step over the second half of the run's logged steps (compilation, warm-up and
    the allocator's growth happen in the first half)."""
    path = run / "log.jsonl"
    if not path.is_file():
        return None
    times = [r["time"] for r in map(json.loads, path.read_text().splitlines()) if "loss_task" in r]
    gaps = [b - a for a, b in zip(times, times[1:])][len(times) // 2 - 1:] if len(times) > 2 else []
    return sorted(gaps)[len(gaps) // 2] if gaps else None


def max_rel(a: list[float], b: list[float]) -> float | None:
    if not a or len(a) != len(b):
        return None
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def table(head: list[str], rows: list[list]) -> str:
    fmt = [lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)] * len(head)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(f(v) for f, v in zip(fmt, r)) + " |" for r in rows])


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    env = json.loads((out / "env.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    runs = out / "runs"
    fp32, bf16, compiled = losses(runs / "fp32"), losses(runs / "bf16"), losses(runs / "bf16_compiled")
    precision = {"fp32": fp32, "bf16": bf16, "bf16_compiled": compiled, "max_rel_diff": max_rel(bf16, fp32),
                 "compiled_max_rel_diff": max_rel(compiled, bf16), "tolerance": TOLERANCE,
                 "median_step_s": {name: median_step_s(runs / name) for name in ("fp32", "bf16", "bf16_compiled")}}
    precision["ok"] = all(precision[k] is not None and precision[k] <= TOLERANCE
                          for k in ("max_rel_diff", "compiled_max_rel_diff"))
    single = losses(runs / "single")
    dist = {}
    for kind in ("ddp", "fsdp"):
        rc_file = out / f"{kind}.rc"
        rc = int(rc_file.read_text()) if rc_file.is_file() else None
        dist[kind] = {"rc": rc, "losses": losses(runs / kind),
                      "max_rel_diff_to_single": max_rel(losses(runs / kind), single)}
        dist[kind]["ok"] = rc == 0 and dist[kind]["max_rel_diff_to_single"] is not None
    (out / "precision.json").write_text(json.dumps(precision, indent=1))
    (out / "dist.json").write_text(json.dumps(dist, indent=1))

    parts = [f"# GPU check: {env['device']} ({env.get('memory_gib') or 0:.0f} GiB), torch {env['torch']}, "
             f"CUDA {env['cuda']}\n", "Command: `bash scripts/gpu_check.sh` (files beside this one).\n"]
    step = bench.get("step", {})
    for kind, res in step.items():
        memory = bench.get("memory", {}).get(kind, {}).get("per_method", {})
        rows = [[m, res["median_s"][m] * 1e3, res["tokens_per_s"][m], res.get("share_of_peak", {}).get(m, "—"),
                 memory.get(m, {}).get("peak_mib", "—")] for m in res["median_s"]]
        parts.append(f"## Training step: {kind}, {res['dtype']}, batch {res['batch']}\n\n"
                     + table(["method", "ms/step", "tokens/s", "share of peak (MFU)", "peak MiB"], rows) + "\n")
    if "layer" in bench:
        parts.append("## One layer, forward + backward\n\n" + table(
            ["layer", "median ms"], [[k, v * 1e3] for k, v in bench["layer"]["median_s"].items()]) + "\n")
    parts.append(f"## bf16 against fp32, compiled against eager\n\n{len(bf16)} steps of knowhira; largest relative "
                 f"difference of the task loss (tolerance {TOLERANCE}): bf16 to fp32 {precision['max_rel_diff']}, "
                 f"bf16 with --torch_compile to bf16 eager {precision['compiled_max_rel_diff']}: "
                 f"{'ok' if precision['ok'] else 'FAILED'}\n\n" + table(
                     ["run", "median s/step (second half)"],
                     [[k, v if v is not None else "—"] for k, v in precision["median_step_s"].items()]) + "\n")
    parts.append("## torchrun, world size 1\n\n" + table(
        ["path", "exit code", "max relative loss difference to one process", "ok"],
        [[k, v["rc"], v["max_rel_diff_to_single"], v["ok"]] for k, v in dist.items()]) + "\n")
    if bench.get("checks"):
        parts.append("## The benchmark's target checks\n\n" + table(
            ["check", "value", "target", "result"],
            [[c["check"], c["value"], f"{c['op']} {c['limit']}", c["result"]] for c in bench["checks"]]) + "\n")
    (out / "README.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 0 if precision["ok"] and all(v["ok"] for v in dist.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

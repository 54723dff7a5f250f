"""The issue's performance targets, in one table, and the PASS/MISS checks against them.

A check never fails the benchmark: it records value, target and PASS or MISS in the JSON's "checks".
"""
from dataclasses import dataclass

from scripts.bench.common import ratio


@dataclass(frozen=True)
class Target:
    name: str  # the check's name; {fields} are filled per model kind / method / mode
    op: str  # "<=" or ">="
    limit: float
    description: str


TARGETS = {
    "layer_vs_fft": Target("Layer (a): fused KnowHiRA / fft", "<=", 1.15,
                           "one layer fwd+bwd, median time ratio"),
    "layer_vs_peft_hira": Target("Layer (a): fused KnowHiRA / peft HiRA", "<=", 0.65,
                                 "one layer fwd+bwd, median time ratio"),
    "step_vs_lora": Target("Step (b) SmolLM2: knowhira / lora", "<=", 1.30,
                           "one optimizer step of the recipe (Trainer.train_step), median ratio"),
    "step_vs_peft_hira": Target("Step (b) SmolLM2: knowhira / peft-hira", "<=", 0.90,
                                "recipe step vs peft HiRA's HF mean-loss step (no clipping, no "
                                "scheduler), median ratio"),
    "compile_gain": Target("Step (b) SmolLM2: knowhira eager / --torch_compile", ">=", 1.2,
                           "steady state: median over the timed steps of eager / compiled of the same step "
                           "(compile time apart), bench --torch_compile"),
    "peer_knowhira": Target("Peers (f): knowhira / HF Trainer + peft HiRA tokens/s", ">=", 1.5,
                            "median over the same batches of their step time / ours (bootstrap 95% interval)"),
    "peer_lora": Target("Peers (f): lora / HF Trainer + peft LoRA tokens/s", ">=", 1.1,
                        "median over the same batches of their step time / ours (bootstrap 95% interval)"),
    "cloze_vs_lm_eval": Target("Scoring (h): cloze / lm-eval HFLM examples/s", ">=", 1.5,
                               "same ARC-Easy questions, model and batch size; median over rounds"),
    "memory_vs_lora": Target("Memory (c) {kind}: knowhira peak / lora peak", "<=", 1.10,
                             "peak memory above the built model during training steps"),
    "eval_batching": Target("Eval (e) {method} {mode}: batch {b1} / batch {b0} examples/s", ">=", 5.0,
                            "evaluation throughput gain from batching"),
}


def check(key: str, value: float, detail: str, **names) -> dict:
    """One check against TARGETS[key]; `names` fill the {placeholders} of its name."""
    t = TARGETS[key]
    ok = value <= t.limit if t.op == "<=" else value >= t.limit
    return {"check": t.name.format(**names), "value": value, "op": t.op, "limit": t.limit,
            "result": "PASS" if ok else "MISS", "detail": detail}


def target_checks(results: dict) -> list[dict]:
    """Every check whose measurement is in `results` (the sections that ran)."""
    checks = []
    if "layer" in results:
        m = results["layer"]["median_s"]
        checks.append(check("layer_vs_fft", ratio(m["fused-knowhira"], m["fft"]),
                            f"{m['fused-knowhira'] * 1e3:.3g} ms vs {m['fft'] * 1e3:.3g} ms"))
        checks.append(check("layer_vs_peft_hira", ratio(m["fused-knowhira"], m["peft-hira"]),
                            f"{m['fused-knowhira'] * 1e3:.3g} ms vs {m['peft-hira'] * 1e3:.3g} ms"))
    step = results.get("step", {}).get("smollm2")
    if step:
        m = step["median_s"]
        for key, ref in (("step_vs_lora", "lora"), ("step_vs_peft_hira", "peft-hira")):
            if "knowhira" in m and ref in m:
                checks.append(check(key, ratio(m["knowhira"], m[ref]),
                                    f"{m['knowhira'] * 1e3:.4g} ms vs {m[ref] * 1e3:.4g} ms"))
        compiled = step.get("compile", {}).get("per_method", {}).get("knowhira")
        if compiled:
            lo, hi = compiled["eager_over_compiled_ci95"]
            checks.append(check("compile_gain", compiled["eager_over_compiled"],
                                f"95% interval [{lo:.3f}, {hi:.3f}]; {compiled['eager_steady_s'] * 1e3:.4g} ms vs "
                                f"{compiled['steady_s'] * 1e3:.4g} ms; "
                                f"compile {compiled['compile_s']:.0f} s"))
    peers = results.get("peers", {})
    pairs = peers.get("training", {}).get("pairs", {})
    for key, pair in (("peer_knowhira", "knowhira / hf-peft-hira"), ("peer_lora", "lora / hf-peft-lora")):
        if pair in pairs:
            p = pairs[pair]
            checks.append(check(key, p["median"], f"95% interval [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}], "
                                                  f"{p['n']} steps"))
    cloze = peers.get("cloze_vs_lm_eval")
    if cloze:
        p = cloze["ratios"]["ours / lm-eval HFLM"]
        checks.append(check("cloze_vs_lm_eval", p["median"], f"95% interval [{p['ci95'][0]:.3f}, "
                                                             f"{p['ci95'][1]:.3f}], {p['n']} rounds"))
    for kind, mem in results.get("memory", {}).items():
        rows = mem["per_method"]
        k, lo = rows.get("knowhira", {}), rows.get("lora", {})
        if "peak_increase_mib" in k and "peak_increase_mib" in lo:
            checks.append(check("memory_vs_lora", ratio(k["peak_increase_mib"], lo["peak_increase_mib"]),
                                f"{k['peak_increase_mib']:.4g} MiB vs {lo['peak_increase_mib']:.4g} MiB",
                                kind=kind))
    ev = results.get("eval")
    if ev and len(ev["batches"]) >= 2:
        b0, b1 = ev["batches"][0], ev["batches"][-1]
        for method, out in ev["per_method"].items():
            for mode, vals in out.items():
                checks.append(check("eval_batching", vals[f"ratio_batch{b1}_over_batch{b0}"],
                                    f"{vals[f'batch{b1}_examples_per_s']:.3g} vs "
                                    f"{vals[f'batch{b0}_examples_per_s']:.3g} examples/s",
                                    method=method, mode=mode, b0=b0, b1=b1))
    return checks

#!/usr/bin/env python
"""Side-by-side performance benchmark of the fused Hadamard adapters against their baselines.

One run on one machine measures, interleaved where possible so that a busy machine slows every
configuration alike, and prints medians and ratios (also written to --out as JSON):

  a  one layer forward+backward: fused KnowHiRA / fused HiRA (models.hadamard.HadamardLinear),
     peft HiRA, peft LoRA, full fine-tuning (weight grad) and a frozen layer (input grad only);
     plus a decode-shaped (1 token, inference_mode) forward of the fused layer vs a plain Linear
  b  one training step (forward + backward + AdamW step) of the real SmolLM2-135M (and, with
     --gptneo_shaped, a random GPT-Neo-1.3B-shaped model with fewer layers) per method
  c  peak memory of each (b) configuration, each in a fresh spawned subprocess
  d  start-up cost of KnowHiRA's singular values (models.spectrum.sigma_norms)
  e  evaluation throughput (examples/s) at batch 1 and 16, generation and log-likelihood scoring,
     on real BoolQ test prompts

Usage (small sizes for a busy CPU; the defaults are the issue's sizes):
  .venv/bin/python scripts/bench.py --sections a,d --layer_dim 256 --tokens 256 --repeats 3
  .venv/bin/python scripts/bench.py                       # everything, default sizes
  .venv/bin/python scripts/bench.py --sections b,c --gptneo_shaped --device cuda --dtype bf16

This is a measurement tool, not a test: it prints PASS/MISS against the issue's targets but never
fails on them. Timings from a machine shared with other work are indicative only.
"""
import argparse
import copy
import ctypes
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

LAYER_CONFIGS = ("fused-knowhira", "fused-hira", "peft-hira", "peft-lora", "fft", "frozen")
STEP_METHODS = ("knowhira", "hira", "peft-hira", "lora", "fft")
SMOLLM2_TARGETS = "q_proj,k_proj,v_proj,up_proj,down_proj"
DEFAULT_SMOLLM2 = ROOT / "weights" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BOOLQ = Path("/work/shared/data/commonsense/boolq/test.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LORA_ALPHA = 16.0  # train_knowhira.py's default; irrelevant for speed

FLOP_FORMULA = ("FLOPs per step = 6 * N_matmul * tokens, N_matmul = weights of every nn.Linear "
                "(lm_head included, embeddings lookups and attention scores excluded): the usual "
                "full-fine-tuning count (2 forward + 4 backward per weight per token), used for "
                "every method so the figures compare wall time on a common scale")
MEMORY_METHOD_CPU = (
    "CPU: each configuration runs in a fresh spawned subprocess (MALLOC_MMAP_THRESHOLD_=65536, so "
    "freed tensors leave the RSS at once) that loads the model, builds the method, calls "
    "malloc_trim, resets the kernel's peak-RSS mark (echo 5 > /proc/self/clear_refs) "
    "and records RSS; peak = VmHWM after the training steps minus that RSS (activations, "
    "gradients, AdamW states, temporaries). Not used: ru_maxrss differences between children "
    "(RUSAGE_CHILDREN or a load-only baseline child), because the model-loading transient is "
    "higher than a PEFT step's peak and hid every difference (lora, hira and knowhira all read "
    "1145 MiB on SmolLM2).")
MEMORY_METHOD_CUDA = (
    "CUDA: each configuration runs in a fresh spawned subprocess; after the build, "
    "torch.cuda.reset_peak_memory_stats(); peak = max_memory_allocated - memory_allocated at reset "
    "(activations, gradients, AdamW states, temporaries; caching-allocator slack excluded).")


# ---- small helpers ---------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def time_interleaved(runs: dict, repeats: int, warmup: int, device: torch.device,
                     setups: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each `runs[name]()`, round-robin over the names (warmups untimed).

    Interleaving spreads the load of a shared machine over every configuration, so the RATIOS stay
    meaningful even when absolute times drift. `setups[name]()` (untimed) runs before each call.
    """
    setups = setups or {}
    for _ in range(warmup):
        for name, run in runs.items():
            setups.get(name, lambda: None)()
            run()
    sync(device)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            setups.get(name, lambda: None)()
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    print(f"\n== {title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def check(checks: list, name: str, value: float, op: str, limit: float, detail: str) -> None:
    ok = value <= limit if op == "<=" else value >= limit
    checks.append({"check": name, "value": value, "op": op, "limit": limit,
                   "result": "PASS" if ok else "MISS", "detail": detail})


# ---- (a) one layer -----------------------------------------------------------------------------
def layer_modules(d_in: int, d_out: int, r: int, device, dtype) -> dict[str, nn.Module]:
    """The six single-layer configurations, all around copies of one random nn.Linear (no bias)."""
    from peft import HiraConfig, LoraConfig, get_peft_model

    from models.hadamard import HadamardLinear

    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False).to(device, dtype)
    mods = {}
    for variant in ("knowhira", "hira"):
        layer = HadamardLinear(copy.deepcopy(base), variant, r).to(device)
        with torch.no_grad():  # non-zero B (a trained state) and a spectrum-like σ_norm
            layer.hira_B.normal_(0, 0.01)
            if variant == "knowhira":
                layer.sigma_norm.copy_(torch.linspace(1.0, 0.1, r))
        mods[f"fused-{variant}"] = layer
    mods["peft-hira"] = get_peft_model(nn.Sequential(copy.deepcopy(base)),
                                       HiraConfig(r=r, target_modules=["0"]))
    mods["peft-lora"] = get_peft_model(nn.Sequential(copy.deepcopy(base)),
                                       LoraConfig(r=r, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                  target_modules=["0"]))
    for name in ("peft-hira", "peft-lora"):
        with torch.no_grad():
            for pname, p in mods[name].named_parameters():
                if p.requires_grad and ("hira_B" in pname or "lora_B" in pname):
                    p.normal_(0, 0.01)
    fft = copy.deepcopy(base)
    fft.weight.requires_grad_(True)
    mods["fft"] = fft
    frozen = copy.deepcopy(base)
    frozen.weight.requires_grad_(False)
    mods["frozen"] = frozen
    return mods


def bench_layer(args, device) -> dict:
    dtype = DTYPES[args.layer_dtype]
    d_in = args.layer_in or args.layer_dim
    d_out = args.layer_out or args.layer_dim
    batch, seq = args.layer_batch, args.tokens // args.layer_batch
    mods = layer_modules(d_in, d_out, args.r, device, dtype)
    torch.manual_seed(1)
    x = torch.randn(batch, seq, d_in, device=device, dtype=dtype, requires_grad=True)
    probe = torch.randn(batch, seq, d_out, device=device, dtype=dtype)  # loss = (y * probe).sum()

    def make_run(mod):
        def run():
            (mod(x) * probe).sum().backward()
        return run

    def make_setup(mod):
        def setup():
            x.grad = None
            mod.zero_grad(set_to_none=True)
        return setup

    runs = {n: make_run(m) for n, m in mods.items()}
    setups = {n: make_setup(m) for n, m in mods.items()}
    times = time_interleaved(runs, args.repeats, args.warmup, device, setups)
    med = {n: median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    trainable = {n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in mods.items()}

    # decode-shaped inference: 1 token through the layer, no autograd (what generation does per
    # new token when the adapter is NOT merged: the fused path rebuilds W0 ⊙ (1 + s·BM A) per call)
    x1 = torch.randn(1, 1, d_in, device=device, dtype=dtype)
    infer_mods = {"fused-knowhira": mods["fused-knowhira"], "frozen (= merged)": mods["frozen"]}

    def make_infer(mod):
        def run():
            with torch.inference_mode():
                mod(x1)
        return run

    infer_times = time_interleaved({n: make_infer(m) for n, m in infer_mods.items()},
                                   args.infer_repeats, 3, device)
    infer_med = {n: median(t) for n, t in infer_times.items()}

    result = {
        "shape": {"in": d_in, "out": d_out, "batch": batch, "seq": seq, "tokens": batch * seq,
                  "r": args.r, "dtype": args.layer_dtype, "bias": False},
        "protocol": (f"loss = (y * fixed random tensor).sum(); x requires grad; median of "
                     f"{args.repeats} after {args.warmup} warmups, configurations interleaved"),
        "median_s": med,
        "min_s": best,
        "all_s": times,
        "trainable_params": trainable,
        "ratios": {f"{n} / fft": ratio(med[n], med["fft"]) for n in mods}
        | {f"{n} / peft-hira": ratio(med[n], med["peft-hira"]) for n in mods}
        | {"fused-knowhira / fused-hira": ratio(med["fused-knowhira"], med["fused-hira"]),
           "fused-knowhira / peft-lora": ratio(med["fused-knowhira"], med["peft-lora"])},
        "decode_forward": {"median_s": infer_med, "repeats": args.infer_repeats,
                           "fused / frozen": ratio(infer_med["fused-knowhira"],
                                                   infer_med["frozen (= merged)"])},
    }
    print_table(f"(a) one layer fwd+bwd: {d_out}x{d_in}, {batch}x{seq} tokens, r={args.r}, "
                f"{args.layer_dtype} (median of {args.repeats})",
                ["config", "median ms", "/ fft", "/ peft-hira", "/ frozen", "min ms",
                 "min / fft", "trainable"],
                [[n, med[n] * 1e3, ratio(med[n], med["fft"]), ratio(med[n], med["peft-hira"]),
                  ratio(med[n], med["frozen"]), best[n] * 1e3, ratio(best[n], best["fft"]),
                  trainable[n]] for n in mods])
    print_table("(a') decode-shaped forward, 1 token, inference_mode (unmerged adapter vs plain)",
                ["config", "us"], [[n, t * 1e6] for n, t in infer_med.items()])
    print(f"  fused / frozen = {result['decode_forward']['fused / frozen']:.3g}x")
    return result


# ---- models for (b), (c), (e) ----------------------------------------------------------------
def gptneo_config(hidden: int, layers: int, heads: int):
    """GPT-Neo-1.3B's layer shapes (hidden 2048, 16 heads, ffn 4·hidden, vocab 50257), fewer layers."""
    from transformers import GPTNeoConfig

    n_pairs, odd = divmod(layers, 2)
    attention_types = [[["global", "local"], n_pairs]] if n_pairs else []
    if odd:
        attention_types.append([["global"], 1])
    return GPTNeoConfig(vocab_size=50257, hidden_size=hidden, num_layers=layers, num_heads=heads,
                        attention_types=attention_types, max_position_embeddings=2048,
                        window_size=256, use_cache=False)


def random_gptneo(args, device, dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(gptneo_config(args.neo_hidden, args.neo_layers,
                                                           args.neo_heads))
    return model.to(device, dtype)


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in matmuls: every nn.Linear (lm_head included, even when tied)."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m) not in seen:
            seen.add(id(m))
            n += m.weight.numel()
    return n


def build_method(model: nn.Module, method: str, targets: list[str], r: int):
    """(model, trainable params, regulariser or None) for one of STEP_METHODS; modifies `model`."""
    from models.adapter import AdapterConfig
    from models.methods import build, peft_library_config

    if method in ("knowhira", "hira"):
        model, _, reg = build(model, method, AdapterConfig(peft_type=method, r=r,
                                                           target_modules=targets))
    elif method == "peft-hira":
        from peft import HiraConfig, get_peft_model

        model, reg = get_peft_model(model, HiraConfig(r=r, target_modules=targets,
                                                      task_type="CAUSAL_LM")), None
    elif method == "lora":
        cfg = peft_library_config("lora", r, LORA_ALPHA, 0.0, targets, model.config.model_type)
        model, _, reg = build(model, "lora", peft_cfg=cfg)
    elif method == "fft":
        model, _, reg = build(model, "fft")
    else:
        raise ValueError(f"unknown step method {method!r}")
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad], reg


def make_step(model, params, reg, batch: dict):
    """One training step as training/loop.py takes it: task loss (+ λ·L_ortho for hira/knowhira),
    backward, AdamW step, zero_grad(set_to_none=True). Gradient clipping is not included."""
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss = model(**batch, use_cache=False).loss
        if reg is not None:
            fn, weight = reg
            loss = loss + weight * fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def token_batch(vocab: int, batch: int, seq: int, device) -> dict:
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def step_dtype(args, device) -> str:
    if args.dtype != "auto":
        return args.dtype
    return "bf16" if device.type == "cuda" else "fp32"


def targets_for(model_kind: str, args) -> list[str]:
    from models.get_models import default_targets

    if model_kind == "smollm2":
        return args.targets.split(",")
    return default_targets("gpt_neo")


# ---- (b) one training step ----------------------------------------------------------------------
def bench_step_model(args, device, base_model, model_kind: str) -> dict:
    dtype_name = step_dtype(args, device)
    targets = targets_for(model_kind, args)
    methods = args.methods.split(",")
    batch = token_batch(base_model.config.vocab_size, args.step_batch, args.step_seq, device)
    tokens = args.step_batch * args.step_seq
    n_matmul = matmul_params(base_model)
    steps, trainable, build_s = {}, {}, {}
    for m in methods:
        t0 = time.perf_counter()
        model, params, reg = build_method(copy.deepcopy(base_model), m, targets, args.r)
        sync(device)
        build_s[m] = time.perf_counter() - t0
        trainable[m] = sum(p.numel() for p in params)
        steps[m] = make_step(model, params, reg, batch)
    times = time_interleaved(steps, args.step_repeats, args.step_warmup, device)
    del steps
    gc.collect()
    med = {m: median(t) for m, t in times.items()}
    flops = 6 * n_matmul * tokens
    res = {
        "model": model_kind, "dtype": dtype_name, "targets": targets, "r": args.r,
        "batch": args.step_batch, "seq": args.step_seq, "tokens": tokens,
        "protocol": (f"forward + backward + AdamW step (+ λ·L_ortho for hira/knowhira), median of "
                     f"{args.step_repeats} after {args.step_warmup} warmup, methods interleaved"),
        "median_s": med, "all_s": times, "tokens_per_s": {m: tokens / med[m] for m in methods},
        "trainable_params": trainable, "build_s": build_s, "matmul_params": n_matmul,
        "flops_per_step_fft_equiv": flops, "flop_formula": FLOP_FORMULA,
    }
    ref = {k: med[k] for k in ("lora", "peft-hira", "fft") if k in med}
    res["ratios"] = {f"{m} / {k}": ratio(med[m], v) for m in methods for k, v in ref.items()}
    rows = [[m, med[m] * 1e3, tokens / med[m]] + [ratio(med[m], v) for v in ref.values()]
            + [trainable[m], build_s[m]] for m in methods]
    header = (["method", "ms/step", "tokens/s"] + [f"/ {k}" for k in ref]
              + ["trainable", "build s"])
    if device.type == "cuda":
        res["tflops"] = {m: flops / med[m] / 1e12 for m in methods}
        res["peak_tflops_assumed"] = args.peak_tflops
        res["share_of_peak"] = {m: res["tflops"][m] / args.peak_tflops for m in methods}
        header += ["TFLOP/s", "share of peak"]
        for row, m in zip(rows, methods):
            row += [res["tflops"][m], res["share_of_peak"][m]]
    print_table(f"(b) training step, {model_kind}, {dtype_name}, {args.step_batch}x{args.step_seq} "
                f"tokens, r={args.r} (median of {args.step_repeats})", header, rows)
    if device.type == "cuda":
        print(f"  assumed GPU peak: {args.peak_tflops} TFLOP/s (bf16 dense; issue: about 790 on "
              f"an H100/H200). {FLOP_FORMULA}")
    return res


# ---- (c) peak memory, one spawned child per configuration ---------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_child(spec: dict, queue) -> None:
    """Runs in a fresh spawned process: load, build, reset the peak mark, train, report."""
    try:
        device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
        if spec["model_kind"] == "smollm2":  # the parent's dequantised weights, see save_for_children
            model = load_for_child(spec["config"], spec["model_dir"])
            model.config.use_cache = False
            model = model.to(device, dtype)
        else:
            model = random_gptneo(argparse.Namespace(**spec["neo"]), device, dtype)
        out = {"method": spec["method"], "loaded_mib": _rss_kb() / 1024}
        model, params, reg = build_method(model, spec["method"], spec["targets"], spec["r"])
        step = make_step(model, params, reg, token_batch(model.config.vocab_size,
                                                         spec["batch"], spec["seq"], device))
        gc.collect()
        _malloc_trim()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        elif not _reset_hwm():
            raise RuntimeError("cannot reset the peak-RSS mark (/proc/self/clear_refs)")
        else:
            base = _rss_kb() * 1024
        out["after_build_mib"] = base / 2**20
        for _ in range(spec["steps"]):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _hwm_kb() * 1024
        out["peak_mib"] = peak / 2**20
        out["peak_increase_mib"] = (peak - base) / 2**20
        queue.put(out)
    except BaseException as e:  # report, never hang the parent
        queue.put({"method": spec["method"], "error": f"{type(e).__name__}: {e}"})


# A FIXED mmap threshold makes glibc serve every tensor above 64 KiB with its own mmap and unmap it
# on free, so the child's RSS follows its live tensors. Without it glibc's dynamic threshold moves
# freed multi-MiB blocks into the heap, where fragmentation kept ~400 MiB of dead transients in RSS
# and made every method look alike (measured: lora/hira/knowhira/peft-hira 102/458/462/458 MiB
# with the default, 76/131/126/240 MiB with the fixed threshold, GPT-Neo-shaped 1024 x 4 layers).
CHILD_ENV_CPU = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_child(spec: dict, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(spec, queue))
    env = CHILD_ENV_CPU if spec["device"] == "cpu" else {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned child; glibc reads it at start-up
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        out = queue.get(timeout=timeout)
    except Exception:
        out = {"method": spec["method"], "error": f"no result within {timeout:.0f} s"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if proc.exitcode not in (0, None) and "error" not in out:
        out["error"] = f"child exit code {proc.exitcode}"
    return out


def save_for_children(model: nn.Module, folder: str) -> None:
    """The loaded (dequantised) weights as one safetensors file: children rebuild the model from
    its config and load them in about a second instead of dequantising the GGUF again (a GGUF-loaded
    model refuses save_pretrained)."""
    from safetensors.torch import save_model

    save_model(model, str(Path(folder) / "model.safetensors"))


def load_for_child(config, folder: str) -> nn.Module:
    """Rebuild the model saved by save_for_children: skeleton without random init, tie the shared
    weights FIRST (save_model stores a tied tensor once), then load; every parameter must be set."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    state = load_file(str(Path(folder) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded_ptrs = {t.data_ptr() for n, t in model.state_dict().items() if n in state}
    untouched = [n for n in missing if model.state_dict()[n].data_ptr() not in loaded_ptrs]
    if unexpected or untouched:
        raise RuntimeError(f"reloading the model failed: missing {untouched[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model


def bench_memory_model(args, device, model_kind: str, model_dir: str | None,
                       config=None) -> dict:
    dtype_name = step_dtype(args, device)
    spec0 = {"device": str(device), "dtype": dtype_name, "model_kind": model_kind,
             "model_dir": model_dir, "config": config,
             "targets": targets_for(model_kind, args), "r": args.r,
             "batch": args.step_batch, "seq": args.step_seq, "steps": args.mem_steps,
             "neo": {"neo_hidden": args.neo_hidden, "neo_layers": args.neo_layers,
                     "neo_heads": args.neo_heads}}
    rows = {}
    for method in args.methods.split(","):
        rows[method] = run_child(spec0 | {"method": method}, args.child_timeout)
        if "error" in rows[method]:
            print(f"  (c) {model_kind} {method}: {rows[method]['error']}")
    methods = [m for m in args.methods.split(",") if "peak_increase_mib" in rows[m]]
    lora = rows.get("lora", {}).get("peak_increase_mib")
    print_table(f"(c) peak memory of a training step, {model_kind}, {dtype_name}, "
                f"{args.step_batch}x{args.step_seq} tokens, {args.mem_steps} steps (MiB)",
                ["method", "peak increase", "/ lora", "after build", "peak (absolute)"],
                [[m, rows[m]["peak_increase_mib"], ratio(rows[m]["peak_increase_mib"], lora)
                  if lora else float("nan"), rows[m]["after_build_mib"], rows[m]["peak_mib"]]
                 for m in methods])
    return {"model": model_kind, "dtype": dtype_name, "steps": args.mem_steps,
            "method": MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU,
            "per_method": rows}


# ---- (d) singular values -----------------------------------------------------------------------
def timed_sigma_norms(weights: dict, r: int, ratio_: float, device) -> float:
    from models.spectrum import sigma_norms

    sync(device)
    t0 = time.perf_counter()
    sigma_norms(weights, r, ratio_)
    sync(device)
    return time.perf_counter() - t0


def bench_svd(args, device, smollm2) -> dict:
    from models.adapter import find_targets

    res = {"r": args.r, "svd_rank_ratio": 0.5, "function": "models.spectrum.sigma_norms"}
    # warm LAPACK / cuSOLVER up on a small matrix (not timed)
    timed_sigma_norms({"w": torch.randn(64, 128, device=device)}, 8, 0.5, device)
    if smollm2 is not None:
        model = smollm2
        names = find_targets(model, args.targets.split(","))
        mods = dict(model.named_modules())
        weights = {n: mods[n].weight.detach().to(device) for n in names}
        times = [timed_sigma_norms(weights, args.r, 0.5, device) for _ in range(args.svd_repeats)]
        n_layers = model.config.num_hidden_layers
        res["smollm2"] = {"weights": len(weights), "layers": n_layers,
                          "shapes": sorted({tuple(w.shape) for w in weights.values()}),
                          "median_s": median(times), "all_s": times,
                          "per_layer_s": median(times) / n_layers}
        if device.type == "cpu" and torch.get_num_threads() > 1:
            # LAPACK's SVD is barrier-heavy: on a loaded machine the default thread count measured
            # 2-18x slower than one thread (1536x576: 0.18 s vs 0.37-3.2 s), so show both
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                t1 = [timed_sigma_norms(weights, args.r, 0.5, device)
                      for _ in range(args.svd_repeats)]
            finally:
                torch.set_num_threads(threads)
            res["smollm2"]["one_thread_median_s"] = median(t1)
    h, f = args.neo_hidden, args.neo_ffn or 4 * args.neo_hidden
    shapes = [(h, h)] * 3 + [(f, h), (h, f)]  # q, k, v (out x in), c_fc, c_proj
    torch.manual_seed(0)
    weights = {f"layer{i}.{j}": torch.randn(*s, device=device) * 0.02
               for i in range(args.svd_layers) for j, s in enumerate(shapes)}
    times = [timed_sigma_norms(weights, args.r, 0.5, device) for _ in range(args.svd_repeats)]
    per_layer = median(times) / args.svd_layers
    res["gptneo_shaped"] = {
        "layers_measured": args.svd_layers, "shapes_per_layer": shapes, "weights": "random normal",
        "median_s": median(times), "all_s": times, "per_layer_s": per_layer,
        f"EXTRAPOLATED_{args.neo_total_layers}_layers_s": per_layer * args.neo_total_layers}
    rows = []
    if "smollm2" in res:
        s = res["smollm2"]
        rows.append([f"SmolLM2 targets ({s['weights']} weights, {s['layers']} layers)",
                     s["median_s"], s["per_layer_s"], "measured"])
        if "one_thread_median_s" in s:
            rows.append(["SmolLM2 targets, torch.set_num_threads(1)", s["one_thread_median_s"],
                         s["one_thread_median_s"] / s["layers"], "measured"])
    rows.append([f"GPT-Neo-shaped, {args.svd_layers} layers measured", median(times), per_layer,
                 "measured"])
    rows.append([f"GPT-Neo-1.3B, {args.neo_total_layers} layers", per_layer * args.neo_total_layers,
                 per_layer, "EXTRAPOLATED (per-layer x layers)"])
    print_table(f"(d) sigma_norms start-up (svdvals), r={args.r}, median of {args.svd_repeats}, "
                f"device {device.type}", ["weights", "total s", "per layer s", "kind"], rows)
    return res


# ---- (e) evaluation throughput ---------------------------------------------------------------
def bench_eval(args, device, smollm2, tokenizer) -> dict:
    from data.prompt import generate_prompt
    from eval.generate import generate_answers
    from eval.loglik import score_candidates
    from models.adapter import AdapterConfig, add_adapters

    records = json.loads(Path(args.boolq).read_text())[:args.eval_n]
    prompts = [generate_prompt(r["instruction"], r.get("input")) for r in records]
    candidates = ["true", "false"]
    batches = [int(b) for b in args.eval_batches.split(",")]
    res = {"n_examples": len(prompts), "gen_tokens": args.gen_tokens, "batches": batches,
           "data": str(args.boolq), "per_method": {},
           "note": ("base = the pretrained model (also the cost of a MERGED adapter); knowhira = "
                    "unmerged KnowHiRA adapters on the targets (what the eval CLI runs today). "
                    "examples/s = prompts / wall time; loglik scores 2 candidates per prompt, "
                    "batch counts (prompt, candidate) pairs; generation stops at EOS")}
    for method in args.eval_methods.split(","):
        model = copy.deepcopy(smollm2)
        if method == "knowhira":
            add_adapters(model, AdapterConfig(peft_type="knowhira", r=args.r,
                                              target_modules=args.targets.split(",")))
            with torch.no_grad():  # a trained-looking state: non-zero B
                for m in model.modules():
                    if hasattr(m, "hira_B"):
                        m.hira_B.normal_(0, 0.01)
        elif method != "base":
            raise ValueError(f"unknown eval method {method!r} (base, knowhira)")
        model.eval()
        runs = {
            "generate": lambda ps, b: generate_answers(model, tokenizer, ps, batch_size=b,
                                                       max_new_tokens=args.gen_tokens,
                                                       show_progress=False),
            "loglik": lambda ps, b: score_candidates(model, tokenizer, ps, candidates,
                                                     batch_size=b, show_progress=False),
        }
        out = {}
        for mode, fn in runs.items():
            fn(prompts[:2], 2)  # warm-up
            out[mode] = {}
            for b in batches:
                sync(device)
                t0 = time.perf_counter()
                fn(prompts, b)
                sync(device)
                out[mode][f"batch{b}_examples_per_s"] = len(prompts) / (time.perf_counter() - t0)
            if len(batches) >= 2:
                out[mode][f"ratio_batch{batches[-1]}_over_batch{batches[0]}"] = ratio(
                    out[mode][f"batch{batches[-1]}_examples_per_s"],
                    out[mode][f"batch{batches[0]}_examples_per_s"])
        res["per_method"][method] = out
        del model
        gc.collect()
    rows = []
    for method, out in res["per_method"].items():
        for mode, vals in out.items():
            rows.append([method, mode] + [vals[f"batch{b}_examples_per_s"] for b in batches]
                        + ([vals[f"ratio_batch{batches[-1]}_over_batch{batches[0]}"]]
                           if len(batches) >= 2 else []))
    print_table(f"(e) evaluation throughput, SmolLM2, {len(prompts)} BoolQ test prompts, "
                f"{args.gen_tokens} new tokens (examples/s)",
                ["method", "mode"] + [f"batch {b}" for b in batches]
                + ([f"batch{batches[-1]}/batch{batches[0]}"] if len(batches) >= 2 else []), rows)
    return res


# ---- checks and main ---------------------------------------------------------------------------
def target_checks(results: dict) -> list[dict]:
    checks = []
    if "layer" in results:
        m = results["layer"]["median_s"]
        check(checks, "Layer (a): fused KnowHiRA / fft", ratio(m["fused-knowhira"], m["fft"]),
              "<=", 1.15, f"{m['fused-knowhira'] * 1e3:.3g} ms vs {m['fft'] * 1e3:.3g} ms")
        check(checks, "Layer (a): fused KnowHiRA / peft HiRA",
              ratio(m["fused-knowhira"], m["peft-hira"]), "<=", 0.65,
              f"{m['fused-knowhira'] * 1e3:.3g} ms vs {m['peft-hira'] * 1e3:.3g} ms")
    step = results.get("step", {}).get("smollm2")
    if step:
        m = step["median_s"]
        for ref, limit in (("lora", 1.30), ("peft-hira", 0.90)):
            if "knowhira" in m and ref in m:
                check(checks, f"Step (b) SmolLM2: knowhira / {ref}", ratio(m["knowhira"], m[ref]),
                      "<=", limit, f"{m['knowhira'] * 1e3:.4g} ms vs {m[ref] * 1e3:.4g} ms")
    for kind, mem in results.get("memory", {}).items():
        rows = mem["per_method"]
        k, lo = rows.get("knowhira", {}), rows.get("lora", {})
        if "peak_increase_mib" in k and "peak_increase_mib" in lo:
            check(checks, f"Memory (c) {kind}: knowhira peak / lora peak",
                  ratio(k["peak_increase_mib"], lo["peak_increase_mib"]), "<=", 1.10,
                  f"{k['peak_increase_mib']:.4g} MiB vs {lo['peak_increase_mib']:.4g} MiB")
    ev = results.get("eval")
    if ev and len(ev["batches"]) >= 2:
        b0, b1 = ev["batches"][0], ev["batches"][-1]
        for method, out in ev["per_method"].items():
            for mode, vals in out.items():
                check(checks, f"Eval (e) {method} {mode}: batch {b1} / batch {b0} examples/s",
                      vals[f"ratio_batch{b1}_over_batch{b0}"], ">=", 5.0,
                      f"{vals[f'batch{b1}_examples_per_s']:.3g} vs "
                      f"{vals[f'batch{b0}_examples_per_s']:.3g} examples/s")
    return checks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sections", default="a,b,c,d,e", help="comma list of a,b,c,d,e")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="bench_results.json", help="JSON file for all results")
    p.add_argument("--smollm2", default=str(DEFAULT_SMOLLM2),
                   help="SmolLM2 GGUF file (or HF folder); 'none' skips what needs it")
    p.add_argument("--r", type=int, default=32)
    g = p.add_argument_group("(a) layer")
    g.add_argument("--layer_dim", type=int, default=1024, help="in = out features")
    g.add_argument("--layer_in", type=int, default=None, help="override in features")
    g.add_argument("--layer_out", type=int, default=None, help="override out features")
    g.add_argument("--tokens", type=int, default=2048, help="tokens = layer_batch x seq")
    g.add_argument("--layer_batch", type=int, default=4)
    g.add_argument("--layer_dtype", default="fp32", choices=list(DTYPES))
    g.add_argument("--repeats", type=int, default=10)
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--infer_repeats", type=int, default=50,
                   help="repeats of the decode-shaped (1 token) forward")
    g = p.add_argument_group("(b)/(c) training step")
    g.add_argument("--methods", default=",".join(STEP_METHODS))
    g.add_argument("--targets", default=SMOLLM2_TARGETS, help="SmolLM2 targets")
    g.add_argument("--dtype", default="auto", choices=["auto"] + list(DTYPES),
                   help="model dtype for (b)/(c); auto = fp32 on cpu, bf16 on cuda")
    g.add_argument("--step_batch", type=int, default=4)
    g.add_argument("--step_seq", type=int, default=192)
    g.add_argument("--step_repeats", type=int, default=5)
    g.add_argument("--step_warmup", type=int, default=1)
    g.add_argument("--mem_steps", type=int, default=2, help="(c) steps per child (1st allocates AdamW)")
    g.add_argument("--child_timeout", type=float, default=1800)
    g.add_argument("--gptneo_shaped", action="store_true",
                   help="also run (b)/(c) on a random GPT-Neo-1.3B-shaped model with --neo_layers")
    g.add_argument("--peak_tflops", type=float, default=790.0,
                   help="GPU bf16 dense peak for the utilisation share (issue: ~790 on H100/H200)")
    g = p.add_argument_group("GPT-Neo-1.3B shapes ((b), (c), (d))")
    g.add_argument("--neo_hidden", type=int, default=2048)
    g.add_argument("--neo_ffn", type=int, default=None, help="(d) only; default 4 x hidden")
    g.add_argument("--neo_heads", type=int, default=16)
    g.add_argument("--neo_layers", type=int, default=2, help="layers of the (b)/(c) model")
    g.add_argument("--neo_total_layers", type=int, default=24, help="(d) extrapolation target")
    g = p.add_argument_group("(d) singular values")
    g.add_argument("--svd_layers", type=int, default=4, help="GPT-Neo-shaped layers measured")
    g.add_argument("--svd_repeats", type=int, default=1)
    g = p.add_argument_group("(e) evaluation")
    g.add_argument("--boolq", default=str(DEFAULT_BOOLQ), help="BoolQ test.json")
    g.add_argument("--eval_n", type=int, default=32)
    g.add_argument("--gen_tokens", type=int, default=32, help="max_new_tokens (protocol default)")
    g.add_argument("--eval_batches", default="1,16")
    g.add_argument("--eval_methods", default="base,knowhira")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(args.sections) - set("abcde")
    if bad:
        p.error(f"unknown sections {sorted(bad)}; choose from a,b,c,d,e")
    if args.tokens % args.layer_batch:
        p.error("--tokens must be a multiple of --layer_batch")
    return args


def load_smollm2(args, device):
    """(model fp32 on device, tokenizer) or (None, None) when --smollm2 none / missing."""
    if args.smollm2.lower() == "none":
        return None, None
    if not Path(args.smollm2).exists():
        print(f"warning: {args.smollm2} does not exist; skipping what needs SmolLM2")
        return None, None
    from models.get_models import load_base_model

    t0 = time.perf_counter()
    model, tokenizer = load_base_model(args.smollm2)
    model.config.use_cache = False
    print(f"loaded SmolLM2 from {args.smollm2} in {time.perf_counter() - t0:.1f} s")
    return model.to(device), tokenizer


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    meta = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "host": platform.node(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
            "loadavg_start": os.getloadavg()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(f"bench: device {device}{' (' + meta.get('gpu', '') + ')' if 'gpu' in meta else ''}, "
          f"torch {torch.__version__}, {meta['threads']} threads, load average "
          f"{meta['loadavg_start'][0]:.2f}")
    results: dict = {"meta": meta}

    def save():
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    if "a" in args.sections:
        results["layer"] = bench_layer(args, device)
        save()

    need_smol = any(s in args.sections for s in "bcde")
    smol, tok = load_smollm2(args, device) if need_smol else (None, None)
    sdtype = DTYPES[step_dtype(args, device)]

    if "b" in args.sections:
        results["step"] = {}
        if smol is not None:
            base = smol if sdtype == torch.float32 else copy.deepcopy(smol).to(sdtype)
            results["step"]["smollm2"] = bench_step_model(args, device, base, "smollm2")
            del base
            gc.collect()
            save()
        if args.gptneo_shaped:
            neo = random_gptneo(args, device, sdtype)
            results["step"]["gptneo_shaped"] = bench_step_model(args, device, neo, "gptneo_shaped")
            results["step"]["gptneo_shaped"]["layers"] = args.neo_layers
            del neo
            gc.collect()
            save()

    if "c" in args.sections:
        results["memory"] = {}
        if smol is not None:
            with tempfile.TemporaryDirectory(prefix="bench_smollm2_") as tmp:
                save_for_children(smol, tmp)
                results["memory"]["smollm2"] = bench_memory_model(args, device, "smollm2", tmp,
                                                                  smol.config)
            save()
        if args.gptneo_shaped:
            results["memory"]["gptneo_shaped"] = bench_memory_model(args, device, "gptneo_shaped",
                                                                    None)
            save()
        print("  method: " + (MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU))

    if "d" in args.sections:
        results["svd"] = bench_svd(args, device, smol)
        save()

    if "e" in args.sections:
        if smol is None or not Path(args.boolq).is_file():
            print("(e) skipped: needs SmolLM2 and the BoolQ test file")
        else:
            results["eval"] = bench_eval(args, device, smol, tok)
            save()

    results["checks"] = target_checks(results)
    results["meta"]["loadavg_end"] = os.getloadavg()
    print("\n== target checks (issue)")
    for c in results["checks"]:
        print(f"{c['result']}  {c['check']} = {c['value']:.3g} (target {c['op']} {c['limit']}): "
              f"{c['detail']}")
    if not results["checks"]:
        print("(none of the checked sections ran)")
    print(f"\nload average at start {meta['loadavg_start'][0]:.2f}, at end "
          f"{results['meta']['loadavg_end'][0]:.2f} on {meta['cpus']} cpus"
          + (": the machine was busy, timings are indicative" if device.type == "cpu" and
             max(meta['loadavg_start'][0], results['meta']['loadavg_end'][0]) > 0.5 * (meta['cpus'] or 1)
             else ""))
    save()
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()

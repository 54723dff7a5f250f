"""(a) One layer, forward + backward: the fused Hadamard layers (KnowHiRA, HiRA) against peft's HiRA
and LoRA, full fine-tuning (weight gradient) and a frozen layer (input gradient only); plus a
decode-shaped forward (1 token, inference_mode) of the unmerged fused layer against a plain Linear."""
import copy

import torch
from torch import nn

from scripts.bench.common import DTYPES, LORA_ALPHA, median, print_table, ratio, time_interleaved

LAYER_CONFIGS = ("fused-knowhira", "fused-hira", "peft-hira", "peft-lora", "fft", "frozen")


def layer_modules(d_in: int, d_out: int, r: int, device, dtype) -> dict[str, nn.Module]:
    """The six single-layer configurations, all around copies of one random nn.Linear (no bias)."""
    from peft import HiraConfig, LoraConfig, get_peft_model

    from models.hadamard import HadamardLinear
    from models.methods.hira import HiRAConfig
    from models.methods.knowhira import KnowHiRAConfig, KnowHiRALinear

    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False).to(device, dtype)
    mods = {"fused-knowhira": KnowHiRALinear(copy.deepcopy(base), KnowHiRAConfig(r_ab=r)).to(device),
            "fused-hira": HadamardLinear(copy.deepcopy(base), HiRAConfig(r_ab=r)).to(device)}
    with torch.no_grad():  # non-zero B (a trained state) and a spectrum-like σ_norm
        for layer in (mods["fused-knowhira"], mods["fused-hira"]):
            layer.hira_B.normal_(0, 0.01)
        mods["fused-knowhira"].sigma_norm.copy_(torch.linspace(1.0, 0.1, r))
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

"""What every benchmark section shares: timing (sync, interleaved medians, ratios, paired ratios with a
bootstrap interval), the table printer, the FLOP count, device and dtype choice, and loading SmolLM2."""
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMOLLM2_TARGETS = "q_proj,k_proj,v_proj,up_proj,down_proj"
# env KNOWHIRA_SMOLLM2_GGUF (as the tests use it), else what scripts/fetch_smollm2.sh fetches
DEFAULT_SMOLLM2 = os.environ.get("KNOWHIRA_SMOLLM2_GGUF") or str(
    ROOT / "weights" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
LORA_ALPHA = 16.0  # train_knowhira.py's default; irrelevant for speed

FLOP_FORMULA = ("FLOPs per step = 6 * N_matmul * tokens, N_matmul = weights of every nn.Linear "
                "(lm_head included, embeddings lookups and attention scores excluded), tokens = the "
                "step's non-padding tokens: the usual full-fine-tuning count (2 forward + 4 backward "
                "per weight per token), used for every method so the figures compare wall time on a "
                "common scale")


# ---- timing ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def paired_ratio(num: list[float], den: list[float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """The median of the paired ratios num[i] / den[i] (e.g. two pipelines' times of the same step) with a
    percentile bootstrap 95% interval: the pairs resampled with replacement n_boot times (numpy, seeded),
    the median of each resample, its 2.5th and 97.5th percentiles."""
    import numpy as np

    r = np.asarray(num, dtype=float) / np.asarray(den, dtype=float)
    if r.size == 0:
        raise ValueError("paired_ratio needs at least one pair")
    resampled = r[np.random.default_rng(seed).integers(0, r.size, size=(n_boot, r.size))]
    lo, hi = np.percentile(np.median(resampled, axis=1), [2.5, 97.5])
    return {"median": float(np.median(r)), "ci95": [float(lo), float(hi)], "n": int(r.size),
            "per_pair": r.tolist(), "bootstrap": f"{n_boot} resamples of the pairs, numpy seed {seed}, percentile"}


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


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in matmuls: every nn.Linear (lm_head included, even when tied)."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m) not in seen:
            seen.add(id(m))
            n += m.weight.numel()
    return n


# ---- device and dtype --------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """--device auto|cpu|cuda -> torch.device (auto: cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_dtype(args, device) -> str:
    """The (b)/(c) model dtype name: --dtype, or auto = fp32 on cpu, bf16 on cuda."""
    if args.dtype != "auto":
        return args.dtype
    return "bf16" if device.type == "cuda" else "fp32"


def load_bit(dtype_name: str) -> int:
    """The recipe's --load_bit for a dtype name: 32 = fp32; 16 = bf16 where supported, else fp16
    (models.get_models.load_dtype), so fp16 on a bf16-capable device is not expressible."""
    return 32 if dtype_name == "fp32" else 16


# ---- SmolLM2 -----------------------------------------------------------------------------------
def load_smollm2(path: str, device):
    """(model fp32 on device, tokenizer) or (None, None) when `path` is 'none' or missing."""
    if path.lower() == "none":
        return None, None
    if not Path(path).exists():
        print(f"warning: {path} does not exist (scripts/fetch_smollm2.sh fetches it; or set "
              f"KNOWHIRA_SMOLLM2_GGUF / --smollm2); skipping what needs SmolLM2")
        return None, None
    from models.get_models import load_base_model

    t0 = time.perf_counter()
    model, tokenizer = load_base_model(path)
    model.config.use_cache = False
    print(f"loaded SmolLM2 from {path} in {time.perf_counter() - t0:.1f} s")
    return model.to(device), tokenizer

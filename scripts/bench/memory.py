"""(c) Peak memory of each (b) configuration, each in a fresh spawned subprocess.

The child builds exactly what (b) times (scripts/bench/step.py: the recipe for registered methods,
peft's HiRA the old way), from the same model folder and records, then measures the training steps
alone. On CPU the child runs with a fixed glibc mmap threshold so its RSS follows its live tensors.
"""
import ctypes
import gc
import multiprocessing as mp
import os

import torch

from scripts.bench.common import print_table, ratio, step_dtype

MEMORY_METHOD_CPU = (
    "CPU: each configuration runs in a fresh spawned subprocess (MALLOC_MMAP_THRESHOLD_=65536, so "
    "freed tensors leave the RSS at once) that sets up the configuration as (b) does (recipe setup: "
    "load, tokenize, build the method; then the trainer), calls malloc_trim, resets the kernel's "
    "peak-RSS mark (echo 5 > /proc/self/clear_refs) and records RSS; peak = VmHWM after the training "
    "steps minus that RSS (activations, gradients, AdamW states, temporaries). Not used: ru_maxrss "
    "differences between children (RUSAGE_CHILDREN or a load-only baseline child), because the "
    "model-loading transient is higher than a PEFT step's peak and hid every difference (lora, hira "
    "and knowhira all read 1145 MiB on SmolLM2).")
MEMORY_METHOD_CUDA = (
    "CUDA: each configuration runs in a fresh spawned subprocess; after the set-up (as in (b)), "
    "torch.cuda.reset_peak_memory_stats(); peak = max_memory_allocated - memory_allocated at reset "
    "(activations, gradients, AdamW states, temporaries; caching-allocator slack excluded).")

# A FIXED mmap threshold makes glibc serve every tensor above 64 KiB with its own mmap and unmap it
# on free, so the child's RSS follows its live tensors. Without it glibc's dynamic threshold moves
# freed multi-MiB blocks into the heap, where fragmentation kept ~400 MiB of dead transients in RSS
# and made every method look alike (measured: lora/hira/knowhira/peft-hira 102/458/462/458 MiB
# with the default, 76/131/126/240 MiB with the fixed threshold, GPT-Neo-shaped 1024 x 4 layers).
CHILD_ENV_CPU = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _rss_kb() -> int:
    return _status_kb("VmRSS")


def _hwm_kb() -> int:
    return _status_kb("VmHWM")


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
    """Runs in a fresh spawned process: set up as (b), reset the peak mark, train, report."""
    try:
        from scripts.bench.step import make_step

        step = make_step(spec["method"], spec["values"])
        device = step.device
        out = {"method": spec["method"], "loaded_mib": _rss_kb() / 1024}  # after load + build
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
        out["mean_tokens_per_step"] = sum(step.tokens) / len(step.tokens)
        queue.put(out)
    except BaseException as e:  # report, never hang the parent
        queue.put({"method": spec["method"], "error": f"{type(e).__name__}: {e}"})


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


def bench_memory_model(args, model_kind: str, model: dict, data: dict, out_dir) -> dict:
    from scripts.bench.step import recipe_device, recipe_values

    device = recipe_device()
    dtype_name = step_dtype(args, device)
    rows = {}
    for name in args.methods.split(","):
        spec = {"device": device.type, "method": name, "steps": args.mem_steps,
                "values": recipe_values(args, model_kind, model["dir"], name, data, out_dir)}
        rows[name] = run_child(spec, args.child_timeout)
        if "error" in rows[name]:
            print(f"  (c) {model_kind} {name}: {rows[name]['error']}")
    methods = [m for m in args.methods.split(",") if "peak_increase_mib" in rows[m]]
    lora = rows.get("lora", {}).get("peak_increase_mib")
    print_table(f"(c) peak memory of a training step, {model_kind}, {dtype_name}, batch "
                f"{args.step_batch}, cutoff {args.cutoff_len}, {args.mem_steps} steps (MiB)",
                ["method", "peak increase", "/ lora", "after build", "peak (absolute)"],
                [[m, rows[m]["peak_increase_mib"], ratio(rows[m]["peak_increase_mib"], lora)
                  if lora else float("nan"), rows[m]["after_build_mib"], rows[m]["peak_mib"]]
                 for m in methods])
    return {"model": model_kind, "dtype": dtype_name, "steps": args.mem_steps,
            "method": MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU,
            "per_method": rows}

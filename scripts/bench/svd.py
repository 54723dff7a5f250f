"""(d) Start-up cost of KnowHiRA's singular values (models.spectrum.sigma_norms): measured on
SmolLM2's target weights and on random GPT-Neo-1.3B-shaped layers, extrapolated to 24 layers."""
import time

import torch

from scripts.bench.common import median, print_table, sync


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

"""(e) Evaluation throughput (examples/s) of SmolLM2 at several batch sizes, generation and
log-likelihood scoring, on the first --eval_n BoolQ test prompts of --data_dir."""
import copy
import gc
import time

import torch

from scripts.bench.common import print_table, ratio, sync


def bench_eval(args, device, smollm2, tokenizer) -> dict:
    from data.commonsense import load_task_split, task_file
    from data.prompt import generate_prompt
    from eval.generate import generate_answers
    from eval.loglik import score_candidates
    from models.methods import build, get_method

    records = load_task_split(args.data_dir, "boolq", "test")[:args.eval_n]
    prompts = [generate_prompt(r["instruction"], r.get("input")) for r in records]
    candidates = ["true", "false"]
    batches = [int(b) for b in args.eval_batches.split(",")]
    res = {"n_examples": len(prompts), "gen_tokens": args.gen_tokens, "batches": batches,
           "data": str(task_file(args.data_dir, "boolq", "test")), "per_method": {},
           "note": ("base = the pretrained model (also the cost of a MERGED adapter); knowhira = "
                    "unmerged KnowHiRA adapters on the targets (what the eval CLI runs today). "
                    "examples/s = prompts / wall time; loglik scores 2 candidates per prompt, "
                    "batch counts (prompt, candidate) pairs; generation stops at EOS")}
    def with_knowhira(model):
        model = build(model, get_method("knowhira").config_cls.from_values(
            {"r_ab": args.r, "target_modules": args.targets}))
        with torch.no_grad():  # a trained-looking state: non-zero B
            for m in model.modules():
                if hasattr(m, "hira_B"):
                    m.hira_B.normal_(0, 0.01)
        return model

    setups = {"base": lambda model: model, "knowhira": with_knowhira}
    for name in args.eval_methods.split(","):
        if name not in setups:
            raise ValueError(f"unknown eval configuration {name!r} ({', '.join(setups)})")
        model = setups[name](copy.deepcopy(smollm2)).eval()

        def generate(ps, b, model=model):
            return generate_answers(model, tokenizer, ps, batch_size=b, max_new_tokens=args.gen_tokens,
                                    beam_size=1, show_progress=False)

        def loglik(ps, b, model=model):
            return score_candidates(model, tokenizer, ps, candidates, batch_size=b, show_progress=False)

        runs = {"generate": generate, "loglik": loglik}
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
        res["per_method"][name] = out
        del model
        gc.collect()
    rows = []
    for name, out in res["per_method"].items():
        for mode, vals in out.items():
            rows.append([name, mode] + [vals[f"batch{b}_examples_per_s"] for b in batches]
                        + ([vals[f"ratio_batch{batches[-1]}_over_batch{batches[0]}"]]
                           if len(batches) >= 2 else []))
    print_table(f"(e) evaluation throughput, SmolLM2, {len(prompts)} BoolQ test prompts, "
                f"{args.gen_tokens} new tokens (examples/s)",
                ["method", "mode"] + [f"batch {b}" for b in batches]
                + ([f"batch{batches[-1]}/batch{batches[0]}"] if len(batches) >= 2 else []), rows)
    return res
